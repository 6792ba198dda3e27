"""Admin for API keys: create (secret shown once), edit without rotating, rotate, find by
secret; and a user's keys on the user's page."""

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods

from accounts.admin import BudgetAdmin, UserAdmin, budget_fieldset, show_amounts_exactly
from aethergate.lib.admin import GatewayAdmin, SecretSearchAdmin, adopt, count, secret_once_page
from keys import services
from keys.models import APIKey, looks_like_secret

RATE_LIMIT_HELP = (
    "Comma-separated rates, each COUNT/UNIT for requests or COUNTtok/UNIT for tokens "
    "(input + output), with UNIT one of s, m, h, d: e.g. "
    "<code>60/m,1000/d,100000tok/m,2000000tok/d</code>. A request is admitted against a "
    "token rate for its estimated input plus its output cap (its max_tokens, else the "
    "model's “output tokens reserved”), then counted for what it really used. Empty: "
    "unlimited."
)


class APIKeyForm(forms.ModelForm):
    """The key page: budgets entered and shown as exact amounts, as a balance is, and the
    rate limit explained with its token rates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        show_amounts_exactly(self, ("budget", "budget_soft"))
        if "rate_limit" in self.fields:  # not on a read-only page
            self.fields["rate_limit"].help_text = RATE_LIMIT_HELP


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request, model_admin):
        return [("never", "Never expires"), ("future", "Expires later"), ("past", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        return {
            "never": queryset.filter(expires_at__isnull=True),
            "future": queryset.filter(expires_at__gt=now),
            "past": queryset.filter(Q(expires_at__lte=now)),
        }.get(self.value(), queryset)


class StateFilter(admin.SimpleListFilter):
    """Keys that authenticate now (`APIKey.objects.usable()`), or those refused."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("usable", "Usable"), ("refused", "Refused (inactive, expired or owner inactive)")]

    def queryset(self, request, queryset):
        usable = APIKey.objects.usable(now=timezone.now())
        if self.value() == "usable":
            return queryset.filter(pk__in=usable.values("pk"))
        if self.value() == "refused":
            return queryset.exclude(pk__in=usable.values("pk"))
        return queryset


class APIKeyInline(admin.TabularInline):
    """A user's keys, read-only, on the user's page (accounts cannot import keys to add it)."""

    model = APIKey
    fk_name = "owner"
    fields = ("name", "prefix", "is_active", "rate_limit", "expires_at", "last_used_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "API keys (create keys under API keys)"

    def has_add_permission(self, request, obj=None):
        return False


UserAdmin.inlines = [*UserAdmin.inlines, APIKeyInline]


@admin.register(APIKey)
class APIKeyAdmin(BudgetAdmin, SecretSearchAdmin, GatewayAdmin):
    form = APIKeyForm
    actions = [*GatewayAdmin.actions, "rotate_selected"]
    list_display = (
        "name",
        "display_prefix",
        "owner",
        "state",
        "is_active",
        "expires_at",
        "last_used_at",
    )
    list_editable = ("is_active",)
    list_filter = (
        StateFilter,
        "is_active",
        "log_content",
        ("owner", admin.RelatedOnlyFieldListFilter),
        ExpiryFilter,
    )
    list_select_related = ("owner",)
    search_fields = ("name", "prefix", "owner__username", "owner__email")
    search_help_text = (
        "Name, prefix (ag-AbCdEfGh) or owner. To find a key from its whole secret, use "
        "“Find by secret”: a search travels in the page address, where logs keep it."
    )
    looks_like_secret = staticmethod(looks_like_secret)
    refused_kind = "key"
    refused_advice = (
        "Use “Find by secret”, and consider rotating the key if that address was logged."
    )
    autocomplete_fields = ("owner",)
    filter_horizontal = ("allowed_models",)
    readonly_fields = ("prefix", "created_at", "rotated_at", "last_used_at")
    fieldsets = (
        (None, {"fields": ("name", "owner", "prefix", "is_active", "expires_at")}),
        ("Limits", {"fields": (("rate_limit", "max_concurrent"),)}),
        budget_fieldset(
            "What this key may spend in each period. Its owner's budget, if the owner has "
            "one, applies too: a request must fit both, and the owner's prepaid balance."
        ),
        # After the limits and budget, which are short: the models' picker is tall.
        ("Allowed", {"fields": ("allowed_capabilities", "allowed_models")}),
        ("Privacy", {"fields": ("log_content",)}),
        ("History", {"fields": ("created_at", "rotated_at", "last_used_at")}),
    )

    @admin.display(description="prefix", ordering="prefix")
    def display_prefix(self, obj):
        return format_html('<code style="white-space: nowrap">{}…</code>', obj.prefix)

    @admin.display(description="state")
    def state(self, obj):
        # The owner comes with the row (list_select_related): no query per key.
        return obj.state()

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, obj.issued_secret = services.create_key(**form.cleaned_data)
        adopt(obj, key)

    def response_add(self, request, obj, post_url_continue=None):
        # Rendered straight into this response, never put in the session or a
        # message cookie, so the secret is stored nowhere.
        return self._secret_page(request, [(obj, obj.issued_secret)], created=True)

    def get_urls(self):
        rotate = self.admin_site.admin_view(self.rotate_view)
        find = self.admin_site.admin_view(self.find_view)
        return [
            path("find/", find, name="keys_apikey_find"),
            path("<path:object_id>/rotate/", rotate, name="keys_apikey_rotate"),
            *super().get_urls(),
        ]

    @method_decorator(require_http_methods(["GET", "POST"]))
    def find_view(self, request):
        """A form that takes a whole secret in a POST body and opens its key's page.

        The redirect names only the key's id; a secret that matches no key is
        answered on the form page, without echoing it.
        """
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        error = ""
        if request.method == "POST":
            try:
                key = services.find_key_by_secret(request.POST.get("secret", ""))
            except services.KeyNotFound as missing:
                error = str(missing)
            else:
                return HttpResponseRedirect(reverse("admin:keys_apikey_change", args=[key.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Find a key by its secret",
            "error": error,
        }
        return TemplateResponse(request, "admin/keys/apikey/find_by_secret.html", context)

    def rotate_view(self, request, object_id):
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404("No such API key.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        if request.method == "POST":
            return self._rotate(request, [key])
        cancel = reverse("admin:keys_apikey_change", args=[key.pk])
        return self._rotate_confirmation(request, [key], action_form=False, cancel_url=cancel)

    @admin.action(description="Rotate selected API keys…", permissions=["change"])
    def rotate_selected(self, request, queryset):
        keys = list(queryset)
        if request.POST.get("post") == "yes":
            return self._rotate(request, keys)
        cancel = reverse("admin:keys_apikey_changelist")
        return self._rotate_confirmation(request, keys, action_form=True, cancel_url=cancel)

    def _rotate(self, request, keys):
        issued = []
        for key in keys:
            secret = services.rotate_key(key=key)
            self.log_change(request, key, "Rotated the secret")
            issued.append((key, secret))
        return self._secret_page(request, issued, created=False)

    def _rotate_confirmation(self, request, keys, *, action_form, cancel_url):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Rotate API keys?" if len(keys) > 1 else "Rotate API key?",
            "keys": keys,
            "action_form": action_form,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": cancel_url,
        }
        return TemplateResponse(request, "admin/keys/apikey/rotate_confirmation.html", context)

    def _secret_page(self, request, issued, *, created):
        return secret_once_page(
            self,
            request,
            title="API key created" if created else "API key rotated",
            kind="key",
            columns=("Key", "Owner"),
            issued=[(key, key.owner, secret) for key, secret in issued],
            what="this secret" if len(issued) == 1 else "these secrets",
            note="" if created else "The previous secret no longer works.",
        )

    def delete_notes(self, objs):
        logs = sum(key.request_logs.count() for key in objs)
        return [
            f"{count(logs, 'request log is', 'request logs are')} kept: their key link is "
            "cleared, and each row keeps the key prefix and username.",
        ]

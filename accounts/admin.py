"""Admin for users (consumers and staff, their balance and keys), staff API tokens, lockouts."""

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

from accounts import services, throttling
from accounts.models import APIToken, Lockout, User, looks_like_token
from accounts.permissions import PRIVILEGE_FIELDS, token_refusal, user_change_refusal
from aethergate.lib.admin import (
    GatewayAdmin,
    SecretSearchAdmin,
    adopt,
    count,
    secret_once_page,
    swap_fields,
)
from aethergate.lib.money import format_money, plain_amount

BUDGET_AMOUNTS = ("budget", "budget_soft")
# The Budget fieldset of users and keys (keys.admin uses it too), under `description`.
BUDGET_FIELDS = (*BUDGET_AMOUNTS, "budget_period")


def budget_fieldset(description: str) -> tuple[str, dict]:
    return ("Budget", {"fields": BUDGET_FIELDS, "description": description})


def show_amounts_exactly(form, names) -> None:
    """Have `form`'s money inputs `names` show their amount exactly, without the column's
    ten decimals ("10", not "10.0000000000"); those not on the form (a read-only page)
    are left alone."""
    for name in names:
        if name in form.fields:
            form.initial[name] = plain_amount(getattr(form.instance, name))


class BudgetAdmin(admin.ModelAdmin):
    """Shows a budget for people (format_money) on a page its viewer may not change, as
    the balance is shown; subclasses put BUDGET_FIELDS in a fieldset (budget_fieldset)."""

    @admin.display(description="budget (hard limit)", ordering="budget")
    def shown_budget(self, obj):
        return format_money(obj.budget)

    @admin.display(description="budget alert at", ordering="budget_soft")
    def shown_budget_soft(self, obj):
        return format_money(obj.budget_soft)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return swap_fields(
            fieldsets, {"budget": "shown_budget", "budget_soft": "shown_budget_soft"}
        )


class UserCreateForm(AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("username", "email", "organization", "balance")

    def clean_balance(self):
        balance = self.cleaned_data["balance"]
        services.validate_balance(balance)
        return balance

    def create_user(self) -> User:
        """The user this valid form describes, saved by accounts.services.create_user."""
        data = self.cleaned_data
        return services.create_user(
            username=data["username"],
            email=data["email"],
            organization=data["organization"],
            balance=data["balance"],
            password=data["password1"] if data["set_usable_password"] else None,
        )


class UserEditForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        show_amounts_exactly(self, ("balance", *BUDGET_AMOUNTS))
        if "balance" in self.fields:  # not on a read-only page
            field = self.fields["balance"]
            # Submit the balance the page showed, so a save applies the staff's
            # change to the current balance instead of overwriting new charges.
            field.show_hidden_initial = True
            if self.instance.balance is not None:
                field.help_text = f"{field.help_text} Now {format_money(self.instance.balance)}."

    def balance_seen(self):
        field = self.fields["balance"]
        return field.to_python(self.data.get(self.add_initial_prefix("balance")))

    def clean_balance(self):
        balance = self.cleaned_data["balance"]
        services.validate_balance(balance, current=self.balance_seen())
        return balance


@admin.register(User)
class UserAdmin(BudgetAdmin, GatewayAdmin, DjangoUserAdmin):
    """Users, under accounts.permissions: staff who are not superusers see superusers
    read-only, never see the privilege fields editable, and set only their own password.
    """

    form = UserEditForm
    add_form = UserCreateForm
    list_display = (
        "username",
        "email",
        "organization",
        "shown_balance",
        "is_active",
    )
    list_editable = ("is_active",)
    list_filter = ("is_active", "is_staff", "is_superuser", "organization")
    search_fields = ("username", "email", "organization", "first_name", "last_name")
    ordering = ("username",)
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Gateway", {"fields": ("organization", "balance")}),
        budget_fieldset(
            "What all the user's keys may spend together in each period; a key may have a "
            "budget of its own as well, and a request must fit both. The prepaid balance "
            "(above) is another limit, and never starts again."
        ),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Permissions",
            {
                "fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions"),
                "classes": ("collapse",),
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "username",
                    "email",
                    "organization",
                    "balance",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )

    @admin.display(description="balance", ordering="balance")
    def shown_balance(self, user):
        return format_money(user.balance)

    def has_change_permission(self, request, obj=None):
        if obj is not None and user_change_refusal(actor=request.user, target=obj):
            return False  # a superuser's page is read-only to other staff
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and user_change_refusal(actor=request.user, target=obj):
            return False
        return super().has_delete_permission(request, obj)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        left_out = set() if Group.objects.exists() else {"groups"}  # nothing to pick from
        # A read-only page shows the balance for people, not the column's ten decimals.
        shown = {} if self.has_change_permission(request, obj) else {"balance": "shown_balance"}
        return swap_fields(fieldsets, shown, left_out)

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        if request.user.is_superuser:
            return readonly
        return (*readonly, *sorted(PRIVILEGE_FIELDS))

    def user_change_password(self, request, id, form_url=""):
        user = self.get_object(request, unquote(id))
        reason = user and user_change_refusal(actor=request.user, target=user, changed={"password"})
        if reason:
            raise PermissionDenied(reason)
        return super().user_change_password(request, id, form_url)

    def save_model(self, request, obj, form, change):
        # The fields above are hidden from who may not change them; this
        # refuses what a crafted POST or the list's inline edits still send.
        target = User.objects.get(pk=obj.pk) if change else None
        changed = set(form.changed_data) - {"password"}
        reason = user_change_refusal(actor=request.user, target=target, changed=changed)
        if reason:
            raise PermissionDenied(reason)
        if not change:
            adopt(obj, form.create_user())
            return
        if "balance" in form.changed_data:
            services.edit_balance(user=obj, seen=form.balance_seen(), new=obj.balance)
            self.message_user(
                request, f"The balance of {obj.username} is now {format_money(obj.balance)}."
            )
        columns = {f.name for f in obj._meta.concrete_fields} - {"balance", "id"}
        changed_columns = columns.intersection(form.changed_data)
        if changed_columns:
            obj.save(update_fields=[*changed_columns, "updated_at"])
        obj.refresh_from_db(fields=["balance", "updated_at"])

    def get_inlines(self, request, obj):
        # `inlines` is filled by the apps above this one (keys adds a user's keys):
        # accounts, at the bottom of the layers, imports none of them.
        return self.inlines if obj else []

    def delete_notes(self, objs):
        logs = sum(user.request_logs.count() for user in objs)
        return [
            "Their API keys are deleted with them (listed below).",
            f"{count(logs, 'request log is', 'request logs are')} kept: their user link "
            "is cleared, and each row keeps the username and key prefix.",
        ]

    def _set_active(self, request, queryset, *, active):
        if not active and queryset.filter(pk=request.user.pk).exists():
            self.message_user(request, "You cannot deactivate your own account.", messages.ERROR)
            queryset = queryset.exclude(pk=request.user.pk)
        refusals = {u.pk: user_change_refusal(actor=request.user, target=u) for u in queryset}
        refused = [pk for pk, reason in refusals.items() if reason]
        if refused:
            reason = refusals[refused[0]]
            left = count(len(refused), "user was", "users were")
            self.message_user(request, f"{reason} {left} left unchanged.", messages.ERROR)
            queryset = queryset.exclude(pk__in=refused)
        super()._set_active(request, queryset, active=active)


@admin.register(APIToken)
class APITokenAdmin(SecretSearchAdmin):
    """Staff tokens for the management API: issue (shown once), revoke, delete.

    Under accounts.permissions.token_refusal: staff who are not superusers see,
    issue, revoke and delete only their own tokens.
    """

    actions = ["revoke_selected"]
    list_display = (
        "name",
        "display_prefix",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__username")
    looks_like_secret = staticmethod(looks_like_token)
    refused_kind = "API token"
    refused_advice = "Search by its prefix, and consider revoking it if that address was logged."
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    list_per_page = 50

    @admin.display(description="prefix", ordering="prefix")
    def display_prefix(self, obj):
        return format_html('<code style="white-space: nowrap">{}…</code>', obj.prefix)

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        if token_refusal(actor=request.user, owner=None) is None:
            return tokens
        return tokens.filter(user=request.user)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "expires_at")
        return ("user", "name", "prefix", "expires_at", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        # A token stays with the user it was issued to.
        return (*self.readonly_fields, "user") if obj else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            owners = User.objects.filter(is_staff=True, is_active=True)
            if token_refusal(actor=request.user, owner=None) is not None:
                owners = owners.filter(pk=request.user.pk)
            kwargs["queryset"] = owners
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        reason = token_refusal(actor=request.user, owner=obj.user)
        if reason:
            raise PermissionDenied(reason)
        if change:
            super().save_model(request, obj, form, change)
            return
        token, obj.issued_token = services.create_api_token(**form.cleaned_data)
        adopt(obj, token)

    def response_add(self, request, obj, post_url_continue=None):
        return secret_once_page(
            self,
            request,
            title="API token created",
            kind="token",
            columns=("Token", "User"),
            issued=[(obj, obj.user, obj.issued_token)],
            what="this token",
            usage=format_html(
                "Send it as <code>Authorization: Bearer {}…</code> (or <code>Token …</code>) "
                "to <code>/api/v1/</code>.",
                obj.prefix,
            ),
        )

    @admin.action(description="Revoke selected API tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        revoked = 0
        for token in queryset:
            if services.revoke_api_token(token=token):
                self.log_change(request, token, "Revoked")
                revoked += 1
        self.message_user(
            request, f"{count(revoked, 'API token', 'API tokens')} revoked.", messages.SUCCESS
        )


@admin.register(Lockout)
class LockoutAdmin(admin.ModelAdmin):
    """Accounts and addresses locked out after failed logins; staff lift them with the action.

    Read-only otherwise: lockouts are made by failures (accounts.throttling),
    and lifting one goes through the service so that the audit log records it.
    """

    list_display = ("key", "surface", "address", "failures", "locked_at", "until", "active")
    list_filter = ("surface",)
    search_fields = ("key", "address")
    readonly_fields = ("key", "surface", "address", "failures", "locked_at", "until")
    actions = ("lift_selected",)

    @admin.display(boolean=True)
    def active(self, lockout):
        return lockout.until > throttling.clock()

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Lift selected lockouts", permissions=["change"])
    def lift_selected(self, request, queryset):
        lifted = throttling.lift(queryset)
        self.message_user(
            request, f"{count(lifted, 'lockout', 'lockouts')} lifted.", messages.SUCCESS
        )


class GroupAdmin(DjangoGroupAdmin):
    """Django's groups, listed on the index only once one exists.

    AetherGate grants permissions per user; a group made here (its URL still
    works) is listed from then on.
    """

    def has_module_permission(self, request):
        return super().has_module_permission(request) and Group.objects.exists()


admin.site.unregister(Group)
admin.site.register(Group, GroupAdmin)

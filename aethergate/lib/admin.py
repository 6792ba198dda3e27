"""What AetherGate's ModelAdmins share: activate/deactivate, delete notes, secrets kept out."""

from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.contrib.admin.views.main import SEARCH_VAR
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.translation import ngettext

from aethergate.lib.activation import set_active


def count(n: int, singular: str, plural: str) -> str:
    """`count(2, "request log is", "request logs are")` → "2 request logs are"."""
    return f"{n} {ngettext(singular, plural, n)}"


def secret_once_page(
    model_admin, request, *, title, kind, columns, issued, what, note="", usage=""
) -> TemplateResponse:
    """The page that shows newly issued secrets: `issued` is (object, owner, secret) rows.

    Rendered straight into this response, never put in the session or a
    message cookie, so a secret is stored nowhere; every admin view is sent
    with Cache-Control: no-store. The template lists the other arguments.
    """
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "kind": kind,
        "columns": columns,
        "issued": issued,
        "what": what,
        "note": note,
        "usage": usage,
    }
    return TemplateResponse(request, "admin/aethergate/secret_once.html", context)


def swap_fields(fieldsets, shown: dict[str, str], dropped=frozenset()) -> list:
    """`fieldsets` with each field in `shown` replaced by its value (a display method,
    say) and those in `dropped` left out, within a line of fields (a tuple) too; the
    sets' names and options are kept."""

    def swapped(fields):
        return [
            tuple(swapped(f)) if isinstance(f, tuple | list) else shown.get(f, f)
            for f in fields
            if f not in dropped
        ]

    return [
        (name, {**options, "fields": swapped(options["fields"])}) for name, options in fieldsets
    ]


def adopt(obj, saved) -> None:
    """Make the admin's unsaved `obj` the row a service `saved` in its place.

    ModelAdmin.save_model must save the very object it is given: the admin
    then logs it and redirects to its page. A service that creates the row
    itself (validating, issuing a secret) hands back another instance; this
    copies its columns and saved state onto `obj`.
    """
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding, obj._state.db = False, saved._state.db


class TitledDeleteAdmin(admin.ModelAdmin):
    """Titles the delete page with what it deletes ("Delete user alice"), not just "Delete"."""

    def render_delete_form(self, request, context):
        context["title"] = f"Delete {self.opts.verbose_name} {context['object']}"
        return super().render_delete_form(request, context)


class SecretSearchAdmin(TitledDeleteAdmin):
    """Refuses to search for a whole secret: a search travels in the page address.

    Access and proxy logs keep addresses, so a pasted secret is never looked
    up, shown back or linked: the browser is sent on to the same list without
    it, with a warning. Subclasses set `looks_like_secret` (their app's one
    test, as a staticmethod), what the secret is called (`refused_kind`) and
    what to do instead (`refused_advice`).
    """

    looks_like_secret: Callable[[str], bool]
    refused_kind: str
    refused_advice: str

    def changelist_view(self, request, extra_context=None):
        if self.looks_like_secret(request.GET.get(SEARCH_VAR, "").strip()):
            # The secret reached this URL once; sending the browser on without
            # it keeps it out of the history, the page and the links on it.
            self.message_user(
                request,
                f"That looks like a whole {self.refused_kind}, which is not searched here: a "
                "search is sent in the page address, where access and proxy logs keep it. "
                f"{self.refused_advice}",
                messages.ERROR,
            )
            params = request.GET.copy()
            del params[SEARCH_VAR]
            query = params.urlencode()
            return HttpResponseRedirect(f"{request.path}?{query}" if query else request.path)
        return super().changelist_view(request, extra_context)

    def get_search_results(self, request, queryset, search_term):
        if self.looks_like_secret(search_term.strip()):
            return queryset.none(), False  # e.g. an autocomplete term: never looked up
        return super().get_search_results(request, queryset, search_term)


class GatewayAdmin(TitledDeleteAdmin):
    """Adds "Activate/Deactivate selected" actions and notes on the delete pages.

    Subclasses override `delete_notes` to say what a delete leaves behind
    (request logs kept, models unlinked, …), which Django's own page omits.
    """

    actions = ["activate_selected", "deactivate_selected"]
    delete_confirmation_template = "admin/aethergate/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/aethergate/delete_selected_confirmation.html"
    list_per_page = 50

    def delete_notes(self, objs) -> list[str]:
        """Sentences about what deleting `objs` also does, keeps or unlinks."""
        return []

    def get_deleted_objects(self, objs, request):
        # Both the single and the bulk delete page call this, so it is the one
        # place to compute the notes; the templates read them from the request.
        request.aethergate_delete_notes = self.delete_notes(objs)
        return super().get_deleted_objects(objs, request)

    @admin.action(description="Activate selected %(verbose_name_plural)s", permissions=["change"])
    def activate_selected(self, request, queryset):
        self._set_active(request, queryset, active=True)

    @admin.action(description="Deactivate selected %(verbose_name_plural)s", permissions=["change"])
    def deactivate_selected(self, request, queryset):
        self._set_active(request, queryset, active=False)

    def _set_active(self, request, queryset, *, active: bool):
        changed = 0
        # One save each, not one .update(): see set_active.
        for obj in queryset.exclude(is_active=active):
            set_active(obj, active=active)
            self.log_change(request, obj, "Activated" if active else "Deactivated")
            changed += 1
        verb = "activated" if active else "deactivated"
        noun = model_ngettext(self.opts, changed)
        self.message_user(request, f"{changed} {noun} {verb}.", messages.SUCCESS)

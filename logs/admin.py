"""Read-only admin for request logs and the audit log."""

from django.contrib import admin
from django.utils.html import format_html_join

from aethergate.lib import audit
from aethergate.lib.admin import SecretSearchAdmin
from keys.models import looks_like_secret
from logs.models import AuditEntry, RequestLog


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable and filterable, never added, edited or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(RequestLog)
class RequestLogAdmin(SecretSearchAdmin, ReadOnlyAdmin):
    """Logs are an audit trail: viewable and filterable, never added or edited here.

    Old rows go through retention (`prune_logs`), not through the admin.
    """

    date_hierarchy = "created_at"
    list_display = (
        "created_at",
        "username",
        "key_prefix",
        "model",
        "endpoint",
        "status",
        "outcome",
        "stream",
        "input_units",
        "output_units",
        "cost",
        "latency_ms",
    )
    list_filter = (
        "outcome",
        "stream",
        "usage_estimated",
        ("user", admin.RelatedOnlyFieldListFilter),
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "model",
    )
    search_fields = ("request_id", "username", "key_prefix", "model")
    looks_like_secret = staticmethod(looks_like_secret)
    refused_kind = "key"
    refused_advice = "Search by its prefix, and consider rotating it if that address was logged."
    # Counting a large log table on every page view is what makes admins slow.
    show_full_result_count = False
    list_per_page = 100


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Who changed what, from where. Old entries go only through `prune_audit`."""

    date_hierarchy = "at"
    list_display = (
        "at",
        "actor_name",
        "surface",
        "address",
        "action",
        "object_kind",
        "object_name",
        "changed_fields",
    )
    list_filter = (
        "surface",
        "object_kind",
        "action",
        ("actor", admin.RelatedOnlyFieldListFilter),
        "actor_name",
        ("at", admin.DateFieldListFilter),
    )
    search_fields = ("actor_name", "object_name", "object_id", "address", "command")
    fields = (*AuditEntry.SHOWN, "changes_table")
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="changed")
    def changed_fields(self, entry):
        return ", ".join(entry.changes) if isinstance(entry.changes, dict) else ""

    @admin.display(description="changes")
    def changes_table(self, entry):
        if not isinstance(entry.changes, dict) or not entry.changes:
            return "—"
        rows = (
            (field, "changed (secret)" if value == audit.CHANGED else _transition(value))
            for field, value in entry.changes.items()
        )
        return format_html_join("", "<div><b>{}</b>: {}</div>", rows)


def _transition(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]!r} → {value[1]!r}"
    return repr(value)

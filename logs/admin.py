"""Read-only admin for request logs."""

from django.contrib import admin

from logs.models import RequestLog


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
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
    # Counting a large log table on every page view is what makes admins slow.
    show_full_result_count = False
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

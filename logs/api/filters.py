"""Filters for request logs (shared by the log list and the usage statistics) and the audit log."""

import django_filters
from django.db.models import Q

from logs.models import AuditEntry, RequestLog


def period(field: str) -> tuple[django_filters.DateTimeFilter, django_filters.DateTimeFilter]:
    """The `since` (inclusive) and `until` (exclusive) filters on the time column `field`."""
    return (
        django_filters.DateTimeFilter(
            field_name=field, lookup_expr="gte", label="From this time on (ISO 8601)"
        ),
        django_filters.DateTimeFilter(
            field_name=field, lookup_expr="lt", label="Before this time (ISO 8601)"
        ),
    )


class LogFilter(django_filters.FilterSet):
    user = django_filters.CharFilter(method="filter_user", label="User id or username")
    key = django_filters.CharFilter(method="filter_key", label="API key id or display prefix")
    since, until = period("created_at")

    class Meta:
        model = RequestLog
        fields = ("user", "key", "model", "endpoint", "outcome", "status", "stream", "request_id",
                  "cost_unknown")  # fmt: skip

    # Snapshot columns, so the history of a deleted user or key stays reachable.
    def filter_user(self, queryset, name, value):
        return queryset.filter(snapshot_or_id("username", "user_id", value))

    def filter_key(self, queryset, name, value):
        return queryset.filter(snapshot_or_id("key_prefix", "api_key_id", value.rstrip("…")))


def snapshot_or_id(snapshot: str, id_field: str, value: str) -> Q:
    """Rows whose name snapshot is `value`, or whose link is the id `value` (if numeric)."""
    match = Q(**{snapshot: value})
    if value.isdigit():
        match |= Q(**{id_field: int(value)})
    return match


class AuditFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(method="filter_actor", label="Actor's user id or name")
    since, until = period("at")

    class Meta:
        model = AuditEntry
        fields = ("actor", "surface", "action", "object_kind", "object_id", "address", "command")

    def filter_actor(self, queryset, name, value):
        return queryset.filter(snapshot_or_id("actor_name", "actor_id", value))

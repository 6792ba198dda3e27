"""Filters for request logs, shared by the log list and the usage statistics."""

import django_filters
from django.db.models import Q

from logs.models import RequestLog


class LogFilter(django_filters.FilterSet):
    user = django_filters.CharFilter(method="filter_user", label="User id or username")
    key = django_filters.CharFilter(method="filter_key", label="API key id or display prefix")
    since = django_filters.DateTimeFilter(
        field_name="created_at", lookup_expr="gte", label="From this time on (ISO 8601)"
    )
    until = django_filters.DateTimeFilter(
        field_name="created_at", lookup_expr="lt", label="Before this time (ISO 8601)"
    )

    class Meta:
        model = RequestLog
        fields = ("user", "key", "model", "endpoint", "outcome", "status", "stream", "request_id")

    # Snapshot columns, so the history of a deleted user or key stays reachable.
    def filter_user(self, queryset, name, value):
        match = Q(username=value)
        if value.isdigit():
            match |= Q(user_id=int(value))
        return queryset.filter(match)

    def filter_key(self, queryset, name, value):
        value = value.rstrip("…")
        match = Q(key_prefix=value)
        if value.isdigit():
            match |= Q(api_key_id=int(value))
        return queryset.filter(match)

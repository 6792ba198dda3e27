"""Management API views for request logs and the audit log (read-only) and usage statistics."""

from dataclasses import replace

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from aethergate.lib.api import ManagementMixin, ManagementReadOnlyViewSet
from logs.api.filters import AuditFilter, LogFilter
from logs.api.serializers import (
    AuditEntrySerializer,
    LogDetailSerializer,
    LogSerializer,
    StatsQuerySerializer,
    StatsSerializer,
)
from logs.models import AuditEntry, Outcome, RequestLog
from logs.services import UsageQuery, usage_report, usage_series, usage_span


class LogViewSet(ManagementReadOnlyViewSet):
    """Request logs, newest first. The list leaves out prompt and completion text."""

    queryset = RequestLog.objects.all()
    filterset_class = LogFilter
    search_fields = ("request_id", "username", "key_prefix", "model", "error")
    ordering_fields = ("id", "created_at", "cost", "latency_ms", "input_units", "output_units",
                       "cache_read_units")  # fmt: skip
    ordering = ("-created_at", "-id")

    def get_queryset(self):
        if self.action == "list":
            return self.queryset.defer("prompt_text", "completion_text")
        return self.queryset

    def get_serializer_class(self):
        return LogSerializer if self.action == "list" else LogDetailSerializer


class AuditViewSet(ManagementReadOnlyViewSet):
    """The audit log, newest first: who changed what, from where (read-only)."""

    queryset = AuditEntry.objects.all()
    serializer_class = AuditEntrySerializer
    filterset_class = AuditFilter
    search_fields = ("actor_name", "object_name", "object_id", "address", "command")
    ordering_fields = ("id", "at")
    ordering = ("-at", "-id")


class StatsView(ManagementMixin, GenericAPIView):
    """Usage from the hourly rollups: totals, a series, breakdowns per day, model, endpoint,
    user and key, outcomes, latency and TTFT, for a range (all of it by default) and filters.

    The log list's other filters (status, stream, request_id, search) are not kept in the
    rollups: they are refused with a 400 that says so, never ignored.
    """

    # Who may read request logs may read their usage: the permission checks go by this model.
    queryset = RequestLog.objects.none()
    serializer_class = StatsSerializer
    pagination_class = None
    filter_backends = ()

    @extend_schema(parameters=[StatsQuerySerializer], responses=StatsSerializer)
    def get(self, request):
        params = StatsQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        unknown = sorted(set(request.query_params) - set(params.fields) - {"format"})
        if unknown:
            raise ValidationError(
                {name: ["Not a filter of stats (kept per hour, user, key, model, endpoint and "
                 "outcome); filter /api/v1/logs/ for it."] for name in unknown}
            )  # fmt: skip
        data = params.validated_data
        first, last = usage_span()
        query = UsageQuery(
            since=data.get("since", first),
            until=data.get("until", last),
            bucket=data["bucket"],
            model=data.get("model"),
            endpoint=data.get("endpoint"),
            outcome=data.get("outcome"),
            **_who("user_id", "username", data.get("user")),
            **_who("api_key_id", "key_prefix", data.get("key", "").rstrip("…") or None),
        )
        report = usage_report(query)
        report["by_day"] = [
            {"date": timezone.localdate(day.pop("start")), **day}
            for day in usage_series(replace(query, bucket="day"))
            if day["requests"]
        ]
        totals = report["totals"]
        totals["error_count"] = totals["errors"]
        totals["errors"] = {
            group["outcome"]: group["requests"]
            for group in sorted(report["by_outcome"], key=lambda group: group["outcome"])
            if group["outcome"] != Outcome.OK
        }
        return Response(self.get_serializer(report).data)


def _who(id_field: str, snapshot: str, value: str | None) -> dict:
    """An id filter when `value` is numeric, else a snapshot filter (history of the deleted)."""
    if value is None:
        return {}
    return {id_field: int(value)} if value.isdigit() else {snapshot: value}

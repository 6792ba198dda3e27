"""Management API views for request logs and the audit log (read-only) and usage statistics."""

from decimal import Decimal

from django.db.models import Count, DecimalField, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.utils import translate_validation
from drf_spectacular.utils import extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from aethergate.lib.api import ManagementMixin, ManagementReadOnlyViewSet
from logs.api.filters import AuditFilter, LogFilter
from logs.api.serializers import (
    AuditEntrySerializer,
    LogDetailSerializer,
    LogSerializer,
    StatsSerializer,
)
from logs.models import AuditEntry, Outcome, RequestLog


def usage():
    """Aggregates of a set of log rows: request count, units and cost."""
    return {
        "requests": Count("id"),
        "input_units": Coalesce(Sum("input_units"), 0),
        "output_units": Coalesce(Sum("output_units"), 0),
        "cost": Coalesce(
            Sum("cost"),
            Value(Decimal(0)),
            output_field=DecimalField(max_digits=30, decimal_places=10),
        ),
    }


class LogViewSet(ManagementReadOnlyViewSet):
    """Request logs, newest first. The list leaves out prompt and completion text."""

    queryset = RequestLog.objects.all()
    filterset_class = LogFilter
    search_fields = ("request_id", "username", "key_prefix", "model", "error")
    ordering_fields = ("id", "created_at", "cost", "latency_ms", "input_units", "output_units")
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
    """Usage totals and breakdowns per day, model and user, over the logs the filters select."""

    queryset = RequestLog.objects.all()
    serializer_class = StatsSerializer
    filter_backends = (DjangoFilterBackend,)  # here for the schema; get() applies it itself
    filterset_class = LogFilter
    pagination_class = None

    @extend_schema(responses=StatsSerializer, filters=True)
    def get(self, request):
        filterset = DjangoFilterBackend().get_filterset(request, self.get_queryset(), self)
        if not filterset.is_valid():
            raise translate_validation(filterset.errors)
        logs = filterset.qs.order_by()
        totals = logs.aggregate(**usage())
        totals["errors"] = dict(
            logs.exclude(outcome=Outcome.OK)
            .values_list("outcome")
            .annotate(n=Count("id"))
            .order_by("outcome")
        )
        stats = {
            "since": filterset.form.cleaned_data.get("since"),
            "until": filterset.form.cleaned_data.get("until"),
            "totals": totals,
            "by_day": logs.annotate(date=TruncDate("created_at"))
            .values("date")
            .annotate(**usage())
            .order_by("date"),
            "by_model": logs.values("model").annotate(**usage()).order_by("-cost", "model"),
            "by_user": logs.values("username").annotate(**usage()).order_by("-cost", "username"),
        }
        return Response(self.get_serializer(stats).data)

"""Management API serializers for request logs and usage statistics."""

from rest_framework import serializers

from logs.models import AuditEntry, RequestLog

LIST_FIELDS = (
    "id",
    "created_at",
    "request_id",
    "user",
    "username",
    "api_key",
    "key_prefix",
    "model",
    "endpoint",
    "path",
    "status",
    "outcome",
    "stream",
    "latency_ms",
    "ttft_ms",
    "input_units",
    "output_units",
    "usage_estimated",
    "cost",
    "error",
    "attempts",
)


class LogSerializer(serializers.ModelSerializer):
    """A log row without prompt and completion text, which can be large."""

    class Meta:
        model = RequestLog
        fields = LIST_FIELDS
        read_only_fields = LIST_FIELDS


class LogDetailSerializer(LogSerializer):
    """A log row with prompt and completion text (present only if the key logged content)."""

    class Meta(LogSerializer.Meta):
        fields = (*LIST_FIELDS, "prompt_text", "completion_text")
        read_only_fields = fields


class UsageSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    input_units = serializers.IntegerField()
    output_units = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=None, decimal_places=10)


class TotalsSerializer(UsageSerializer):
    errors = serializers.DictField(
        child=serializers.IntegerField(), help_text="Requests per outcome other than ok."
    )


class DayUsageSerializer(UsageSerializer):
    date = serializers.DateField()


class ModelUsageSerializer(UsageSerializer):
    model = serializers.CharField()


class UserUsageSerializer(UsageSerializer):
    username = serializers.CharField()


class StatsSerializer(serializers.Serializer):
    """Usage over the selected logs: totals, then per day, model and user (by cost)."""

    since = serializers.DateTimeField(allow_null=True)
    until = serializers.DateTimeField(allow_null=True)
    totals = TotalsSerializer()
    by_day = DayUsageSerializer(many=True)
    by_model = ModelUsageSerializer(many=True)
    by_user = UserUsageSerializer(many=True)


class AuditEntrySerializer(serializers.ModelSerializer):
    """One audit entry; `changes` maps a field to [old, new], or to "changed" for a secret."""

    class Meta:
        model = AuditEntry
        fields = ("id", *AuditEntry.SHOWN, "changes")
        read_only_fields = fields

"""Management API serializers for request logs and usage statistics."""

from rest_framework import serializers

from logs.models import AuditEntry, Outcome, RequestLog
from logs.services import BUCKETS

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
    "cache_read_units",
    "cache_write_units",
    "output_units",
    "reasoning_units",
    "usage_estimated",
    "cost",
    "cost_unknown",
    "error",
    "attempts",
)


class LogSerializer(serializers.ModelSerializer):
    """A log row without prompt and completion text, which can be large.

    `input_units` counts all input, `cache_read_units` and `cache_write_units` the parts
    of it read from and written to the upstream's prompt cache (uncached input is the
    rest); `reasoning_units` is part of `output_units`; `cost_unknown` says the model had
    no price, so `cost` (0) is not what the request cost.
    """

    class Meta:
        model = RequestLog
        fields = LIST_FIELDS
        read_only_fields = LIST_FIELDS


class LogDetailSerializer(LogSerializer):
    """A log row with prompt and completion text (present only if the key logged content)."""

    class Meta(LogSerializer.Meta):
        fields = (*LIST_FIELDS, "prompt_text", "completion_text")
        read_only_fields = fields


class StatsQuerySerializer(serializers.Serializer):
    """What `stats` accepts: a range, a bucket size, and the filters rollups keep."""

    since = serializers.DateTimeField(
        required=False, help_text="From this time on (ISO 8601), taken down to the hour."
    )
    until = serializers.DateTimeField(
        required=False, help_text="Before this time (ISO 8601), taken up to the hour."
    )
    bucket = serializers.ChoiceField(choices=BUCKETS, default="day", help_text="Series bucket.")
    user = serializers.CharField(required=False, help_text="User id or username.")
    key = serializers.CharField(required=False, help_text="API key id or display prefix.")
    model = serializers.CharField(required=False)
    endpoint = serializers.CharField(required=False)
    outcome = serializers.ChoiceField(choices=Outcome.choices, required=False)

    def validate(self, attrs):
        if "since" in attrs and "until" in attrs and attrs["until"] <= attrs["since"]:
            raise serializers.ValidationError({"until": "Must be after since."})
        return attrs


class UsageSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    input_units = serializers.IntegerField(help_text="All input units, cached tokens included.")
    cache_read_units = serializers.IntegerField(
        help_text="Input tokens read from the upstream's prompt cache (part of input_units)."
    )
    cache_write_units = serializers.IntegerField(
        help_text="Input tokens written to the upstream's prompt cache (part of input_units)."
    )
    output_units = serializers.IntegerField()
    reasoning_units = serializers.IntegerField(
        help_text="Output tokens spent reasoning, where reported (part of output_units)."
    )
    cost = serializers.DecimalField(max_digits=None, decimal_places=10)
    cost_unknown_requests = serializers.IntegerField(
        help_text="Requests on a model without prices: logged at cost 0, their cost unknown."
    )
    errors = serializers.IntegerField(help_text="Requests whose outcome was not ok.")


class TotalsSerializer(UsageSerializer):
    errors = serializers.DictField(
        child=serializers.IntegerField(), help_text="Requests per outcome other than ok."
    )
    error_count = serializers.IntegerField(help_text="Requests whose outcome was not ok.")
    error_rate = serializers.FloatField(help_text="error_count / requests (0 without requests).")


class BucketUsageSerializer(UsageSerializer):
    start = serializers.DateTimeField()


class DayUsageSerializer(UsageSerializer):
    date = serializers.DateField()


class ModelUsageSerializer(UsageSerializer):
    model = serializers.CharField()


class EndpointUsageSerializer(UsageSerializer):
    endpoint = serializers.CharField()


class UserUsageSerializer(UsageSerializer):
    user_id = serializers.IntegerField(help_text="0: the user was deleted before the log.")
    username = serializers.CharField()


class KeyUsageSerializer(UsageSerializer):
    api_key_id = serializers.IntegerField(help_text="0: the key was deleted before the log.")
    key_prefix = serializers.CharField()
    username = serializers.CharField()
    name = serializers.CharField(help_text="The key's name; empty once the key is deleted.")


class OutcomeShareSerializer(serializers.Serializer):
    outcome = serializers.CharField()
    requests = serializers.IntegerField()
    share = serializers.FloatField()


class HistogramBinSerializer(serializers.Serializer):
    le_ms = serializers.IntegerField(allow_null=True, help_text="Upper bound; null: the rest.")
    count = serializers.IntegerField()


class TimingSerializer(serializers.Serializer):
    """Percentiles are the upper bounds of the histogram bins they fall in (null past the last)."""

    count = serializers.IntegerField()
    mean_ms = serializers.IntegerField(allow_null=True)
    p50_ms = serializers.IntegerField(allow_null=True)
    p90_ms = serializers.IntegerField(allow_null=True)
    p95_ms = serializers.IntegerField(allow_null=True)
    p99_ms = serializers.IntegerField(allow_null=True)
    histogram = HistogramBinSerializer(many=True)


class StatsSerializer(serializers.Serializer):
    """Usage over whole hours (from the hourly rollups, which outlive pruned logs): totals, a
    series in `bucket`s, per day, model, endpoint, user and key (by cost), outcomes, timings."""

    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    bucket = serializers.CharField()
    totals = TotalsSerializer()
    series = BucketUsageSerializer(many=True)
    by_day = DayUsageSerializer(many=True, help_text="Days with requests (as before `series`).")
    by_model = ModelUsageSerializer(many=True)
    by_endpoint = EndpointUsageSerializer(many=True)
    by_user = UserUsageSerializer(many=True)
    by_key = KeyUsageSerializer(many=True)
    by_outcome = OutcomeShareSerializer(many=True)
    latency = TimingSerializer()
    ttft = TimingSerializer()


class AuditEntrySerializer(serializers.ModelSerializer):
    """One audit entry; `changes` maps a field to [old, new], or to "changed" for a secret."""

    class Meta:
        model = AuditEntry
        fields = ("id", *AuditEntry.SHOWN, "changes")
        read_only_fields = fields

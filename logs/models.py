"""Request logs (one row per authenticated `/v1` request), their hourly usage rollups, and the
audit log of changes."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone

from accounts.models import MONEY
from aethergate.lib import audit


class Outcome(models.TextChoices):
    OK = "ok", "OK"
    INVALID_REQUEST = "invalid_request", "Invalid request"
    FORBIDDEN = "forbidden", "Forbidden"
    MODEL_NOT_FOUND = "model_not_found", "Model not found"
    RATE_LIMITED = "rate_limited", "Rate limited"
    INSUFFICIENT_BALANCE = "insufficient_balance", "Insufficient balance"
    BUDGET_EXCEEDED = "budget_exceeded", "Budget exceeded"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    UPSTREAM_TIMEOUT = "upstream_timeout", "Upstream timeout"
    CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
    GATEWAY_ERROR = "gateway_error", "Gateway error"
    # Counted in metrics only: no key, or none verified, so no account to log under.
    UNAUTHENTICATED = "unauthenticated", "Unauthenticated"
    UNAVAILABLE = "unavailable", "Gateway unavailable"


class RequestLog(models.Model):
    """What one request did and cost.

    `user` and `api_key` are set to NULL when those rows are deleted; the
    `username` and `key_prefix` snapshots keep the history readable. Model and
    endpoint are stored by name for the same reason. Prompt and completion
    text are present only when the key had `log_content` on.
    """

    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=64, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="request_logs",
    )
    username = models.CharField(max_length=150)
    api_key = models.ForeignKey(
        "keys.APIKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="request_logs",
        verbose_name="API key",
    )
    key_prefix = models.CharField(max_length=16)
    model = models.CharField(max_length=200, blank=True, help_text="Public model name requested.")
    endpoint = models.CharField(max_length=100, blank=True)
    path = models.CharField(max_length=100, blank=True)
    status = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    stream = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="time to first token (ms)"
    )
    input_units = models.PositiveIntegerField(
        default=0, help_text="All input units, cached ones included."
    )
    cache_read_units = models.PositiveIntegerField(
        default=0, help_text="Input tokens read from the upstream's prompt cache."
    )
    cache_write_units = models.PositiveIntegerField(
        default=0, help_text="Input tokens written to the upstream's prompt cache."
    )
    output_units = models.PositiveIntegerField(default=0)
    reasoning_units = models.PositiveIntegerField(
        default=0, help_text="Output tokens spent reasoning, where the upstream reports them."
    )
    usage_estimated = models.BooleanField(default=False)
    cost = models.DecimalField(**MONEY, default=0)
    cost_unknown = models.BooleanField(
        default=False, help_text="The model had no price: the cost shown is not what it cost."
    )
    prompt_text = models.TextField(blank=True)
    completion_text = models.TextField(blank=True)
    error = models.TextField(blank=True, help_text="Why the request failed, if it did.")
    attempts = models.JSONField(
        default=list,
        blank=True,
        help_text="Each upstream try, in order: model, endpoint, and what came back.",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="log_user_time"),
            models.Index(fields=["api_key", "created_at"], name="log_key_time"),
            models.Index(fields=["model", "created_at"], name="log_model_time"),
            models.Index(fields=["outcome", "created_at"], name="log_outcome_time"),
        ]

    def __str__(self):
        return f"{self.request_id} {self.model} {self.status}"


# Upper bounds (ms, inclusive) of the latency and time-to-first-token histogram
# bins kept per rollup row; one more bin counts what was slower than the last.
# Percentiles are read from them, so they are as fine as these bins. Changing
# the bounds needs a migration and `rebuild_usage`.
LATENCY_BOUNDS_MS = (
    *(50, 100, 200, 300, 500, 750),
    *(1000, 1500, 2000, 3000, 5000),
    *(10000, 20000, 30000, 60000),
)


def histogram_fields(prefix: str) -> list[str]:
    """The histogram's column names for `prefix` ("latency" or "ttft"), in bin order."""
    bins = [f"{prefix}_le_{bound}" for bound in LATENCY_BOUNDS_MS]
    return [*bins, f"{prefix}_over_{LATENCY_BOUNDS_MS[-1]}"]


class UsageSlot(models.Model):
    """What the rollup tables share: the usage of one slot of time by one user, key, model,
    endpoint and outcome (sums, and latency and TTFT histograms).

    `user_id` and `api_key_id` are plain ids (0: none), so rows outlive their
    user and key, whose names stay in the `username` and `key_prefix` snapshots.
    """

    hour = models.DateTimeField(help_text="Start of the slot (UTC).")
    user_id = models.PositiveBigIntegerField(default=0)
    username = models.CharField(max_length=150)
    api_key_id = models.PositiveBigIntegerField(default=0, verbose_name="API key id")
    key_prefix = models.CharField(max_length=16)
    model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    requests = models.PositiveBigIntegerField(default=0)
    input_units = models.PositiveBigIntegerField(default=0)
    cache_read_units = models.PositiveBigIntegerField(default=0)
    cache_write_units = models.PositiveBigIntegerField(default=0)
    output_units = models.PositiveBigIntegerField(default=0)
    reasoning_units = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=0)
    cost_unknown_requests = models.PositiveBigIntegerField(default=0)
    latency_count = models.PositiveBigIntegerField(default=0)
    latency_sum_ms = models.PositiveBigIntegerField(default=0)
    ttft_count = models.PositiveBigIntegerField(default=0)
    ttft_sum_ms = models.PositiveBigIntegerField(default=0)
    # ... and the histogram bins, added below (histogram_fields).

    # The dimensions, in the order of the unique constraint the writer's upsert names.
    DIMENSIONS = ("hour", "user_id", "api_key_id", "model", "endpoint", "outcome")

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.hour:%Y-%m-%d %H:00} {self.username} {self.model} {self.outcome}"


for _name in (*histogram_fields("latency"), *histogram_fields("ttft")):
    UsageSlot.add_to_class(_name, models.PositiveBigIntegerField(default=0))


class UsageRollup(UsageSlot):
    """Usage by the hour (`hour`: the start of a UTC hour): the dashboard's source.

    Kept up to date by the log writer in the transaction that stores the rows
    (`logs.services.write_batch`), rebuilt from the rows by `rebuild_usage`,
    and never pruned with them: spend history outlives `prune_logs`.
    """

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=UsageSlot.DIMENSIONS, name="rollup_unique_slot")
        ]
        indexes = [
            models.Index(fields=["user_id", "hour"], name="rollup_user_hour"),
            models.Index(fields=["api_key_id", "hour"], name="rollup_key_hour"),
            models.Index(fields=["model", "hour"], name="rollup_model_hour"),
        ]


class DailyUsageRollup(UsageSlot):
    """The same usage by the UTC day (`hour`: 00:00 UTC of the day), for long ranges.

    Written with the hourly rows, in the same transaction; always the sum of
    that day's UsageRollup rows (`rebuild_usage` makes it again from them).
    """

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=UsageSlot.DIMENSIONS, name="daily_rollup_unique_slot")
        ]
        indexes = [
            models.Index(fields=["user_id", "hour"], name="daily_rollup_user_day"),
            models.Index(fields=["api_key_id", "hour"], name="daily_rollup_key_day"),
            models.Index(fields=["model", "hour"], name="daily_rollup_model_day"),
        ]


class BudgetAlert(models.Model):
    """A soft budget limit crossed: one row per owner and period, so each alert is sent once.

    `scope` is "k" (an API key) or "u" (a user); `owner_id` a plain id, so the
    row outlives its owner. `delivered_at` stays empty until the webhook took it.
    """

    scope = models.CharField(max_length=1, choices=[("k", "API key"), ("u", "User")])
    owner_id = models.PositiveBigIntegerField()
    owner_name = models.CharField(max_length=150)
    period_start = models.DateTimeField()
    soft_limit = models.DecimalField(**MONEY)
    spent = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "owner_id", "period_start"], name="budget_alert_once"
            )
        ]

    def __str__(self):
        return f"{self.get_scope_display()} {self.owner_name} over {self.soft_limit}"


class AuditEntry(models.Model):
    """One change to a user, key, token, endpoint or model, or one security event.

    Who (`actor`, with the `actor_name` snapshot that outlives the user: a
    username, "master key", or the OS user running `command`), from where
    (`surface`, client `address`), what (`action` on the object of
    `object_kind`/`object_id`/`object_name`) and how (`changes`: field →
    [old, new], or "changed" for a secret, whose values are never stored).
    Kept until `prune_audit` deletes it.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    surface = models.CharField(max_length=16, choices=audit.Surface.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    command = models.CharField(max_length=100, blank=True)
    # Text, not an IP field: an ASGI server may report a non-IP client (a socket path).
    address = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=32, db_index=True)
    object_kind = models.CharField(max_length=50, db_index=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_name = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    # The columns people read, in reading order (admin page and API), before `changes`.
    SHOWN = (
        "at",
        "surface",
        "actor",
        "actor_name",
        "command",
        "address",
        "action",
        "object_kind",
        "object_id",
        "object_name",
    )

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self):
        who = self.actor_name or "?"
        return f"{self.at:%Y-%m-%d %H:%M} {who} {self.action} {self.object_kind} {self.object_name}"

"""What one request did (`Exchange`), and its accounting: charge, log record, metrics, access log.

`account` runs in the request's `finally`, on success, error, disconnect and
shutdown alike; everything it reports is projected from the one exchange.
"""

import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from aethergate.lib import metrics
from logs.models import Outcome, RequestLog
from logs.records import RequestRecord
from proxy import usage
from proxy.snapshot import DeploymentInfo, KeyInfo, ModelInfo

access_log = logging.getLogger("aethergate.requests")

# What the log's columns hold of what a client sent: the rest is cut, not refused.
MODEL_NAME_LENGTH = RequestLog._meta.get_field("model").max_length
PATH_LENGTH = RequestLog._meta.get_field("path").max_length

# Unique per process by a random prefix, then a counter: no system call per
# request (os.urandom stood out in profiles). Ids identify; they are not secrets.
_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)
_request_ids = itertools.count()


def next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


@dataclass(slots=True)
class Exchange:
    """What one request did, filled in as it moves through the pipeline."""

    path: str
    request_id: str = field(default_factory=next_request_id)
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    key: KeyInfo | None = None
    model_name: str = ""  # the public name the client asked for
    model: ModelInfo | None = None  # once known to exist; then the model that answered
    deployment: DeploymentInfo | None = None  # the one last tried
    endpoint: str = ""
    status: int = 200
    outcome: Outcome = Outcome.OK
    stream: bool = False
    ttft: float | None = None
    input_units: int = 0  # all of them, cached ones included
    output_units: int = 0
    cache_read_units: int = 0  # of the input, read from the upstream's prompt cache
    cache_write_units: int = 0  # of the input, written to it
    reasoning_units: int = 0  # of the output, spent reasoning
    estimated: bool = False
    prompt: str = ""
    completion: list[str] = field(default_factory=list)
    error: str = ""
    attempts: list[dict] = field(default_factory=list)
    held: object = None  # a proxy.meter.Held: what it reserved, given back at its end
    bridge: object = None  # a proxy.bridges bridge: an agent API's translation state

    def failed(self, status: int, outcome: Outcome, error: str = "") -> None:
        self.status, self.outcome, self.error = status, outcome, error

    def set_usage(self, used: usage.Usage, estimated: bool = False) -> None:
        """Take `used` as what the request used (replacing what an earlier attempt counted)."""
        self.input_units, self.output_units = used.input, used.output
        self.cache_read_units, self.cache_write_units = used.cache_read, used.cache_write
        self.reasoning_units = used.reasoning
        self.estimated = estimated

    def billable(self) -> bool:
        """Whether the request is charged: its model is known, and it succeeded or produced
        units (a failure that produced none costs nothing)."""
        return self.model is not None and (
            self.outcome == Outcome.OK or bool(self.input_units or self.output_units)
        )

    def cost_unknown(self) -> bool:
        """Whether it would be charged but its model has no price (`ModelInfo.unpriced`):
        logged so, with a cost of 0, never silently free."""
        return self.billable() and self.model.unpriced

    def charge(self) -> Decimal:
        """What the request costs: its units at its model's prices, the cached input at the
        cache prices; nothing when it is not billable or its cost is unknown."""
        if not self.billable() or self.model.unpriced:
            return Decimal(0)
        return usage.cost(
            self.model,
            self.input_units,
            self.output_units,
            cache_read=self.cache_read_units,
            cache_write=self.cache_write_units,
        )

    def record(self, elapsed: float, cost: Decimal) -> RequestRecord:
        key = self.key
        return RequestRecord(
            created_at=self.created_at,
            request_id=self.request_id,
            user_id=key.user_id,
            username=key.username,
            api_key_id=key.id,
            key_prefix=key.prefix,
            model=self.model_name[:MODEL_NAME_LENGTH],
            endpoint=self.endpoint,
            path=self.path[:PATH_LENGTH],
            status=self.status,
            outcome=self.outcome.value,
            stream=self.stream,
            latency_ms=usage.milliseconds(elapsed),
            ttft_ms=None if self.ttft is None else usage.milliseconds(self.ttft),
            input_units=self.input_units,
            cache_read_units=self.cache_read_units,
            cache_write_units=self.cache_write_units,
            output_units=self.output_units,
            reasoning_units=self.reasoning_units,
            usage_estimated=self.estimated,
            cost=cost,
            cost_unknown=self.cost_unknown(),
            prompt_text=self.prompt if key.log_content else "",
            completion_text="".join(self.completion) if key.log_content else "",
            error=self.error,
            attempts=self.attempts,
        )


def account(runtime, ex: Exchange) -> None:
    """Count the request in the metrics, log it, charge it and hand its record to the writer."""
    cost = ex.charge()
    elapsed = time.perf_counter() - ex.started
    try:
        observe(ex, elapsed, cost)
    except Exception:
        # A metric or the access log failing must not cost the request its
        # log row and charge (a negative count once did, in Counter.inc).
        runtime.faults.report(ex.request_id)
    if ex.key is None:
        return  # no key, no account to log it under
    runtime.catalog.charge(ex.key.user_id, cost, ex.held.counters if ex.held else ())
    runtime.writer.submit(ex.record(elapsed, cost))


def observe(ex: Exchange, elapsed: float, cost: Decimal) -> None:
    """The request's metrics and its access-log line."""
    # Labelled by model only once it is known to exist: client input
    # must not create label values (unbounded series).
    label = ex.model_name if ex.model is not None else ""
    metrics.series(metrics.REQUESTS, label, ex.status, ex.outcome.value).inc()
    if ex.model is not None:
        metrics.series(metrics.LATENCY, label).observe(elapsed)
        if ex.ttft is not None:
            metrics.series(metrics.TTFT, label).observe(ex.ttft)
        if ex.input_units:
            metrics.series(metrics.TOKENS, label, "input").inc(ex.input_units)
        if ex.output_units:
            metrics.series(metrics.TOKENS, label, "output").inc(ex.output_units)
        if ex.cache_read_units:
            metrics.series(metrics.TOKENS, label, "cache_read").inc(ex.cache_read_units)
        if ex.cache_write_units:
            metrics.series(metrics.TOKENS, label, "cache_write").inc(ex.cache_write_units)
        if cost:
            metrics.series(metrics.COST, label).inc(float(cost))
    if settings.AETHERGATE_ACCESS_LOG:
        access_log.info(
            "%s %s %s %s",
            ex.path,
            ex.status,
            ex.outcome.value,
            ex.request_id,
            extra={
                "request_id": ex.request_id,
                "path": ex.path,
                "status": ex.status,
                "outcome": ex.outcome.value,
                "model": label,
                "endpoint": ex.endpoint,
                "stream": ex.stream,
                "latency_ms": int(elapsed * 1000),
                "ttft_ms": None if ex.ttft is None else int(ex.ttft * 1000),
                "input_units": ex.input_units,
                "cache_read_units": ex.cache_read_units,
                "cache_write_units": ex.cache_write_units,
                "output_units": ex.output_units,
                "reasoning_units": ex.reasoning_units,
                "cost": str(cost),
                "cost_unknown": ex.cost_unknown(),
                "key_prefix": ex.key.prefix if ex.key else "",
                "user": ex.key.username if ex.key else "",
            },
        )

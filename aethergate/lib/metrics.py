"""Prometheus metrics of the gateway, and their text exposition.

With several worker processes (gunicorn), set PROMETHEUS_MULTIPROC_DIR so
every worker writes its values there and `/metrics` reports the sum of all
of them (gunicorn.conf.py does this when metrics are on); otherwise each
process reports its own.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Buckets from 5 ms to 5 min: local models answer in milliseconds, long generations take minutes.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "aethergate_requests",
    "Requests to /v1, by model, HTTP status and outcome.",
    ["model", "status", "outcome"],
)
LATENCY = Histogram(
    "aethergate_request_duration_seconds",
    "Time from request to the last byte sent, by model.",
    ["model"],
    buckets=_SECONDS,
)
TTFT = Histogram(
    "aethergate_time_to_first_token_seconds",
    "Time from request to the first token, by model.",
    ["model"],
    buckets=_SECONDS,
)
TOKENS = Counter(
    "aethergate_tokens",
    "Billed units (tokens for token-priced models), by model and direction: input (all of "
    "it), output, and cache_read and cache_write (the input tokens read from and written to "
    "the upstream's prompt cache, part of input).",
    ["model", "direction"],
)
COST = Counter("aethergate_cost", "Cost charged, by model.", ["model"])
UPSTREAM_ERRORS = Counter(
    "aethergate_upstream_errors",
    "Failed upstream attempts, by endpoint and reason.",
    ["endpoint", "reason"],
)
FALLBACKS = Counter(
    "aethergate_fallbacks",
    "Requests handed to a fallback model, by the model that failed.",
    ["model"],
)
DEPLOYMENT_PICKS = Counter(
    "aethergate_deployment_picks",
    "Upstream attempts, by model and deployment (endpoint/upstream model).",
    ["model", "deployment"],
)
RETRIES = Counter(
    "aethergate_retries",
    "Retries on another deployment or model after a failed attempt, by model and the "
    "failure's reason.",
    ["model", "reason"],
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "aethergate_retry_budget_exhausted",
    "Retries not made because the model's retry budget was spent, by model.",
    ["model"],
)
BREAKER_TRIPS = Counter(
    "aethergate_breaker_trips",
    "Times a deployment's circuit opened, by deployment and cause (failures, "
    "probe_failed, check_failed, retry_after).",
    ["deployment", "cause"],
)
HEALTH_CHECKS = Counter(
    "aethergate_health_checks",
    "Health checks (GET of an endpoint's health path) of open deployments, by deployment "
    "and whether they passed.",
    ["deployment", "passed"],
)
BREAKER_STATE = Gauge(
    "aethergate_breaker_state",
    "A deployment's circuit as a process last changed it: 0 closed, 1 half-open, 2 open "
    "(the most open of the live processes).",
    ["deployment"],
    multiprocess_mode="livemax",
)
SHED = Counter(
    "aethergate_requests_shed",
    "/v1 requests refused with 503 because the process had AETHERGATE_MAX_CONCURRENT_REQUESTS "
    "in progress.",
)
LIMITER_DECISIONS = Counter(
    "aethergate_ratelimit_decisions",
    "Rate-limit decisions, by backend and result.",
    ["backend", "result"],
)
LIMITER_FALLBACKS = Counter(
    "aethergate_ratelimit_backend_fallbacks",
    "Times Redis became unreachable and in-process rate, token and concurrency limits and "
    "budgets took over.",
)
LEASES_LOCAL = Gauge(
    "aethergate_concurrency_leases_local",
    "Concurrency leases held in this process's own count (Redis not configured or down).",
    multiprocess_mode="livesum",
)
BUDGET_ALERTS = Counter(
    "aethergate_budget_alerts", "Soft budget limits crossed (one alert per budget and period)."
)
BUDGET_WEBHOOKS = Counter(
    "aethergate_budget_webhook_attempts", "Budget webhook deliveries tried, by result.", ["result"]
)
LOG_QUEUE = Gauge(
    "aethergate_log_queue_depth",
    "Request records waiting for the log writer.",
    multiprocess_mode="livesum",
)
LOG_QUEUE_BYTES = Gauge(
    "aethergate_log_queue_bytes",
    "Memory held by request records not yet stored (estimated), being written included.",
    multiprocess_mode="livesum",
)
LOG_BATCHES = Counter(
    "aethergate_log_batches",
    "Log-writer batches (and parts of split ones), by result: ok, failed (kept), split.",
    ["result"],
)
LOG_WRITTEN = Counter("aethergate_log_records_written", "Request records stored.")
LOG_DROPPED = Counter(
    "aethergate_log_records_dropped", "Request records dropped because the buffer was full."
)
LOG_REJECTED = Counter(
    "aethergate_log_records_rejected",
    "Request records set aside because the database refused them (the rest were stored).",
)
ACCOUNTING_FAULTS = Counter(
    "aethergate_accounting_faults",
    "Requests whose metrics or access-log line failed (their log record was still kept).",
)


_series: dict[tuple, object] = {}


def series(metric, *labels):
    """`metric.labels(*labels)`, looked up once: `labels()` costs microseconds a call.

    Callers pass only bounded label values (models that exist, status codes).
    """
    key = (metric, *labels)
    child = _series.get(key)
    if child is None:
        child = _series[key] = metric.labels(*labels)
    return child


def exposition() -> tuple[bytes, str]:
    """The current values in Prometheus' text format, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

"""Health, readiness, metrics and the JSON request log, on a live gateway (uvicorn in a thread)."""

import json
import logging

import httpx
import pytest
from django.core.management import call_command
from django.db import OperationalError
from prometheus_client.parser import text_string_to_metric_families

from aethergate.lib.jsonlog import JSONFormatter
from aethergate.testing import FakeClock, wait_for, wait_for_logs
from logs.services import write_batch
from proxy import ops
from proxy.tests.test_forwarding import HELLO

METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} from Prometheus text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(gateway) -> dict[tuple, float]:
    response = httpx.get(
        f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_it_reports_live_to_any_host(gateway):
    # A load balancer probes by IP: the host check of the admin must not apply.
    response = httpx.get(f"{gateway.base_url}/health/live", headers={"Host": "10.1.2.3:8000"})
    assert response.status_code == 200
    assert response.json() == {"status": "live"}


def test_it_reports_ready_with_the_database_up_and_migrated(gateway):
    response = httpx.get(f"{gateway.base_url}/health/ready", headers={"Host": "10.1.2.3"})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "database": "ok",
        "draining": False,
        "rate_limits": "local",
        "log_writer": "ok",
    }


def test_it_is_not_ready_while_draining(gateway):
    gateway.app.runtime.draining = True
    response = httpx.get(f"{gateway.base_url}/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["draining"] is True


def test_it_is_not_ready_with_migrations_pending(gateway, monkeypatch):
    monkeypatch.setattr(ops, "_migrated", False)
    call_command("migrate", "logs", "0001", verbosity=0)
    try:
        response = httpx.get(f"{gateway.base_url}/health/ready")
    finally:
        call_command("migrate", "logs", verbosity=0)
    assert response.status_code == 503
    assert response.json()["database"] == "migrations pending"
    assert httpx.get(f"{gateway.base_url}/health/ready").status_code == 200


def test_it_is_not_ready_while_the_log_writer_makes_no_progress_and_ready_after(
    gateway, settings, make_key, make_model, client_for
):
    settings.AETHERGATE_LOG_STALL_SECONDS = 60
    make_model()
    _, secret = make_key()
    writer, clock = gateway.app.runtime.writer, FakeClock()
    writer.clock = clock
    writer.retry_seconds = 0.01  # retried at once when the database is back

    def locked(batch):
        raise OperationalError("database is locked")

    writer.write = locked
    client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO)
    wait_for(lambda: writer.failed_batches >= 1, timeout=5)
    assert httpx.get(f"{gateway.base_url}/health/ready").status_code == 200
    clock.now += 61

    stalled = httpx.get(f"{gateway.base_url}/health/ready")
    writer.write = write_batch
    wait_for(lambda: writer.written >= 1, timeout=15)
    recovered = httpx.get(f"{gateway.base_url}/health/ready")

    assert stalled.status_code == 503
    assert stalled.json()["status"] == "unavailable"
    assert stalled.json()["log_writer"] == (
        "stalled: 1 records waiting, last success none since start"
    )
    assert stalled.json()["database"] == "ok"
    assert recovered.status_code == 200
    assert recovered.json()["log_writer"] == "ok"
    assert wait_for_logs(1)


def test_it_keeps_metrics_off_without_a_token(gateway, settings):
    settings.AETHERGATE_METRICS_TOKEN = ""
    response = httpx.get(f"{gateway.base_url}/metrics")
    assert response.status_code == 404
    assert "aethergate_" not in response.text


def test_it_hides_metrics_from_a_wrong_token(gateway, settings):
    settings.AETHERGATE_METRICS_TOKEN = METRICS_TOKEN
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        response = httpx.get(f"{gateway.base_url}/metrics", headers=headers)
        assert response.status_code == 404
        assert "aethergate_" not in response.text


def test_it_counts_requests_tokens_latency_and_the_log_writer(
    gateway, settings, make_key, make_model, client_for
):
    settings.AETHERGATE_METRICS_TOKEN = METRICS_TOKEN
    make_model(name="metered", price_in="0.001", price_out="0.002")
    _, secret = make_key()
    client = client_for(secret)
    before = scrape(gateway)
    answer = client.chat.completions.create(model="metered", messages=HELLO)
    with pytest.raises(Exception, match="does not exist"):
        client.chat.completions.create(model="no-such-model-x1", messages=HELLO)
    wait_for_logs(2)
    after = scrape(gateway)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    ok = {"model": "metered", "status": "200", "outcome": "ok"}
    assert grew("aethergate_requests_total", **ok) == 1
    # An unknown model name is not made into a label value (unbounded series).
    assert grew("aethergate_requests_total", model="", status="404", outcome="model_not_found")
    assert not any("no-such-model" in str(key) for key in after)
    assert grew("aethergate_tokens_total", model="metered", direction="input") == (
        answer.usage.prompt_tokens
    )
    assert grew("aethergate_tokens_total", model="metered", direction="output") == (
        answer.usage.completion_tokens
    )
    assert grew("aethergate_cost_total", model="metered") > 0
    assert grew("aethergate_request_duration_seconds_count", model="metered") == 1
    assert grew("aethergate_time_to_first_token_seconds_count", model="metered") == 1
    assert grew("aethergate_ratelimit_decisions_total", backend="local", result="allowed") >= 1
    assert grew("aethergate_log_records_written_total") >= 2
    assert grew("aethergate_log_batches_total", result="ok") >= 1
    assert ("aethergate_log_queue_depth", ()) in after


def test_it_counts_upstream_errors_and_fallbacks(
    gateway, settings, make_key, make_model, client_for
):
    settings.AETHERGATE_METRICS_TOKEN = METRICS_TOKEN
    backup = make_model(name="backup", upstream_name="echo")
    make_model(name="flaky", upstream_name="echo+fail=503", fallback=backup)
    _, secret = make_key()
    before = scrape(gateway)
    client_for(secret).chat.completions.create(model="flaky", messages=HELLO)
    after = scrape(gateway)
    labels = (("endpoint", "stand-in"), ("reason", "HTTP 503"))
    errors = ("aethergate_upstream_errors_total", labels)
    assert after[errors] - before.get(errors, 0) == 1
    fallbacks = ("aethergate_fallbacks_total", (("model", "flaky"),))
    assert after[fallbacks] - before.get(fallbacks, 0) == 1


def test_it_writes_a_json_request_log_line_without_secrets(
    gateway, settings, make_key, make_model, client_for, caplog
):
    settings.AETHERGATE_ACCESS_LOG = True
    make_model()
    key, secret = make_key()
    with caplog.at_level(logging.INFO, logger="aethergate.requests"):
        response = client_for(secret).chat.completions.with_raw_response.create(
            model="gpt-test", messages=HELLO
        )
        wait_for_logs(1)
    records = [r for r in caplog.records if r.name == "aethergate.requests"]
    assert len(records) == 1
    line = JSONFormatter().format(records[0])
    entry = json.loads(line)
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["model"] == "gpt-test"
    assert entry["status"] == 200
    assert entry["outcome"] == "ok"
    assert entry["key_prefix"] == key.prefix
    assert entry["level"] == "INFO"
    assert secret not in line
    assert key.digest not in line


def test_it_writes_no_request_log_lines_by_default(
    gateway, make_key, make_model, client_for, caplog
):
    make_model()
    _, secret = make_key()
    with caplog.at_level(logging.INFO, logger="aethergate.requests"):
        client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO)
    assert not [r for r in caplog.records if r.name == "aethergate.requests"]

"""Token limits, concurrency limits, budgets and `GET /v1/me`, through the real gateway (uvicorn
in a thread) in front of the upstream stand-in, observed from outside: answers, headers,
`RequestLog` rows, what reached the upstream, the webhook a soft limit calls.

Across processes (Redis shared) they are tested in test_limits_scale_out.py; the counters
themselves in aethergate/tests/test_leases_and_budgets.py and test_ratelimit.py.
"""

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.utils import timezone

from aethergate.testing import FakeClock, wait_for, wait_for_logs
from logs.models import BudgetAlert
from proxy.alerts import SIGNATURE_HEADER
from proxy.tests.test_admission import (
    CHAT_COST,
    PRICE_IN,
    PRICE_OUT,
    bearer,
    chat,
    error_of,
)

# "hi there" is estimated at 2 tokens (8 characters); the stand-in counts 5 in, 5 out.
ESTIMATED_INPUT = 2
USED = 10


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client


def runtime(gateway):
    return gateway.app.runtime


# --------------------------------------------------------------------------- token limits


def test_a_token_limit_reserves_input_and_max_tokens_and_settles_to_the_usage(
    gateway, http, make_model, make_key
):
    make_model()
    _, secret = make_key(rate_limit="100tok/m")
    reserved = ESTIMATED_INPUT + 20

    answers = [chat(http, secret, max_tokens=20) for _ in range(9)]

    # Each admitted request leaves its 10 used tokens: admitted while 10 n + 22 <= 100.
    assert [a.status_code for a in answers] == [200] * 8 + [429]
    first = answers[0].headers
    assert (first["x-ratelimit-limit-tokens"], first["x-ratelimit-remaining-tokens"]) == (
        "100",
        str(100 - reserved),
    )
    assert first["x-ratelimit-reset-tokens"].endswith("s")
    assert answers[7].headers["x-ratelimit-remaining-tokens"] == str(100 - 7 * USED - reserved)
    assert "x-ratelimit-limit-requests" not in first  # no request limit on this key
    error = error_of(answers[8], 429, "rate_limit_exceeded")
    assert error["type"] == "tokens"
    assert "100 tokens per window" in error["message"] and "this API key" in error["message"]
    assert 1 <= int(answers[8].headers["retry-after"]) <= 61
    rows = wait_for_logs(9)
    assert sum(r.input_units + r.output_units for r in rows) == 8 * USED
    assert rows[8].outcome == "rate_limited"


def test_a_request_larger_than_the_token_limit_is_refused_without_a_retry(
    http, upstream, make_model, make_key
):
    make_model()
    _, secret = make_key(rate_limit="100tok/m")

    refused = chat(http, secret, max_tokens=200)

    error = error_of(refused, 429, "rate_limit_exceeded")
    assert "Request too large" in error["message"] and "202" in error["message"]
    assert "retry-after" not in refused.headers
    assert upstream.received == []
    assert chat(http, secret, max_tokens=20).status_code == 200  # nothing was counted


def test_without_max_tokens_the_models_reserved_output_is_reserved(http, make_model, make_key):
    make_model(max_output_tokens=50)
    _, secret = make_key(rate_limit="100tok/m")

    answered = chat(http, secret)

    assert answered.headers["x-ratelimit-remaining-tokens"] == str(100 - ESTIMATED_INPUT - 50)


def test_a_models_and_an_endpoints_token_limits_hold_every_key(
    http, make_endpoint, make_model, make_key
):
    make_model(name="limited", tpm_limit=30)
    make_model(name="behind", endpoint=make_endpoint(name="small", tpm_limit=30))
    _, one = make_key(name="one")
    _, two = make_key(name="two")

    for model, tier in (("limited", "this model"), ("behind", "this model's endpoint")):
        # Reserved 2 + 10 each, settled to 10: 12 fits, then 10 + 12, then not 20 + 12.
        assert chat(http, one, model=model, max_tokens=10).status_code == 200
        assert chat(http, two, model=model, max_tokens=10).status_code == 200
        error = error_of(chat(http, one, model=model, max_tokens=10), 429, "rate_limit_exceeded")
        assert error["message"].startswith(f"Rate limit reached for {tier}: 30 tokens")


# --------------------------------------------------------------------------- concurrency


def slow_chat(http, secret):
    return chat(http, secret, model="slow", max_tokens=5)


def test_a_concurrency_limit_refuses_while_the_slots_are_taken_then_frees_them(
    gateway, http, upstream, make_model, make_key
):
    make_model(name="slow", upstream_name="echo+slow=0.6")
    _, secret = make_key(max_concurrent=2)

    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(slow_chat, http, secret) for _ in range(2)]
        upstream.wait_for_requests(2)
        refused = chat(http, secret, model="slow")
        done = [f.result() for f in running]

    assert [d.status_code for d in done] == [200, 200]
    error = error_of(refused, 429, "concurrency_limit_exceeded")
    assert "at most 2 at once" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert len(upstream.received) == 2  # the refused one never went upstream
    assert runtime(gateway).leases.local == {}
    assert chat(http, secret, model="slow").status_code == 200


def test_a_lease_is_given_back_when_the_client_leaves_or_the_upstream_fails(
    gateway, http, upstream, make_model, make_key
):
    make_model()
    make_model(name="long", upstream_name="echo+chunks=50+gap=0.05")
    make_model(name="broken", upstream_name="fail=500")
    _, secret = make_key(max_concurrent=1)

    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "long", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=bearer(secret),
    ) as streamed:
        lines = streamed.iter_lines()  # held: a dropped iterator closes the stream
        next(lines)  # the stream started: the slot is taken
        assert chat(http, secret).status_code == 429
    # The client left mid-stream.
    wait_for(lambda: runtime(gateway).leases.local == {}, what="the lease given back")
    assert chat(http, secret, model="broken").status_code >= 500
    assert runtime(gateway).leases.local == {}
    assert chat(http, secret).status_code == 200


# --------------------------------------------------------------------------- budgets


def test_a_hard_budget_refuses_what_its_reservation_would_take_past_it(
    gateway, http, upstream, make_model, make_key
):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    key, secret = make_key(budget=Decimal("0.05"), budget_period="day")
    # Reserved: 2 estimated input tokens and 10 output, 0.022; each costs 0.015.

    answers = [chat(http, secret, max_tokens=10) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 402]
    error = error_of(answers[2], 402, "budget_exceeded")
    assert error["type"] == "insufficient_quota"
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert "This API key's budget of $0.05 per day" in error["message"]
    assert f"It resets at {tomorrow}T00:00:00Z" in error["message"]
    assert len(upstream.received) == 2
    rows = wait_for_logs(3)
    assert sum(r.cost for r in rows) == 2 * CHAT_COST <= key.budget
    assert rows[2].outcome == "budget_exceeded"


def test_a_budget_starts_again_with_its_period(gateway, http, make_model, make_key):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    _, secret = make_key(budget=Decimal("0.02"), budget_period="day")
    # Reserved 0.012 each, costing 0.015: the second would pass 0.02.
    assert chat(http, secret, max_tokens=5).status_code == 200
    assert chat(http, secret, max_tokens=5).status_code == 402

    runtime(gateway).clock = FakeClock(timezone.now() + timedelta(days=1))

    assert chat(http, secret, max_tokens=5).status_code == 200


def test_a_users_budget_holds_all_of_their_keys(http, make_user, make_model, make_key):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    owner = make_user(username="team", budget=Decimal("0.04"), budget_period="month")
    _, laptop = make_key(owner=owner, name="laptop")
    _, server = make_key(owner=owner, name="server")

    assert chat(http, laptop, max_tokens=5).status_code == 200
    assert chat(http, server, max_tokens=5).status_code == 200
    refused = chat(http, laptop, max_tokens=5)

    error = error_of(refused, 402, "budget_exceeded")
    assert error["message"].startswith("Your account's budget of $0.04 per month")


def test_the_budget_counts_spend_already_in_the_database(http, make_model, make_key):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    _, secret = make_key(budget=Decimal("0.02"), budget_period="none")
    assert chat(http, secret, max_tokens=2).status_code == 200
    wait_for_logs(1)

    # A new gateway (a restart) reads the 0.015 spent from the rollups.
    assert chat(http, secret, max_tokens=2).status_code == 402


# --------------------------------------------------------------------------- soft limit


class Receiver:
    """A webhook receiver on loopback: records each POST; answers `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        self.posts: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.close()


SECRET = "webhook-secret-for-tests"


def valid_signature(headers: dict, body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(fields["v1"], expected.hexdigest())


def test_a_soft_limit_alerts_once_per_period_signed(
    gateway, http, settings, receiver, make_model, make_key
):
    settings.AETHERGATE_BUDGET_WEBHOOK_URL = receiver.url
    settings.AETHERGATE_BUDGET_WEBHOOK_SECRET = SECRET
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    key, secret = make_key(budget_soft=Decimal("0.02"), budget_period="day")

    assert all(chat(http, secret).status_code == 200 for _ in range(5))  # 0.075: never refused

    wait_for(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).exists())
    (alert,) = BudgetAlert.objects.all()
    ((headers, body),) = receiver.posts
    assert valid_signature(headers, body)
    sent = json.loads(body)
    assert (sent["type"], sent["owner_type"], sent["owner_id"], sent["period"]) == (
        "budget.soft_limit_reached",
        "api_key",
        key.pk,
        "day",
    )
    assert Decimal(sent["spent"]) >= Decimal("0.02") and sent["hard_limit"] is None
    assert (alert.scope, alert.owner_id, alert.attempts) == ("k", key.pk, 1)

    # The next day is a new period: one more alert.
    runtime(gateway).clock = FakeClock(timezone.now() + timedelta(days=1))
    assert all(chat(http, secret).status_code == 200 for _ in range(2))
    wait_for(lambda: len(receiver.posts) == 2)
    assert BudgetAlert.objects.count() == 2


def test_a_failed_webhook_is_retried_until_it_is_delivered(
    gateway, http, settings, make_model, make_key
):
    failing = Receiver(statuses=[500, 503])
    settings.AETHERGATE_BUDGET_WEBHOOK_URL = failing.url
    alerts = runtime_alerts(gateway)
    waits = []

    async def no_wait(seconds):
        waits.append(seconds)

    alerts.sleep = no_wait
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    _, secret = make_key(budget_soft=Decimal("0.01"))
    try:
        assert chat(http, secret).status_code == 200
        wait_for(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).exists())
    finally:
        failing.close()
    assert len(failing.posts) == 3
    assert waits == [2.0, 4.0]  # backoff doubling
    assert BudgetAlert.objects.get().attempts == 3


def runtime_alerts(gateway):
    # The gateway starts its runtime on its first request; make sure it exists.
    wait_for(lambda: gateway.app.runtime is not None, what="the runtime")
    return gateway.app.runtime.alerts


# --------------------------------------------------------------------------- /v1/me


def test_me_tells_a_key_its_limits_budgets_and_balance(http, make_user, make_model, make_key):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    owner = make_user(username="bob", balance=Decimal("5"), budget=Decimal("20"))
    _, secret = make_key(
        owner=owner,
        rate_limit="60/m,10000tok/m",
        max_concurrent=3,
        budget=Decimal("1.5"),
        budget_soft=Decimal("1"),
        budget_period="day",
    )
    assert chat(http, secret, max_tokens=5).status_code == 200
    wait_for_logs(1)

    me = http.get("/v1/me", headers=bearer(secret))

    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"] == "bob" and body["prefix"] == secret[:11]
    assert body["limits"] == {
        "requests": [{"limit": 60, "window_seconds": 60}],
        "tokens": [{"limit": 10000, "window_seconds": 60}],
        "concurrent": {"limit": 3, "in_use": 0},
    }
    key_budget, user_budget = body["budgets"]
    assert (key_budget["owner_type"], key_budget["period"]) == ("api_key", "day")
    assert Decimal(key_budget["spent"]) == CHAT_COST
    assert Decimal(key_budget["remaining"]) == Decimal("1.5") - CHAT_COST
    assert Decimal(key_budget["reserved"]) == 0
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert key_budget["resets_at"] == f"{tomorrow}T00:00:00Z"
    assert (user_budget["owner_type"], user_budget["period"], user_budget["limit"]) == (
        "user",
        "month",
        "20.0000000000",
    )
    assert Decimal(body["balance"]) == Decimal("5") - CHAT_COST


def test_me_needs_a_valid_key(http):
    error_of(http.get("/v1/me"), 401, "invalid_api_key")
    error_of(http.get("/v1/me", headers=bearer("ag-" + "x" * 40)), 401, "invalid_api_key")

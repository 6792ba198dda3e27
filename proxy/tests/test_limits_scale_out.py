"""Token limits, concurrency leases and budgets held across two gateway processes.

Two real gateway processes (uvicorn on loopback) share the test database and a private
redis-server; the upstream is the stand-in, which counts the requests it is answering at
once. What each test asserts is an effect: what reached the stand-in, the answers, the
request logs and the shared counters in Redis.

A request of `words(n)` is sized so that what the gateway reserves is exactly what the
stand-in reports using: its prompt of n words "abc" is estimated at n tokens (4 characters
a token), its max_tokens is n + 6, and the stand-in counts n + 3 tokens in and n + 3 out.
"""

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis

from aethergate.testing import wait_for, wait_for_logs
from logs.models import BudgetAlert, RequestLog
from proxy.alerts import FIRST_RETRY_SECONDS
from proxy.tests.processes import FaultProxy, ServerProcess, free_port
from proxy.tests.test_scale_out import METRICS_TOKEN, gateway_env

CHAT = "/v1/chat/completions"
# Every failure reaches the stand-in: no circuit breaker opens on the failing models.
NO_BREAKER = {
    "AETHERGATE_BREAKER_CONSECUTIVE_FAILURES": 1_000_000,
    "AETHERGATE_BREAKER_MIN_REQUESTS": 1_000_000,
}
WEBHOOK_SECRET = "webhook-secret-for-limit-tests-0123456789"


def words(n: int, model: str = "gpt-test", max_tokens: bool = True, **extra) -> dict:
    """A chat body whose reservation is 2n + 6 tokens, what the stand-in reports using
    (without `max_tokens`: n + the model's output tokens reserved)."""
    body = {"model": model, "messages": [{"role": "user", "content": " ".join(["abc"] * n)}]}
    if max_tokens:
        body["max_tokens"] = n + 6
    return body | extra


def post(url: str, secret: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{url}{CHAT}", headers={"Authorization": f"Bearer {secret}"}, json=body, timeout=20
    )


def error(response: httpx.Response) -> tuple[int, str, str]:
    found = response.json()["error"]
    return response.status_code, found["type"], found["code"]


def chat_rows(count: int, key, timeout: float = 10) -> list[RequestLog]:
    """The chat request logs of `key`, once there are `count`."""
    return wait_for_logs(count, timeout=timeout, api_key=key, path=CHAT)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def stays(condition, seconds: float) -> bool:
    """Whether `condition()` holds at every poll for `seconds`: for something that must
    not happen, such as a second webhook."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.05)
    return condition()


class Gateways:
    """Two gateway processes on the test database and one private Redis, under a prefix
    of their own; `redis` is a client of that Redis."""

    def __init__(self, redis_server):
        self.redis_server = redis_server
        self.prefix = f"t{os.getpid()}{time.monotonic_ns()}"
        self.processes: list[ServerProcess] = []
        self.redis = redis.Redis.from_url(redis_server.url)

    def start(self, **env) -> list[ServerProcess]:
        shared = {"REDIS_URL": self.redis_server.url, "AETHERGATE_REDIS_PREFIX": self.prefix}
        env = gateway_env(**(shared | NO_BREAKER | env))
        pair = [ServerProcess.uvicorn(free_port(), env) for _ in range(2)]
        self.processes += pair
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServerProcess.start, pair))
        return pair

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.redis.close()


@pytest.fixture
def gateways(redis_server, upstream):
    running = Gateways(redis_server)
    yield running
    running.stop()


# --------------------------------------------------------------------------- token limits


def send_both(processes, secret: str, body: dict, rounds: int, at_once: int) -> list:
    """`body` sent `rounds` times to each process in turn, `at_once` at a time: the answers,
    with the URL each went to ((url, answer) pairs)."""
    urls = [p.url for p in processes] * rounds
    with ThreadPoolExecutor(at_once) as pool:
        return list(zip(urls, pool.map(lambda url: post(url, secret, body), urls), strict=True))


def token_limited(tier, make_endpoint, make_model, make_key, **model_fields):
    """A key whose requests fall under a limit of 10000 tokens a minute on `tier` (its key's,
    its model's or its endpoint's): (key, its secret, the limit's window in Redis, less the
    prefix)."""
    endpoint = make_endpoint(tpm_limit=10000 if tier == "e" else None)
    model = make_model(endpoint=endpoint, tpm_limit=10000 if tier == "m" else None, **model_fields)
    key, secret = make_key(rate_limit="10000tok/m" if tier == "k" else "")
    owner = {"k": key, "m": model, "e": endpoint}[tier]
    return key, secret, f"rl:{tier}{owner.pk}:60t"


@pytest.mark.parametrize("tier", ["k", "m", "e"], ids=["key", "model", "endpoint"])
def test_a_token_limit_holds_across_two_processes_within_one_reservation(
    tier, transactional_db, gateways, make_endpoint, make_model, make_key, upstream
):
    key, secret, window = token_limited(tier, make_endpoint, make_model, make_key)
    processes = gateways.start()
    # Each reserves 500 tokens and uses 500: per-process counting would admit 40 (20000).
    sent = send_both(processes, secret, words(247), rounds=30, at_once=12)

    admitted = [a for _, a in sent if a.status_code == 200]
    assert all(a.json()["usage"]["total_tokens"] == 500 for a in admitted)
    refused = [a for _, a in sent if a.status_code != 200]
    assert refused
    for answer in refused:
        assert error(answer) == (429, "tokens", "rate_limit_exceeded")
        assert answer.headers["x-ratelimit-limit-tokens"] == "10000"
        assert answer.headers["x-ratelimit-remaining-tokens"] == "0"
        assert 0 < float(answer.headers["x-ratelimit-reset-tokens"].removesuffix("s")) <= 61
        assert 0 < int(answer.headers["retry-after"]) <= 61
    rows = chat_rows(60, key)
    used = sum(r.input_units + r.output_units for r in rows if r.status == 200)
    # Shared: the window held at most its limit and one reservation, and came near it.
    assert 10000 - 500 <= used <= 10000 + 500
    assert len(upstream.received) == len(admitted) == used // 500
    assert {url for url, a in sent if a.status_code == 200} == {p.url for p in processes}
    assert {url for url, a in sent if a.status_code == 429} == {p.url for p in processes}
    assert sum(map(int, gateways.redis.hvals(f"{gateways.prefix}:{window}"))) == used


def test_a_token_limit_is_passed_only_by_what_admitted_requests_used_beyond_their_reservation(
    transactional_db, gateways, make_endpoint, make_model, make_key, upstream
):
    # Without max_tokens a request reserves its input and the model's 10 output tokens
    # (257), and then uses 500: settling adds the 243 more to the shared window.
    key, secret, window = token_limited(
        "k", make_endpoint, make_model, make_key, max_output_tokens=10
    )
    processes = gateways.start()
    sent = send_both(processes, secret, words(247, max_tokens=False), rounds=30, at_once=12)

    assert {error(a) for _, a in sent if a.status_code != 200} == {
        (429, "tokens", "rate_limit_exceeded")
    }
    rows = chat_rows(60, key)
    admitted = [r for r in rows if r.status == 200]
    used = sum(r.input_units + r.output_units for r in admitted)
    beyond = sum(r.input_units + r.output_units - 257 for r in admitted)
    # At least 10000 whatever the timing (a refusal needs 9743 held); past it only by what
    # requests admitted while others were still running used beyond their reservation.
    assert 10000 <= used <= 10000 + beyond
    assert sum(map(int, gateways.redis.hvals(f"{gateways.prefix}:{window}"))) == used


# --------------------------------------------------------------------------- concurrency


KINDS = ("plain", "stream", "leave", "failing", "stuck")


async def mixed_requests(urls: list[str], secret: str, count: int, at_once: int) -> list[tuple]:
    """`count` requests of the KINDS in turn, over `urls` in turn, `at_once` at a time:
    (kind, status, error code) of each. A "leave" client reads the first event of its
    stream and goes away."""
    limit = asyncio.Semaphore(at_once)
    headers = {"Authorization": f"Bearer {secret}"}

    async def send(client, index: int) -> tuple[str, int, str]:
        kind, url = KINDS[index % len(KINDS)], urls[index // len(KINDS) % len(urls)]
        body = words(3, "stream" if kind == "leave" else kind, stream=kind in ("stream", "leave"))
        async with limit, client.stream("POST", f"{url}{CHAT}", json=body, headers=headers) as r:
            if r.status_code == 200 and kind == "leave":
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        return kind, 200, ""
            await r.aread()
        return kind, r.status_code, r.json()["error"]["code"] if r.status_code != 200 else ""

    pool = httpx.Limits(max_connections=at_once, max_keepalive_connections=at_once)
    async with httpx.AsyncClient(timeout=20, limits=pool) as client:
        return await asyncio.gather(*(send(client, i) for i in range(count)))


def test_a_concurrency_limit_of_2_holds_over_1000_mixed_requests_and_leaves_no_lease(
    transactional_db, gateways, make_model, make_endpoint, make_key, upstream
):
    # Every model answers from the stand-in under the name "cc", which it counts in flight.
    endpoint = make_endpoint()
    make_model("plain", "cc+slow=0.05", endpoint)
    make_model("stream", "cc+gap=0.01", endpoint)  # 20 chunks, about 0.2 s
    make_model("failing", "cc+slow=0.02+fail=503", make_endpoint("failing"))
    make_model("stuck", "cc+slow=5", make_endpoint("stuck", first_byte_timeout=0.3))
    key, secret = make_key(max_concurrent=2)
    first, second = gateways.start()

    results = asyncio.run(mixed_requests([first.url, second.url], secret, 1000, 24))

    assert upstream.peak("cc") == 2  # two at once, never three
    assert {(status, code) for _, status, code in results if status == 429} == {
        (429, "concurrency_limit_exceeded")
    }
    others = {(kind, status, code) for kind, status, code in results if status != 429}
    assert others == {
        ("plain", 200, ""),
        ("stream", 200, ""),
        ("leave", 200, ""),
        ("failing", 502, "upstream_error"),
        ("stuck", 504, "upstream_timeout"),
    }
    rows = chat_rows(1000, key, timeout=20)
    assert {r.outcome for r in rows} == {
        "ok",
        "rate_limited",
        "client_disconnected",
        "upstream_error",
        "upstream_timeout",
    }
    # Every lease was given back by the request that held it: none is left to expire
    # (leases live AETHERGATE_LEASE_SECONDS, 60 s, which this test is far shorter than).
    leases = f"{gateways.prefix}:cc:k{key.pk}"
    wait_for(lambda: gateways.redis.zcard(leases) == 0, timeout=2, what="every lease released")
    assert upstream.in_flight("cc") == 0
    for url in (first.url, second.url):
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {secret}"}).json()
        assert me["limits"]["concurrent"] == {"limit": 2, "in_use": 0}


def test_a_models_concurrency_limit_holds_for_requests_that_fall_back_to_it(
    transactional_db, gateways, make_model, make_endpoint, make_key, upstream
):
    backup = make_model("backup", "bk+slow=1", make_endpoint("backup"), max_concurrent=1)
    make_model("primary", "pr+fail=503", make_endpoint("primary"), fallback=backup)
    _, secret = make_key()
    processes = gateways.start()
    # Asked for by name, the backup is served one request at a time.
    sent = send_both(processes, secret, words(3, "backup"), rounds=2, at_once=4)
    assert sorted(a.status_code for _, a in sent) == [200, 429, 429, 429]
    assert upstream.peak("bk") == 1
    upstream.reset()

    # Reached as the primary's fallback, it must be too.
    sent = send_both(processes, secret, words(3, "primary"), rounds=2, at_once=4)
    assert upstream.peak("bk") == 1
    assert {error(a) for _, a in sent if a.status_code != 200} == {
        (429, "requests", "concurrency_limit_exceeded")
    }
    leases = f"{gateways.prefix}:cc:m{backup.pk}"
    wait_for(lambda: gateways.redis.zcard(leases) == 0, timeout=2, what="every lease released")


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("scope", ["k", "u"], ids=["key budget", "user budget"])
def test_a_budget_admits_exactly_what_it_fits_of_20_concurrent_requests(
    scope, transactional_db, gateways, make_model, make_user, make_key, upstream
):
    make_model(price_in="0.001", price_out="0.001")  # words(47): 100 tokens, 0.1
    budget = {"budget": Decimal("0.5"), "budget_period": "day"}
    user = make_user("carol", **(budget if scope == "u" else {}))
    # A user's budget holds all of its keys together.
    keys = [make_key(user, f"key{i}", **(budget if scope == "k" else {})) for i in range(2)]
    if scope == "k":
        keys = keys[:1]
    first, second = gateways.start()
    calls = [(url, secret) for url in (first.url, second.url) for _, secret in keys] * 10
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda call: post(*call, words(47)), calls[:20]))

    assert [a.status_code for a in answers].count(200) == 5
    assert len(upstream.received) == 5
    refusals = [error(a) for a in answers if a.status_code != 200]
    assert refusals == [(402, "insufficient_quota", "budget_exceeded")] * 15
    rows = wait_for_logs(20, timeout=10, user=user, path=CHAT)
    assert [r.cost for r in rows if r.status == 200] == [Decimal("0.1")] * 5
    assert sum(r.cost for r in rows) == Decimal("0.5")  # the hard limit, not a cent past it
    owner = keys[0][0] if scope == "k" else user
    found = gateways.redis.keys(f"{gateways.prefix}:bud:{scope}{owner.pk}:*")
    (counter,) = [name for name in found if not name.endswith(b":r")]  # not its reservations
    assert gateways.redis.hmget(counter, "spent", "reserved") == [b"5000000000", b"0"]
    for url in (first.url, second.url):  # both tell the key the same
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {keys[0][1]}"}).json()
        (seen,) = me["budgets"]
        assert seen["owner_type"] == ("api_key" if scope == "k" else "user")
        assert [Decimal(seen[f]) for f in ("limit", "spent", "reserved", "remaining")] == [
            Decimal("0.5"),
            Decimal("0.5"),
            0,
            0,
        ]


def test_a_budget_is_passed_only_by_what_admitted_requests_cost_beyond_their_reservation(
    transactional_db, gateways, make_model, make_key, upstream
):
    # Without max_tokens a request reserves its input and the model's 10 output tokens
    # (0.057), and then costs 0.1: 43 more than it reserved.
    make_model(price_in="0.001", price_out="0.001", max_output_tokens=10)
    reserved = Decimal("0.057")
    hard = 5 * reserved
    key, secret = make_key(budget=hard, budget_period="day")
    first, second = gateways.start()
    body = words(47, max_tokens=False)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda url: post(url, secret, body), [first.url, second.url] * 10))

    rows = chat_rows(20, key)
    admitted = [r for r in rows if r.status == 200]
    assert len(admitted) == [a.status_code for a in answers].count(200)
    assert {error(a) for a in answers if a.status_code != 200} == {
        (402, "insufficient_quota", "budget_exceeded")
    }
    spent = sum(r.cost for r in rows)
    bound = hard + sum(max(Decimal(0), r.cost - reserved) for r in admitted)
    assert hard < spent <= bound
    # At least three are admitted whatever the timing; at most the five that fit at once.
    assert 3 <= len(admitted) <= 5


# --------------------------------------------------------------------------- budget alerts


class Receiver:
    """A webhook receiver on loopback: records each POST (headers and body) and answers
    `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        self.posts: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/budget-alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def signed(headers: dict, body: bytes) -> bool:
    """Whether the signature header is HMAC-SHA256 of "<t>.<body>" under the secret."""
    stamp, digest = re.fullmatch(
        r"t=(\d+),v1=([0-9a-f]{64})", headers["X-AetherGate-Signature"]
    ).groups()
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), digest) and abs(time.time() - int(stamp)) < 60


def spend_past_the_soft_limit(gateways, make_model, owner, secrets, receiver):
    """20 requests of 0.1 through both processes with each of `secrets` in turn, on an
    owner alerting at 0.25: the processes."""
    make_model(price_in="0.001", price_out="0.001")
    owner.budget_soft, owner.budget_period = Decimal("0.25"), "day"
    owner.save()
    processes = gateways.start(
        AETHERGATE_BUDGET_WEBHOOK_URL=receiver.url,
        AETHERGATE_BUDGET_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    calls = [(p.url, secret) for p in processes for secret in secrets] * 10
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda call: post(*call, words(47)), calls[:20]))
    assert {a.status_code for a in answers} == {200}
    return processes


@pytest.mark.parametrize("scope", ["k", "u"], ids=["key budget", "user budget"])
def test_a_soft_limit_passed_through_both_processes_sends_one_signed_webhook(
    scope, transactional_db, gateways, make_model, make_user, make_key
):
    user = make_user("carol")
    keys = [make_key(user, f"key{i}") for i in range(2)]
    # A user's alert counts all of its keys together.
    owner, secrets = (keys[0][0], [keys[0][1]]) if scope == "k" else (user, [s for _, s in keys])
    with Receiver() as receiver:
        processes = spend_past_the_soft_limit(gateways, make_model, owner, secrets, receiver)
        wait_for(lambda: receiver.posts, timeout=5, what="the webhook")
        # Neither a second process nor a retry sends another (a retry would come after
        # FIRST_RETRY_SECONDS).
        assert stays(lambda: len(receiver.posts) == 1, FIRST_RETRY_SECONDS + 0.5)

    ((headers, body),) = receiver.posts
    assert signed(headers, body)
    sent = json.loads(body)
    assert (sent["type"], sent["owner_type"], sent["owner_id"], sent["owner"]) == (
        "budget.soft_limit_reached",
        "api_key" if scope == "k" else "user",
        owner.pk,
        owner.prefix if scope == "k" else owner.username,
    )
    assert sent["period"] == "day"
    assert Decimal(sent["soft_limit"]) == Decimal("0.25")
    assert Decimal(sent["spent"]) >= Decimal("0.25")
    (alert,) = BudgetAlert.objects.all()
    assert (alert.scope, alert.owner_id, alert.attempts) == (scope, owner.pk, 1)
    assert alert.delivered_at is not None
    assert alert.period_start.isoformat() == sent["period_start"]
    logs = "".join(p.log_text() for p in processes)
    assert logs.count("Budget alert:") == 1


def test_a_webhook_refused_once_is_retried_and_delivered_once(
    transactional_db, gateways, make_model, make_key
):
    key, secret = make_key()
    with Receiver(statuses=[500]) as receiver:
        processes = spend_past_the_soft_limit(gateways, make_model, key, [secret], receiver)
        wait_for(
            lambda: len(receiver.posts) == 2, timeout=FIRST_RETRY_SECONDS + 5, what="the retry"
        )
        wait_for(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).exists(), 2)

    (first, retried) = receiver.posts
    assert first[1] == retried[1]  # the same alert
    assert signed(*first) and signed(*retried)
    (alert,) = BudgetAlert.objects.all()
    assert alert.attempts == 2
    logs = "".join(p.log_text() for p in processes)
    assert "Budget webhook attempt 1 of 5 failed (HTTP 500)" in logs
    assert "attempt 2 of 5" not in logs


# --------------------------------------------------------------------------- a process crashing


def test_leases_and_reservations_are_renewed_while_their_process_runs_and_expire_if_it_dies(
    transactional_db, gateways, make_model, make_key, upstream
):
    make_model("held", "hold+slow=30", price_in="0.001", price_out="0.001")
    make_model(price_in="0.001", price_out="0.001")  # words(47): 0.1
    _, leased = make_key(name="leased", max_concurrent=1)
    _, budgeted = make_key(name="budgeted", budget=Decimal("0.1"), budget_period="day")
    lease_seconds = 1.5
    first, second = gateways.start(AETHERGATE_LEASE_SECONDS=lease_seconds)

    def refused(secret: str) -> tuple[int, str, str] | None:
        answer = post(second.url, secret, words(47))
        return None if answer.status_code == 200 else error(answer)

    with ThreadPoolExecutor(2) as pool:
        # Reserves 0.1 (47 tokens in, 53 out at most), held upstream for 30 s.
        for secret in (leased, budgeted):
            pool.submit(post, first.url, secret, words(47, "held"))
        wait_for(lambda: upstream.in_flight("hold") == 2, timeout=5, what="both held")
        # Renewed by the first while it runs: still held after twice their lifetime.
        assert stays(
            lambda: refused(leased) == (429, "requests", "concurrency_limit_exceeded"),
            2 * lease_seconds,
        )
        assert refused(budgeted) == (402, "insufficient_quota", "budget_exceeded")

        first.signal(signal.SIGKILL)  # gone without giving anything back
        # No longer renewed: they expire within their lifetime, and the key works again.
        wait_for(lambda: refused(leased) is None, timeout=2 * lease_seconds, what="the lease")
        wait_for(lambda: refused(budgeted) is None, timeout=2 * lease_seconds, what="the budget")
    assert refused(budgeted) == (402, "insufficient_quota", "budget_exceeded")  # 0.1 spent now


# --------------------------------------------------------------------------- Redis outage


def test_with_redis_stopped_token_limits_leases_and_budgets_hold_in_each_process(
    transactional_db, gateways, redis_server, make_model, make_key, upstream
):
    make_model()
    make_model("held", "hold+slow=1.5")
    make_model("priced", price_in="0.001", price_out="0.001")  # words(47): 0.1
    tokens_key, tokens_secret = make_key(name="tokens", rate_limit="300tok/m")  # 3 of words(47)
    _, one_secret = make_key(name="one", max_concurrent=1)
    _, budget_secret = make_key(name="budget", budget=Decimal("0.3"), budget_period="day")
    first, second = gateways.start()
    for process in (first, second):
        assert post(process.url, tokens_secret, words(47)).status_code == 200
    assert sum(map(int, gateways.redis.hvals(f"{gateways.prefix}:rl:k{tokens_key.pk}:60t"))) == 200

    redis_server.stop()
    try:
        # Each process counts on its own from zero, to the same limit: never unlimited.
        for process in (first, second):
            answers = [post(process.url, tokens_secret, words(47)) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429]
            assert error(answers[-1]) == (429, "tokens", "rate_limit_exceeded")

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, first.url, one_secret, words(3, "held"))
            wait_for(lambda: upstream.in_flight("hold") == 1, timeout=5, what="the held request")
            second_on_first = post(first.url, one_secret, words(3))
            # The other process has leases of its own while Redis is away.
            on_second = post(second.url, one_secret, words(3))
            assert held.result().status_code == 200
        assert error(second_on_first) == (429, "requests", "concurrency_limit_exceeded")
        assert on_second.status_code == 200
        assert post(first.url, one_secret, words(3)).status_code == 200  # given back locally

        # A budget is kept in each process, from what the database says was spent.
        priced = words(47, "priced")
        answers = [post(first.url, budget_secret, priced) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 402]
        assert error(answers[-1]) == (402, "insufficient_quota", "budget_exceeded")

        def spent_seen_by_second():
            me = httpx.get(
                f"{second.url}/v1/me", headers={"Authorization": f"Bearer {budget_secret}"}
            )
            return Decimal(me.json()["budgets"][0]["spent"]) == Decimal("0.3")

        # The first's charges are stored, and the second reads them at its next poll.
        wait_for(spent_seen_by_second, timeout=5, what="the spend polled by the second")
        assert error(post(second.url, budget_secret, priced)) == (
            402,
            "insufficient_quota",
            "budget_exceeded",
        )

        for process in (first, second):
            assert process.log_text().count("Redis is unreachable") == 1  # once an outage
            assert metric(process.url, "aethergate_ratelimit_backend_fallbacks_total") == 1
    finally:
        redis_server.restart()


def test_what_is_spent_while_redis_is_unreachable_still_counts_against_the_budget_after(
    transactional_db, gateways, redis_server, make_model, make_key
):
    # Redis unreachable, not restarted: its counters are still there when it is back.
    make_model(price_in="0.001", price_out="0.001")  # words(47): 0.1, reserved exactly
    key, secret = make_key(budget=Decimal("0.5"), budget_period="day")
    _, probe = make_key(name="probe", rate_limit="1000/m")
    with FaultProxy("127.0.0.1", redis_server.port) as cable:
        first, second = gateways.start(
            REDIS_URL=f"redis://127.0.0.1:{cable.port}/0", AETHERGATE_REDIS_RETRY_SECONDS=0.2
        )
        assert [post(first.url, secret, words(47)).status_code for _ in range(2)] == [200, 200]
        wait_for_logs(2, api_key=key)

        cable.cut()
        # Kept in the process meanwhile, from the database's spend and its own.
        assert [post(first.url, secret, words(47)).status_code for _ in range(2)] == [200, 200]
        assert httpx.get(f"{first.url}/health/ready").json()["rate_limits"] != "redis"
        cable.restore()

        # A request of another key (limited, unbudgeted) finds Redis back, on each process.
        def shared_again(url):
            post(url, probe, words(1))
            return httpx.get(f"{url}/health/ready").json()["rate_limits"] == "redis"

        for process in (first, second):
            wait_for(lambda url=process.url: shared_again(url), timeout=10, what="Redis back")
        # Shared again: 0.4 is spent, so one more fits in the 0.5, and no more, whichever
        # process asks.
        answers = [post(first.url, secret, words(47)) for _ in range(3)]
        answers.append(post(second.url, secret, words(47)))
    assert sum(r.cost for r in chat_rows(8, key)) <= Decimal("0.5")
    assert [a.status_code for a in answers] == [200, 402, 402, 402]

"""Several deployments per model, through the whole pipeline in process (`fakes.call`).

Each deployment is its own scripted upstream (`FakeUpstream`, by endpoint
name), so what reached which one is counted at the upstreams; the router's
clock, randomness and backoff wait are seams, so nothing here sleeps.
"""

import asyncio
import random
from collections import Counter

import aiohttp
import pytest

from proxy.health import BreakerPolicy
from proxy.routing import Router
from proxy.tests import fakes
from proxy.tests.fakes import FakeClock, FakeResponse, deployment_info, endpoint_info, model_info

POLICY = BreakerPolicy(
    window=30, min_requests=10, failure_ratio=0.5, consecutive=5, cooldown=5, max_cooldown=300
)


def deployment(name: str, **fields):
    return deployment_info("echo", endpoint_info(id=len(name), name=name), **fields)


def served_by(*deployments, **fields):
    return model_info("gpt-test", deployments=tuple(deployments), **fields)


class Routed:
    """A runtime whose model has `deployments`, with the router's seams held."""

    def __init__(self, *models, policy=POLICY, seed=1, **script):
        self.clock = FakeClock()
        self.waits: list[float] = []
        self.upstream = fakes.FakeUpstream(**script)
        self.rt = fakes.runtime(fakes.snapshot(models=list(models)), upstream=self.upstream)
        self.router = Router(policy=policy, clock=self.clock, rng=random.Random(seed))  # noqa: S311

        async def wait(seconds):
            self.waits.append(seconds)

        self.router.sleep = wait
        self.rt.router = self.router

    def chat(self, **fields):
        return fakes.chat(self.rt, **fields)

    def hits(self) -> Counter:
        """Requests that reached each upstream, by endpoint name."""
        return Counter(call.endpoint.name for call in self.upstream.calls)

    def state(self, d) -> str:
        return self.router.states([d.id])[d.id]["state"]


def down(call):
    return fakes.error_answer(503, "down")


def pattern(*fails: bool):
    """A script that fails or answers in turn, by `fails` (True: a 503), over and over."""
    turn = iter(range(10**9))

    def answer(call):
        if fails[next(turn) % len(fails)]:
            return down(call)
        return fakes.answer_ok(call)

    return answer


# --------------------------------------------------------------------------- balancing


def test_weights_are_respected_within_statistical_tolerance():
    a, b, c = deployment("a", weight=1), deployment("b", weight=2), deployment("c", weight=7)
    routed = Routed(served_by(a, b, c))
    n = 3000

    for _ in range(n):
        assert routed.chat().status == 200

    hits = routed.hits()
    for name, share in (("a", 0.1), ("b", 0.2), ("c", 0.7)):
        sigma = (n * share * (1 - share)) ** 0.5
        assert abs(hits[name] - n * share) < 4 * sigma, hits


def test_a_drained_deployment_or_a_lower_tier_gets_nothing_while_the_first_tier_serves():
    first = deployment("first")
    standby = deployment("standby", priority=1)
    routed = Routed(served_by(first, standby))

    for _ in range(20):
        routed.chat()

    assert routed.hits() == {"first": 20}


def test_a_standby_tier_takes_over_while_the_first_is_open_and_hands_back_after():
    first, standby = deployment("first"), deployment("standby", priority=1)
    routed = Routed(served_by(first, standby), first=down)

    answers = [routed.chat() for _ in range(8)]

    assert {a.status for a in answers} == {200}  # each failure was retried on the standby
    assert routed.state(first) == "open"  # after 5 consecutive failures
    assert routed.hits() == {"first": 5, "standby": 8}
    routed.upstream.script.pop("first")
    routed.clock.advance(5)
    for _ in range(3):
        routed.chat()
    assert routed.hits() == {"first": 8, "standby": 8}
    assert routed.state(first) == "closed"


def test_least_busy_sends_to_the_deployment_with_fewest_in_flight():
    a, b = deployment("a"), deployment("b")
    routed = Routed(served_by(a, b, strategy="least_busy"))
    routed.router.of(a).in_flight = 3  # three requests of a are still streaming

    for _ in range(5):
        routed.chat()

    assert routed.hits() == {"b": 5}


def test_fastest_sends_to_the_lowest_time_to_first_byte_and_remeasures_the_others():
    fast, slow = deployment("fast"), deployment("slow")
    routed = Routed(served_by(fast, slow, strategy="fastest"))
    routed.router.succeeded(fast, 0.05)
    routed.router.succeeded(slow, 0.9)

    for _ in range(5):
        routed.chat()
    assert routed.hits() == {"fast": 5}

    routed.clock.advance(31)  # both measurements are old now
    routed.chat()
    routed.chat()
    assert set(routed.hits()) == {"fast", "slow"}


# --------------------------------------------------------------------------- breaking


def test_a_single_failure_does_not_open_a_deployment():
    a, b = deployment("a"), deployment("b")
    routed = Routed(served_by(a, b), a=pattern(True, False, False, False, False, False))

    answers = [routed.chat() for _ in range(200)]

    assert {x.status for x in answers} == {200}
    assert routed.state(a) == "closed"
    assert routed.hits()["a"] > 60  # it kept its share


def test_a_deployment_failing_60_percent_is_opened_and_traffic_moves():
    a, b = deployment("a"), deployment("b")
    routed = Routed(served_by(a, b), a=pattern(True, False, True, False, True))  # 3 in 5

    for _ in range(40):
        assert routed.chat().status == 200  # a's failures were retried on b
        routed.clock.advance(0.5)  # two requests a second
    assert routed.state(a) == "open"
    before = routed.hits()["a"]

    for _ in range(20):
        routed.chat()

    assert routed.hits()["a"] == before  # none while open
    assert 10 <= before < 30


def test_after_the_cooldown_one_request_probes_and_a_success_closes():
    a, b = deployment("a"), deployment("b")
    routed = Routed(served_by(a, b), a=down)
    for _ in range(10):
        routed.chat()
    assert routed.state(a) == "open"
    routed.upstream.script.pop("a")  # a has recovered

    routed.clock.advance(4.9)
    routed.chat()
    assert routed.hits()["a"] == 5  # still open
    routed.clock.advance(0.1)
    assert routed.state(a) == "half_open"
    for _ in range(30):
        routed.chat()

    assert routed.state(a) == "closed"
    assert routed.hits()["a"] > 5


def test_a_failed_probe_reopens_with_a_doubled_cooldown():
    a, b = deployment("a"), deployment("b")
    routed = Routed(served_by(a, b), a=down)
    for _ in range(10):
        routed.chat()
    routed.clock.advance(5)

    for _ in range(10):
        routed.chat()  # one of them probes a, and fails

    assert routed.hits()["a"] == 6
    routed.clock.advance(9.9)
    assert routed.state(a) == "open"
    routed.clock.advance(0.1)
    assert routed.state(a) == "half_open"


def test_only_one_probe_goes_out_while_half_open():
    a = deployment("a")
    router = Router(policy=POLICY, clock=FakeClock())
    health = router.of(a)
    for _ in range(5):
        health.failed(router.clock())
    router.clock.advance(5)
    model = served_by(a)

    assert router.pick(model, set(), None) is a
    router.taken(model, a)
    assert router.pick(model, set(), None) is None  # the probe is out
    router.abandoned(a)  # its client left: no verdict
    assert router.pick(model, set(), None) is a


def test_a_429_with_retry_after_keeps_the_deployment_out_for_exactly_that_long():
    a, b = deployment("a"), deployment("b")
    limited = FakeResponse(429, [fakes.error_body("slow down")], headers={"Retry-After": "2"})
    routed = Routed(served_by(a, b), a=lambda call: limited)
    while not routed.hits()["a"]:
        assert routed.chat().status == 200  # retried on b
    routed.upstream.script.pop("a")

    routed.clock.advance(1.9)
    for _ in range(20):
        routed.chat()
    assert routed.hits()["a"] == 1
    routed.clock.advance(0.1)
    for _ in range(20):
        routed.chat()

    assert routed.hits()["a"] > 1
    assert routed.state(a) == "closed"


# --------------------------------------------------------------------------- retries


def test_in_a_total_outage_attempts_stay_within_the_retry_budget():
    deployments = [deployment(name) for name in ("a", "b", "c")]
    never_open = BreakerPolicy(min_requests=10**6, consecutive=10**6)
    routed = Routed(served_by(*deployments), policy=never_open, a=down, b=down, c=down)
    n = 200

    answers = [routed.chat() for _ in range(n)]

    assert {a.status for a in answers} == {502}
    attempts = sum(routed.hits().values())
    # Without a budget each request would try all three: 600 attempts.
    assert n < attempts <= n + max(routed.router.budget_min, 0.2 * n)
    assert len(routed.waits) == attempts - n  # each retry waited first


def test_retries_wait_a_jittered_exponential_backoff():
    router = Router(policy=POLICY, clock=FakeClock(), rng=random.Random(3))  # noqa: S311
    waits = []

    async def wait(seconds):
        waits.append(seconds)

    router.sleep = wait

    for retry in (1, 2, 3, 4, 5, 6, 7):
        asyncio.run(router.backoff(retry))

    caps = [min(router.backoff_max, router.backoff_base * 2 ** (n - 1)) for n in range(1, 8)]
    assert all(0 <= w <= cap for w, cap in zip(waits, caps, strict=True))
    assert len(set(waits)) == len(waits)  # jittered, not fixed


def test_a_request_retries_at_most_the_configured_number_of_times():
    deployments = [deployment(name) for name in "abcde"]
    routed = Routed(served_by(*deployments), **dict.fromkeys("abcde", down))

    answer = routed.chat()

    assert answer.status == 502
    assert sum(routed.hits().values()) == 1 + routed.router.max_retries


def test_nothing_is_retried_once_bytes_reached_the_client():
    a, b = deployment("a"), deployment("b")
    broken = aiohttp.ClientPayloadError("Response payload is not completed")

    def half_a_stream(call):
        first = fakes.sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}, done=False)
        return FakeResponse(200, [*first, broken])

    routed = Routed(served_by(a, b), a=half_a_stream, b=half_a_stream)

    answer = routed.chat(stream=True)

    assert answer.status == 200
    assert "error" in answer.frames[-1]
    assert sum(routed.hits().values()) == 1
    assert routed.waits == []


def test_a_context_length_refusal_goes_to_the_context_fallback_not_the_general_one():
    short = model_info(
        "gpt-test",
        endpoint=endpoint_info(name="short"),
        fallback="gpt-general",
        context_fallback="gpt-long",
    )
    long = model_info("gpt-long", endpoint=endpoint_info(id=2, name="long"))
    general = model_info("gpt-general", endpoint=endpoint_info(id=3, name="general"))
    too_long = fakes.error_answer(
        400,
        "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.",
        None,
    )
    routed = Routed(short, long, general, short=lambda call: too_long)

    answer = routed.chat()

    assert answer.status == 200
    assert routed.hits() == {"short": 1, "long": 1}
    (record,) = routed.rt.writer.records
    assert [a["model"] for a in record.attempts] == ["gpt-test", "gpt-long"]


def test_a_context_length_refusal_without_a_context_fallback_reaches_the_client():
    too_long = fakes.error_answer(400, "request exceeds the available context size", None)
    routed = Routed(model_info("gpt-test", fallback="gpt-other"), model_info("gpt-other"))
    routed.upstream.script["stand-in"] = lambda call: too_long

    answer = routed.chat()

    error = fakes.error_of(answer, 400, "context_length_exceeded")
    assert "context size" in error["message"]
    assert sum(routed.hits().values()) == 1


# --------------------------------------------------------------------------- affinity


def test_a_session_stays_on_one_deployment_while_healthy_and_moves_when_it_opens():
    deployments = {name: deployment(name) for name in "abc"}
    routed = Routed(served_by(*deployments.values()))
    session = [(b"x-session-id", b"agent-42")]

    def send(n):
        for _ in range(n):
            answer = fakes.call(
                routed.rt, "POST", "/v1/chat/completions",
                {"model": "gpt-test", "messages": fakes.HELLO},
                secret=fakes.SECRET, headers=session,
            )  # fmt: skip
            assert answer.status == 200

    send(30)
    (home,) = routed.hits()
    assert routed.hits()[home] == 30

    # Its circuit opens (other traffic failed there): the session moves, and stays.
    for _ in range(5):
        routed.router.failed(deployments[home])
    send(30)
    moved = routed.hits() - Counter({home: 30})
    (second,) = moved
    assert second != home and moved[second] == 30

    # A failed attempt moves it too: the retry that answered becomes its home.
    routed.upstream.script[second] = down
    send(30)
    latest = routed.hits() - Counter({home: 30, second: 30})
    assert latest[second] == 1  # the one failure
    (third,) = set(latest) - {second}
    assert third not in (home, second) and latest[third] == 30


def test_sessions_are_told_apart_by_key_and_body_fields():
    deployments = [deployment(name) for name in "abcdefgh"]
    routed = Routed(served_by(*deployments))

    homes = {}
    for user in ("u1", "u2", "u3", "u4"):
        for _ in range(5):
            routed.chat(user=user)
        homes[user] = routed.upstream.calls[-1].endpoint.name
        assert {c.endpoint.name for c in routed.upstream.calls[-5:]} == {homes[user]}
    for _ in range(5):
        routed.chat(prompt_cache_key="cache-1")
    assert len({c.endpoint.name for c in routed.upstream.calls[-5:]}) == 1


def test_the_affinity_table_is_bounded_and_forgets_idle_sessions():
    a, b = deployment("a"), deployment("b")
    router = Router(policy=POLICY, clock=FakeClock())
    router.affinity_size = 3
    for n in range(5):
        router.remember(("k", "m", f"s{n}"), a)
    assert list(router.affinity) == [("k", "m", "s2"), ("k", "m", "s3"), ("k", "m", "s4")]

    router.clock.advance(router.affinity_seconds + 1)
    model = served_by(b, a)
    router.rng = random.Random(0)  # noqa: S311
    picks = {router.pick(model, set(), ("k", "m", "s4")).id for _ in range(20)}
    assert picks == {a.id, b.id}  # forgotten: picked by weight again
    assert ("k", "m", "s4") not in router.affinity


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("99999", 3600.0), ("soon", None), ("", None)],
)
def test_retry_after_is_read_as_seconds_capped_at_an_hour(value, seconds):
    from proxy.forwarding import retry_after

    assert retry_after(value) == seconds


# --------------------------------------------------------------------------- health checks


def checked_pair(**script):
    a = deployment_info("echo", endpoint_info(id=1, name="a", health_path="/models"))
    b = deployment("b")
    routed = Routed(served_by(a, b), **script)
    return routed, a


def test_a_health_check_gates_the_return_of_an_open_deployment():
    routed, a = checked_pair(a=down)
    for _ in range(10):
        routed.chat()
    assert routed.state(a) == "open"
    routed.upstream.script.pop("a")
    routed.clock.advance(5)

    for _ in range(10):
        routed.chat()
    assert routed.hits()["a"] == 5  # cooled down, but not checked: still out
    assert routed.state(a) == "open"

    asyncio.run(routed.router.run_checks(routed.upstream))

    assert routed.upstream.checks == [("a", "/models")]  # a GET, never a completion
    assert routed.state(a) == "half_open"
    for _ in range(20):
        routed.chat()
    assert routed.state(a) == "closed"
    assert routed.hits()["a"] > 5


def test_a_failed_health_check_keeps_it_out_longer_without_spending_a_request():
    routed, a = checked_pair(a=down)
    for _ in range(10):
        routed.chat()
    routed.upstream.unhealthy.add("a")
    routed.clock.advance(5)

    asyncio.run(routed.router.run_checks(routed.upstream))
    asyncio.run(routed.router.run_checks(routed.upstream))  # not due again yet

    assert routed.upstream.checks == [("a", "/models")]
    assert routed.state(a) == "open"
    assert routed.hits()["a"] == 5  # no client request went to find out
    routed.clock.advance(9.9)
    asyncio.run(routed.router.run_checks(routed.upstream))
    assert len(routed.upstream.checks) == 1  # the cooldown doubled: 10 s
    routed.clock.advance(0.1)
    asyncio.run(routed.router.run_checks(routed.upstream))
    assert len(routed.upstream.checks) == 2


def test_a_deployment_without_a_health_check_is_never_checked():
    routed = Routed(served_by(deployment("a"), deployment("b")), a=down)
    for _ in range(10):
        routed.chat()
    routed.clock.advance(60)

    asyncio.run(routed.router.run_checks(routed.upstream))

    assert routed.upstream.checks == []


def test_failures_spread_over_more_than_the_window_never_open_it():
    health = Router(policy=POLICY, clock=FakeClock()).of(deployment("a"))

    for n in range(20):  # one failure every 31 s: each alone in its window
        health.failed(1000.0 + 31 * n)

    assert health.state == "closed"


def test_the_window_forgets_old_attempts():
    health = Router(policy=POLICY, clock=FakeClock()).of(deployment("a"))
    for n in range(9):
        health.succeeded(1000.0 + n, None)
    for n in range(4):
        health.failed(1010.0 + n)  # 4 of 13 failed, none in a row of 5

    assert health.window.counts(1013.0) == (13, 4)
    assert health.window.counts(1045.0) == (0, 0)
    assert health.state == "closed"
    health.failed(1046.0)  # one more, 30 s later: the run of four is over
    assert health.state == "closed"

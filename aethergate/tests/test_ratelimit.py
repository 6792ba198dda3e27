"""Rate-limit specs, and the limiter contract: every limiter, local or Redis, behaves alike.

The contract tests run against `LocalLimiter` and `RedisLimiter` (on a private
redis-server), both timed by one FakeClock. What only one of them does is
tested apart: the local limiter's memory here, Redis' sharing, expiry and
fallback in test_ratelimit_redis.py.
"""

import asyncio
import random
import secrets

import pytest
from django.core.exceptions import ValidationError

from aethergate.lib.ratelimit import (
    STEPS,
    LocalLimiter,
    Rate,
    RedisLimiter,
    parse_spec,
    validate_spec,
)
from aethergate.testing import FakeClock


@pytest.mark.parametrize(
    ("spec", "rates"),
    [
        ("", ()),
        ("60/m", (Rate(60, 60),)),
        ("1000/h", (Rate(1000, 3600),)),
        ("5000/d", (Rate(5000, 86400),)),
        ("10/s", (Rate(10, 1),)),
        (" 60/m , 1000/h,5000/d ", (Rate(60, 60), Rate(1000, 3600), Rate(5000, 86400))),
        ("60/minute,2/Day", (Rate(60, 60), Rate(2, 86400))),
        (
            "60/m, 100000tok/m, 2000000 tokens/d",
            (Rate(60, 60), Rate(100000, 60, True), Rate(2000000, 86400, True)),
        ),
    ],
)
def test_it_parses_valid_specs(spec, rates):
    assert parse_spec(spec) == rates
    validate_spec(spec)


@pytest.mark.parametrize(
    "spec",
    ["60", "60/", "/m", "60/x", "sixty/m", "60/m;10/h", "-1/m", "1.5/m", "10tok/x", "10tk/m"],
)
def test_it_rejects_malformed_specs_with_the_expected_form(spec):
    with pytest.raises(ValidationError) as error:
        validate_spec(spec)
    assert "COUNT/UNIT" in error.value.messages[0]


def test_it_rejects_a_zero_count():
    with pytest.raises(ValidationError, match="at least 1"):
        validate_spec("0/m")


# --------------------------------------------------------------------------- the contract


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["local", "redis"])
def hit(request, clock):
    """`hit(*checks)` → the Decision of one request on a new limiter, timed by `clock`."""
    if request.param == "local":
        limiter = LocalLimiter(clock)
    else:
        server = request.getfixturevalue("redis_server")
        prefix = "t" + secrets.token_hex(4)
        limiter = RedisLimiter(server.url, prefix=prefix, clock=clock)
    # One loop for the whole test: a Redis connection belongs to the loop that opened it.
    loop = asyncio.new_event_loop()

    def one(*checks):
        return loop.run_until_complete(limiter.hit(list(checks)))

    one.tokens = lambda n, *checks: loop.run_until_complete(limiter.hit(list(checks), n))
    one.settle = lambda decision, used: loop.run_until_complete(limiter.settle(decision, used))
    yield one
    loop.run_until_complete(limiter.close())
    loop.close()


def test_it_admits_exactly_the_limit_then_refuses_and_says_when_to_retry(hit):
    decisions = [hit(("k1", Rate(5, 60))) for _ in range(7)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert {(d.limit, d.scope) for d in decisions} == {(5, "k1")}
    refused = decisions[5]
    # In 1 s steps (1/60 of the window): up to one step later than an exact log.
    assert 60 <= refused.retry_after <= 61
    assert refused.reset == pytest.approx(refused.retry_after, abs=0.001)
    assert all(0 < d.reset <= 61 and d.retry_after == 0 for d in decisions[:5])


def test_the_window_slides_instead_of_resetting_at_a_boundary(hit, clock):
    rate = Rate(2, 60)
    hit(("k", rate))
    clock.advance(50)
    hit(("k", rate))

    clock.advance(15)  # 65 s after the first, 15 s after the second
    assert hit(("k", rate)).allowed
    refused = hit(("k", rate))

    assert not refused.allowed
    # When the request at +50 s leaves the window, counted in 1 s steps: 45 s, or one step more.
    assert 45 <= refused.retry_after <= 46


def test_a_whole_window_later_the_limit_is_available_again(hit, clock):
    rate = Rate(2, 1)
    first = [hit(("k1", rate)).allowed for _ in range(3)]
    clock.advance(1.05)  # the window and the step it began in
    later = [hit(("k1", rate)).allowed for _ in range(3)]

    assert first == later == [True, True, False]


def test_several_rates_on_one_scope_each_hold(hit, clock):
    per_second, per_minute = ("k", Rate(2, 1)), ("k", Rate(3, 60))

    assert [hit(per_second, per_minute).allowed for _ in range(3)] == [True, True, False]
    clock.advance(1.05)
    admitted = hit(per_second, per_minute)
    refused = hit(per_second, per_minute)

    assert (admitted.allowed, admitted.limit, admitted.remaining) == (True, 3, 0)
    # Refused by the minute: its retry is the minute's, not the second's.
    assert (refused.allowed, refused.limit) == (False, 3)
    assert 58 <= refused.retry_after <= 60


def test_a_refusal_by_one_tier_is_counted_by_none(hit):
    key, model = ("k", Rate(5, 60)), ("m", Rate(1, 60))

    assert hit(key, model).allowed
    refused = hit(key, model)
    assert not refused.allowed
    assert refused.scope == "m"

    remaining = [hit(key).remaining for _ in range(4)]
    assert remaining == [3, 2, 1, 0]
    assert not hit(key).allowed


def test_scopes_are_counted_apart(hit):
    rate = Rate(1, 60)

    assert hit(("k1", rate)).allowed
    assert not hit(("k1", rate)).allowed
    other = hit(("k2", rate))

    assert (other.allowed, other.scope, other.remaining) == (True, "k2", 0)


def test_it_reports_the_tightest_tier_for_headers(hit):
    decision = hit(("k", Rate(100, 60)), ("m", Rate(3, 60)))

    assert (decision.allowed, decision.scope, decision.limit, decision.remaining) == (
        True,
        "m",
        3,
        2,
    )


def test_no_tier_means_no_limit(hit):
    assert all(hit().allowed for _ in range(1000))


def test_it_never_admits_more_than_the_limit_in_any_window(hit, clock):
    # Random arrivals, checked against the exact definition: for each admitted
    # request, the admitted ones in the window ending at it.
    rng = random.Random(7)  # noqa: S311 -- reproducible arrivals, not secrets
    rate = Rate(10, 60)
    admitted = []
    for _ in range(1200):
        clock.advance(rng.expovariate(1 / 0.8))
        if hit(("k", rate)).allowed:
            admitted.append(clock.now)
    assert len(admitted) > 100  # the limiter did admit, across many windows
    for i, t in enumerate(admitted):
        in_window = [u for u in admitted[: i + 1] if u > t - rate.seconds]
        assert len(in_window) <= rate.limit


def test_a_token_rate_counts_the_reservation_and_refuses_what_does_not_fit(hit):
    rate = ("k", Rate(1000, 60, True))
    first = hit.tokens(600, rate)
    refused = hit.tokens(500, rate)
    fits = hit.tokens(400, rate)

    assert (first.allowed, first.token_limit, first.token_remaining) == (True, 1000, 400)
    assert first.reserved == 600 and len(first.held) == 1
    assert (refused.allowed, refused.tokens, refused.scope, refused.limit) == (
        False,
        True,
        "k",
        1000,
    )
    assert 0 < refused.retry_after <= 61
    assert (fits.allowed, fits.token_remaining) == (True, 0)


def test_settling_gives_back_what_was_reserved_and_not_used(hit):
    rate = ("k", Rate(1000, 60, True))
    decision = hit.tokens(900, rate)
    assert not hit.tokens(200, rate).allowed

    hit.settle(decision, 150)  # 750 of the 900 reserved go back

    after = hit.tokens(800, rate)
    assert (after.allowed, after.token_remaining) == (True, 50)


def test_settling_counts_more_than_was_reserved(hit):
    rate = ("k", Rate(1000, 60, True))
    decision = hit.tokens(100, rate)
    hit.settle(decision, 700)  # the answer was longer than its reservation

    assert not hit.tokens(400, rate).allowed
    assert hit.tokens(300, rate).token_remaining == 0


def test_a_request_larger_than_the_token_limit_is_refused_for_good(hit):
    refused = hit.tokens(1001, ("k", Rate(1000, 60, True)))

    assert (refused.allowed, refused.tokens, refused.retry_after) == (False, True, float("inf"))
    assert hit.tokens(1000, ("k", Rate(1000, 60, True))).allowed  # nothing was counted


def test_request_and_token_rates_of_one_scope_and_window_are_counted_apart(hit):
    requests, tokens = ("k", Rate(2, 60)), ("k", Rate(100, 60, True))

    first = hit.tokens(50, requests, tokens)
    second = hit.tokens(50, requests, tokens)

    assert (first.limit, first.remaining, first.token_limit, first.token_remaining) == (
        2,
        1,
        100,
        50,
    )
    assert (second.remaining, second.token_remaining) == (0, 0)
    refused = hit.tokens(1, requests, tokens)
    assert not refused.allowed


def test_a_token_refusal_counts_no_request(hit):
    requests, tokens = ("k", Rate(3, 60)), ("m", Rate(100, 60, True))
    assert hit.tokens(80, requests, tokens).allowed
    assert not hit.tokens(80, requests, tokens).allowed

    assert hit(requests).remaining == 1  # 3 - the first - this one


# --------------------------------------------------------------------------- the local limiter


def test_the_local_limiters_memory_per_window_does_not_grow_with_the_rate():
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    rate = Rate(10**9, 60)
    for _ in range(120_000):  # 1,000 a second for two minutes
        clock.advance(0.001)
        assert limiter._hit([("k", rate)]).allowed
    (window,) = limiter._windows.values()
    assert len(window.counts) <= STEPS + 1
    assert window.total <= 61_000

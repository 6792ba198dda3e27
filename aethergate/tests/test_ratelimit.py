"""Rate-limit spec parsing and the in-process limiter."""

import random

import pytest
from django.core.exceptions import ValidationError

from aethergate.lib.ratelimit import STEPS, LocalLimiter, Rate, parse_spec, validate_spec


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
    ],
)
def test_it_parses_valid_specs(spec, rates):
    assert parse_spec(spec) == rates
    validate_spec(spec)


@pytest.mark.parametrize(
    "spec", ["60", "60/", "/m", "60/x", "sixty/m", "60/m;10/h", "-1/m", "1.5/m"]
)
def test_it_rejects_malformed_specs_with_the_expected_form(spec):
    with pytest.raises(ValidationError) as error:
        validate_spec(spec)
    assert "COUNT/UNIT" in error.value.messages[0]


def test_it_rejects_a_zero_count():
    with pytest.raises(ValidationError, match="at least 1"):
        validate_spec("0/m")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def hit(limiter, *checks):
    return limiter._hit(list(checks))


def test_it_admits_exactly_the_limit_in_any_window():
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    rate = Rate(3, 60)

    admitted = [hit(limiter, ("k1", rate)).allowed for _ in range(5)]

    assert admitted == [True, True, True, False, False]


def test_the_window_slides_instead_of_resetting_at_a_boundary():
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    rate = Rate(2, 60)
    hit(limiter, ("k", rate))
    clock.now += 50
    hit(limiter, ("k", rate))

    clock.now += 15  # 65 s after the first, 15 s after the second
    assert hit(limiter, ("k", rate)).allowed
    refused = hit(limiter, ("k", rate))

    assert not refused.allowed
    # When the request at +50 s leaves the window, counted in 1 s steps: 45 s, or one step more.
    assert 45 <= refused.retry_after <= 46


def test_a_refusal_by_one_tier_is_counted_by_none():
    limiter = LocalLimiter(FakeClock())
    key, model = ("k", Rate(5, 60)), ("m", Rate(1, 60))

    assert hit(limiter, key, model).allowed
    refused = hit(limiter, key, model)
    assert not refused.allowed
    assert refused.scope == "m"

    remaining = [hit(limiter, key).remaining for _ in range(4)]
    assert remaining == [3, 2, 1, 0]
    assert not hit(limiter, key).allowed


def test_it_reports_the_tightest_tier_for_headers():
    limiter = LocalLimiter(FakeClock())

    decision = hit(limiter, ("k", Rate(100, 60)), ("m", Rate(3, 60)))

    assert (decision.limit, decision.remaining) == (3, 2)


def test_no_tier_means_no_limit():
    limiter = LocalLimiter(FakeClock())
    assert all(hit(limiter).allowed for _ in range(1000))


def test_it_never_admits_more_than_the_limit_in_any_window():
    # Random arrivals, checked against the exact definition: for each admitted
    # request, the admitted ones in the window ending at it.
    rng = random.Random(7)  # noqa: S311 -- reproducible arrivals, not secrets
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    rate = Rate(10, 60)
    admitted = []
    for _ in range(3000):
        clock.now += rng.expovariate(1 / 0.8)
        if hit(limiter, ("k", rate)).allowed:
            admitted.append(clock.now)
    assert len(admitted) > 100  # the limiter did admit, across many windows
    for i, t in enumerate(admitted):
        in_window = [u for u in admitted[: i + 1] if u > t - rate.seconds]
        assert len(in_window) <= rate.limit


def test_its_memory_per_window_does_not_grow_with_the_rate():
    clock = FakeClock()
    limiter = LocalLimiter(clock)
    rate = Rate(10**9, 60)
    for _ in range(120_000):  # 1,000 a second for two minutes
        clock.now += 0.001
        assert hit(limiter, ("k", rate)).allowed
    (window,) = limiter._windows.values()
    assert len(window.counts) <= STEPS + 1
    assert window.total <= 61_000

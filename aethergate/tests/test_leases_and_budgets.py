"""Concurrency leases and budget counters: the same contract in the process and in Redis,
and what only Redis does (sharing between processes, expiry of a crashed one's holds,
falling back when it is gone). Budget periods are tested at the end."""

import asyncio
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from aethergate.lib import periods
from aethergate.lib.budgets import Budgets, Hold, Refusal, Wanted
from aethergate.lib.leases import Lease, Leases
from aethergate.lib.ratelimit import SharedRedis
from aethergate.testing import FakeClock

D = Decimal


@pytest.fixture
def loop():
    # One loop per test: a Redis connection belongs to the loop that opened it.
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def clock():
    return FakeClock()


def shared_redis(request, clock) -> SharedRedis:
    server = request.getfixturevalue("redis_server")
    return SharedRedis(server.url, clock=clock)


@pytest.fixture(params=["local", "redis"])
def make(request, clock, loop):
    """`make(kind)` → a Leases or a Budgets (`kind`), in the process or on a private Redis
    under a fresh prefix; every one made in a test shares that prefix (two processes)."""
    prefix = "t" + secrets.token_hex(4)
    made = []

    def new(kind):
        shared = shared_redis(request, clock) if request.param == "redis" else None
        made.append(shared)
        return kind(shared, prefix=prefix, seconds=60)

    yield new
    for shared in made:
        if shared is not None:
            loop(shared.close())


# --------------------------------------------------------------------------- leases
def test_a_lease_is_granted_up_to_the_limit_then_refused(make, loop):
    leases = make(Leases)
    taken = [loop(leases.acquire([("k1", 2)])) for _ in range(3)]

    assert [isinstance(t, Lease) for t in taken] == [True, True, False]
    assert taken[2] == 0  # the index of the full scope
    assert loop(leases.in_use("k1")) == 2


def test_released_leases_free_their_slots_once(make, loop):
    leases = make(Leases)
    first = loop(leases.acquire([("k1", 1)]))
    loop(leases.release(first))
    loop(leases.release(first))  # a second release gives back nothing more

    second = loop(leases.acquire([("k1", 1)]))
    assert isinstance(second, Lease)
    assert loop(leases.in_use("k1")) == 1
    assert loop(leases.acquire([("k1", 1)])) == 0


def test_a_lease_is_taken_in_every_scope_or_in_none(make, loop):
    leases = make(Leases)
    assert isinstance(loop(leases.acquire([("m1", 1)])), Lease)

    refused = loop(leases.acquire([("k1", 5), ("m1", 1)]))

    assert refused == 1  # the model's scope is full
    assert loop(leases.in_use("k1")) == 0  # and the key's was not taken


@pytest.mark.parametrize("make", ["redis"], indirect=True)
def test_processes_share_leases_and_a_crashed_ones_expire(make, loop, clock):
    first, second = make(Leases), make(Leases)
    held = loop(first.acquire([("k1", 2)]))
    assert isinstance(loop(second.acquire([("k1", 2)])), Lease)
    assert loop(first.acquire([("k1", 2)])) == 0  # two in flight, across both

    clock.advance(40)
    loop(first.renew())  # the first process is alive; the second "crashed": no renewal
    clock.advance(30)  # 70 s after they were taken, 30 s after the renewal

    assert loop(first.in_use("k1")) == 1
    assert isinstance(loop(second.acquire([("k1", 2)])), Lease)
    loop(first.release(held))
    assert loop(first.in_use("k1")) == 1


def test_without_redis_leases_are_counted_in_the_process(redis_server, loop, clock):
    shared = SharedRedis(redis_server.url, clock=clock)
    leases = Leases(shared, prefix="t" + secrets.token_hex(4), seconds=60)
    redis_server.stop()
    try:
        lease = loop(leases.acquire([("k1", 1)]))
        assert isinstance(lease, Lease) and not lease.shared
        assert loop(leases.acquire([("k1", 1)])) == 0
        loop(leases.release(lease))
        assert leases.local == {}
    finally:
        redis_server.start()
        loop(shared.close())


# --------------------------------------------------------------------------- budgets
def wanted(hard, seed="0", key="k1:0"):
    return Wanted(key, None if hard is None else D(hard), D(seed), 3600)


def test_a_budget_admits_while_spent_plus_reserved_fits_the_hard_limit(make, loop):
    budgets = make(Budgets)
    holds = [loop(budgets.reserve([wanted("1.00", "0.40")], D("0.25"))) for _ in range(3)]

    assert [isinstance(h, Hold) for h in holds] == [True, True, False]
    refusal = holds[2]
    assert isinstance(refusal, Refusal)
    assert (refusal.index, refusal.spent, refusal.reserved) == (0, D("0.40"), D("0.50"))


def test_settling_replaces_the_reservation_by_the_cost(make, loop):
    budgets = make(Budgets)
    hold = loop(budgets.reserve([wanted("1.00")], D("0.90")))
    assert isinstance(loop(budgets.reserve([wanted("1.00")], D("0.20"))), Refusal)

    after = loop(budgets.settle(hold, D("0.10")))

    spent = D("0.10") if budgets.shared else None  # in the process, the caller counts spend
    assert after == [spent]
    seed = D("0.10")  # what the caller would now pass as spent, without Redis
    assert isinstance(loop(budgets.reserve([wanted("1.00", seed)], D("0.85"))), Hold)
    assert isinstance(loop(budgets.reserve([wanted("1.00", seed)], D("0.10"))), Refusal)


def test_a_budget_without_a_hard_limit_never_refuses(make, loop):
    budgets = make(Budgets)
    assert all(
        isinstance(loop(budgets.reserve([wanted(None, "99")], D("5"))), Hold) for _ in range(5)
    )


def test_a_reservation_counts_against_every_budget_or_none(make, loop):
    budgets = make(Budgets)
    user = wanted("1.00", key="u1:0")
    assert isinstance(loop(budgets.reserve([user], D("0.90"))), Hold)

    refused = loop(budgets.reserve([wanted("5.00"), user], D("0.20")))

    assert isinstance(refused, Refusal) and refused.index == 1
    assert loop(budgets.read("k1:0", D(0))) == (D(0), D(0))  # the key reserved nothing


@pytest.mark.parametrize("make", ["redis"], indirect=True)
def test_redis_seeds_a_budget_once_then_counts_every_process(make, loop):
    first, second = make(Budgets), make(Budgets)
    hold = loop(first.reserve([wanted("1.00", "0.30")], D("0.20")))
    # The second process read the database earlier: Redis's count stands.
    other = loop(second.reserve([wanted("1.00", "0.10")], D("0.20")))
    assert isinstance(other, Hold)

    assert loop(first.settle(hold, D("0.15"))) == [D("0.45")]
    assert loop(second.settle(other, D("0.05"))) == [D("0.50")]
    assert loop(first.read("k1:0", D(0))) == (D("0.50"), D(0))


@pytest.mark.parametrize("make", ["redis"], indirect=True)
def test_a_budget_counter_is_raised_to_what_the_database_knows(make, loop):
    budgets = make(Budgets)
    hold = loop(budgets.reserve([wanted("1.00", "0.20")], D("0.10")))
    loop(budgets.settle(hold, D("0.10")))  # Redis: 0.30

    # Spend settled while Redis was unreachable reached the database: 0.80 in all.
    refused = loop(budgets.reserve([wanted("1.00", "0.80")], D("0.25")))

    assert isinstance(refused, Refusal) and refused.spent == D("0.80")
    assert loop(budgets.read("k1:0", D(0)))[0] == D("0.80")


@pytest.mark.parametrize("make", ["redis"], indirect=True)
def test_a_crashed_processs_reservations_expire_and_live_ones_are_renewed(make, loop, clock):
    alive, crashed = make(Budgets), make(Budgets)
    kept = loop(alive.reserve([wanted("1.00")], D("0.40")))
    loop(crashed.reserve([wanted("1.00")], D("0.50")))
    assert isinstance(loop(alive.reserve([wanted("1.00")], D("0.20"))), Refusal)

    clock.advance(40)
    loop(alive.renew())
    clock.advance(30)

    assert isinstance(loop(alive.reserve([wanted("1.00")], D("0.55"))), Hold)
    assert isinstance(kept, Hold)
    assert loop(alive.read("k1:0", D(0)))[1] == D("0.95")  # 0.40 renewed + 0.55


def test_amounts_keep_the_money_columns_ten_decimals(make, loop):
    budgets = make(Budgets)
    hold = loop(budgets.reserve([wanted("0.0000000003")], D("0.0000000001")))
    assert isinstance(hold, Hold)
    loop(budgets.settle(hold, D("0.0000000002")))
    if budgets.shared:
        assert loop(budgets.read("k1:0", D(0))) == (D("0.0000000002"), D(0))


# --------------------------------------------------------------------------- periods
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("period", "now", "zone", "start", "end"),
    [
        ("day", datetime(2026, 12, 1, 22, 30, tzinfo=UTC), UTC, (2026, 12, 1, 0), (2026, 12, 2, 0)),
        # 23:30 UTC is already the 2nd in Berlin (UTC+1 in winter).
        (
            "day",
            datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
            BERLIN,
            (2026, 12, 1, 23),
            (2026, 12, 2, 23),
        ),
        # The day the clocks go forward lasts 23 hours.
        (
            "day",
            datetime(2026, 3, 29, 12, tzinfo=UTC),
            BERLIN,
            (2026, 3, 28, 23),
            (2026, 3, 29, 22),
        ),
        # Weeks start on Monday: Tuesday 1 December 2026 is in the week of Monday 30 November.
        ("week", datetime(2026, 12, 1, 12, tzinfo=UTC), UTC, (2026, 11, 30, 0), (2026, 12, 7, 0)),
        (
            "month",
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            UTC,
            (2026, 12, 1, 0),
            (2027, 1, 1, 0),
        ),
        ("month", datetime(2027, 2, 10, tzinfo=UTC), UTC, (2027, 2, 1, 0), (2027, 3, 1, 0)),
    ],
)
def test_a_period_runs_from_midnight_in_the_budget_zone(period, now, zone, start, end):
    assert periods.bounds(period, now, zone) == (
        datetime(*start, tzinfo=UTC),
        datetime(*end, tzinfo=UTC),
    )


def test_a_budget_without_a_period_has_one_that_never_ends():
    assert periods.bounds("none", datetime(2026, 12, 1, tzinfo=UTC), UTC) == (periods.EVER, None)


def test_an_unknown_period_is_an_error():
    with pytest.raises(ValueError, match="fortnight"):
        periods.bounds("fortnight", datetime(2026, 12, 1, tzinfo=UTC), UTC)

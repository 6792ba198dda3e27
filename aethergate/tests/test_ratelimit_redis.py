"""The Redis rate limiter: shared sliding windows, TTLs, and the local fallback when Redis is down.

Each test talks to a private redis-server, which some tests stop and restart.
"""

import asyncio
import secrets

import pytest
import redis

from aethergate.lib import metrics
from aethergate.lib.ratelimit import Rate, RedisLimiter


@pytest.fixture
def prefix():
    return "t" + secrets.token_hex(4)


def counted(client, key: str) -> int:
    """Requests a window's hash holds (one field per step)."""
    return sum(int(count) for count in client.hvals(key))


def run(coro):
    return asyncio.run(coro)


async def hits(url, prefix, checks, count):
    limiter = RedisLimiter(url, prefix=prefix)
    try:
        return [await limiter.hit(checks) for _ in range(count)]
    finally:
        await limiter.close()


def test_it_admits_exactly_the_limit_and_says_when_to_retry(redis_server, prefix):
    decisions = run(hits(redis_server.url, prefix, [("k1", Rate(5, 60))], 7))
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert refused.limit == 5
    assert refused.scope == "k1"
    # In 1 s steps (1/60 of the window): up to one step later than an exact log.
    assert 59 < refused.retry_after <= 61


def test_two_limiters_share_one_window(redis_server, prefix):
    # Two processes are two limiters on one Redis: together they get the limit, not twice it.
    async def both():
        first = RedisLimiter(redis_server.url, prefix=prefix)
        second = RedisLimiter(redis_server.url, prefix=prefix)
        try:
            checks = [("k1", Rate(10, 60))]
            results = await asyncio.gather(
                *(limiter.hit(checks) for _ in range(10) for limiter in (first, second))
            )
        finally:
            await first.close()
            await second.close()
        return results

    assert sum(d.allowed for d in run(both())) == 10


def test_a_request_refused_by_one_tier_is_counted_by_none(redis_server, prefix):
    checks = [("k1", Rate(10, 60)), ("m1", Rate(2, 60))]
    decisions = run(hits(redis_server.url, prefix, checks, 4))
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert decisions[2].scope == "m1"
    # The key tier counted only the two admitted requests.
    key_only = run(hits(redis_server.url, prefix, [("k1", Rate(10, 60))], 1))[0]
    assert key_only.remaining == 10 - 2 - 1


def test_it_reports_the_tightest_tier_when_admitted(redis_server, prefix):
    checks = [("k1", Rate(100, 60)), ("e1", Rate(3, 60))]
    decision = run(hits(redis_server.url, prefix, checks, 1))[0]
    assert (decision.scope, decision.limit, decision.remaining) == ("e1", 3, 2)


def test_it_slides_the_window_rather_than_resetting_it(redis_server, prefix):
    async def scenario():
        limiter = RedisLimiter(redis_server.url, prefix=prefix)
        checks = [("k1", Rate(2, 1))]
        try:
            first = [await limiter.hit(checks) for _ in range(3)]
            await asyncio.sleep(1.05)
            later = [await limiter.hit(checks) for _ in range(3)]
        finally:
            await limiter.close()
        return first, later

    first, later = run(scenario())
    assert [d.allowed for d in first] == [True, True, False]
    assert [d.allowed for d in later] == [True, True, False]


def test_every_key_it_writes_expires(redis_server, prefix):
    checks = [("k1", Rate(5, 60)), ("m1", Rate(100, 86400))]
    run(hits(redis_server.url, prefix, checks, 3))
    client = redis.Redis.from_url(redis_server.url)
    keys = client.keys(f"{prefix}:*")
    assert sorted(keys) == [f"{prefix}:rl:k1:60".encode(), f"{prefix}:rl:m1:86400".encode()]
    ttls = {key: client.pttl(key) for key in keys}
    # The window and the step it began in, and one step of margin.
    assert 60_000 < ttls[f"{prefix}:rl:k1:60".encode()] <= 62_000
    assert 86_400_000 < ttls[f"{prefix}:rl:m1:86400".encode()] <= 86_400_000 * 62 // 60
    client.close()


def test_it_falls_back_to_local_limits_while_redis_is_down_and_recovers(redis_server, prefix):
    checks = [("k1", Rate(3, 60))]
    fallbacks_before = metrics.LIMITER_FALLBACKS._value.get()

    async def scenario():
        limiter = RedisLimiter(redis_server.url, prefix=prefix)
        limiter.retry_seconds = 0.2
        try:
            shared = [await limiter.hit(checks) for _ in range(2)]
            redis_server.stop()
            # Never unlimited: the local limiter holds the same limit.
            local = [await limiter.hit(checks) for _ in range(5)]
            down = limiter.down_until > 0
            redis_server.restart()  # starts empty
            await asyncio.sleep(0.3)
            resumed = [await limiter.hit(checks) for _ in range(4)]
            recovered = limiter.down_until == 0
        finally:
            await limiter.close()
        return shared, local, down, resumed, recovered

    shared, local, down, resumed, recovered = run(scenario())
    assert all(d.allowed for d in shared)
    assert [d.allowed for d in local] == [True, True, True, False, False]
    assert down
    assert recovered
    # Back on Redis: its fresh window admits 3, and the key is in Redis again.
    assert [d.allowed for d in resumed] == [True, True, True, False]
    client = redis.Redis.from_url(redis_server.url)
    assert counted(client, f"{prefix}:rl:k1:60") == 3
    client.close()
    assert metrics.LIMITER_FALLBACKS._value.get() == fallbacks_before + 1


def test_its_memory_per_window_does_not_grow_with_the_rate(redis_server, prefix):
    async def scenario():
        limiter = RedisLimiter(redis_server.url, prefix=prefix)
        checks = [("busy", Rate(10**6, 1))]
        try:
            started = asyncio.get_running_loop().time()
            hits = 0
            while asyncio.get_running_loop().time() - started < 1.5:
                assert (await limiter.hit(checks)).allowed
                hits += 1
        finally:
            await limiter.close()
        return hits

    hits = run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    assert hits > 200
    # One field per step of 1/60 s, never one per request.
    assert client.hlen(f"{prefix}:rl:busy:1") <= 61 < hits
    client.close()

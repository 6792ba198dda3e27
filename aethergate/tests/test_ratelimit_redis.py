"""What only the Redis limiter does: windows shared by processes, keys that expire, the local
fallback while Redis is down. The behaviour every limiter shares is test_ratelimit.py's contract.

Each test talks to a private redis-server, which some tests stop and restart.
"""

import asyncio
import secrets

import pytest
import redis

from aethergate.lib import metrics
from aethergate.lib.ratelimit import Rate, RedisLimiter
from aethergate.testing import FakeClock


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
    clock = FakeClock()

    async def scenario():
        limiter = RedisLimiter(redis_server.url, prefix=prefix, retry_seconds=5, clock=clock)
        try:
            shared = [await limiter.hit(checks) for _ in range(2)]
            redis_server.stop()
            # Never unlimited: the local limiter holds the same limit.
            local = [await limiter.hit(checks) for _ in range(5)]
            down = limiter.state
            redis_server.restart()  # starts empty
            clock.advance(4.9)
            still_local = await limiter.hit(checks)  # Redis is not tried before retry_seconds
            clock.advance(0.1)
            resumed = [await limiter.hit(checks) for _ in range(4)]
            recovered = limiter.state
        finally:
            await limiter.close()
        return shared, local, down, still_local, resumed, recovered

    shared, local, down, still_local, resumed, recovered = run(scenario())
    assert all(d.allowed for d in shared)
    assert [d.allowed for d in local] == [True, True, True, False, False]
    assert down == "local (Redis unreachable)"
    assert not still_local.allowed
    assert recovered == "redis"
    # Back on Redis: its fresh window admits 3, and the key is in Redis again.
    assert [d.allowed for d in resumed] == [True, True, True, False]
    client = redis.Redis.from_url(redis_server.url)
    assert counted(client, f"{prefix}:rl:k1:60") == 3
    client.close()
    assert metrics.LIMITER_FALLBACKS._value.get() == fallbacks_before + 1


def test_its_memory_per_window_does_not_grow_with_the_rate(redis_server, prefix):
    clock = FakeClock()
    checks = [("busy", Rate(10**6, 1))]

    async def scenario():
        limiter = RedisLimiter(redis_server.url, prefix=prefix, clock=clock)
        try:
            for _ in range(1000):  # 500 a second for two windows
                clock.advance(0.002)
                assert (await limiter.hit(checks)).allowed
        finally:
            await limiter.close()

    run(scenario())
    client = redis.Redis.from_url(redis_server.url)
    # One field per step of 1/60 s, never one per request.
    assert client.hlen(f"{prefix}:rl:busy:1") <= 61
    client.close()

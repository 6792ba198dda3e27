"""Rate limits: specs (`"60/m"`, `"1000/h"`, `"5000/d"`, comma-separated) and limiters."""

import itertools
import logging
import re
import secrets
import time
from collections import deque
from typing import NamedTuple

import redis.asyncio as aioredis
from django.core.exceptions import ValidationError
from redis.exceptions import RedisError

from aethergate.lib import metrics

log = logging.getLogger(__name__)

UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


class Rate(NamedTuple):
    """At most `limit` requests in any window of `seconds`."""

    limit: int
    seconds: int


def parse_spec(spec: str) -> tuple[Rate, ...]:
    """Parse a spec into rates; an empty spec means no limit. Raises ValueError."""
    rates = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        match = _RATE.match(part.lower())
        if not match or match[2] not in UNIT_SECONDS:
            raise ValueError(
                f'"{part}" is not a rate: write COUNT/UNIT with UNIT one of s, m, h, d '
                '(for example "60/m" or "60/m,1000/d")'
            )
        if int(match[1]) < 1:
            raise ValueError(f'"{part}" allows no request: the count must be at least 1')
        rates.append(Rate(int(match[1]), UNIT_SECONDS[match[2]]))
    return tuple(rates)


def validate_spec(spec: str) -> None:
    """Django validator for spec fields."""
    try:
        parse_spec(spec)
    except ValueError as exc:
        raise ValidationError(str(exc), code="invalid_rate_limit") from None


class Decision(NamedTuple):
    """The outcome of one admission across every tier of a request.

    `limit`, `remaining` and `reset` (seconds) describe the tightest tier, for
    the `x-ratelimit-*` headers; `retry_after` is set when refused.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0
    scope: str = ""


class LocalLimiter:
    """Sliding-log limiter in this process: exact "at most N in any window".

    `hit` is all-or-nothing across tiers: a request refused by one tier is
    counted by none. The event loop runs it without awaiting, so it is atomic.
    `clock` is swappable for tests.
    """

    backend = "local"

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._logs: dict[tuple[str, int], deque] = {}
        self._hits = 0

    async def hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        decision = self._hit(checks)
        metrics.series(metrics.LIMITER_DECISIONS, "local", _result(decision)).inc()
        return decision

    async def close(self) -> None:
        pass

    def _hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        now = self.clock()
        tightest = Decision(True, 0, 2**31, 0.0)
        refused = None
        logs = []
        for scope, rate in checks:
            log = self._logs.get((scope, rate.seconds))
            if log is None:
                log = self._logs[(scope, rate.seconds)] = deque()
            horizon = now - rate.seconds
            while log and log[0] <= horizon:
                log.popleft()
            logs.append(log)
            remaining = rate.limit - len(log)
            reset = (log[0] + rate.seconds - now) if log else float(rate.seconds)
            if remaining <= 0:
                retry = log[len(log) - rate.limit] + rate.seconds - now
                if refused is None or retry > refused.retry_after:
                    refused = Decision(False, rate.limit, 0, reset, retry, scope)
            elif remaining - 1 < tightest.remaining:
                tightest = Decision(True, rate.limit, remaining - 1, reset, 0.0, scope)
        if refused is not None:
            return refused
        for log in logs:
            log.append(now)
        self._hits += 1
        if self._hits % 10_000 == 0:
            self._sweep(now)
        return tightest

    def _sweep(self, now: float) -> None:
        """Forget windows with no request left in them, so memory tracks activity."""
        for key in [k for k, log in self._logs.items() if not log or log[-1] <= now - k[1]]:
            del self._logs[key]


# The same sliding log as LocalLimiter, in one sorted set per (scope, window),
# decided for every tier of a request in one atomic round trip. Times are the
# Redis server's (in ms), so hosts with skewed clocks still share one window.
# Returns {allowed, tier index, remaining, reset ms, retry-after ms}.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local refused, best = nil, nil
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1]) * 1000
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  local reset = window
  if count > 0 then
    reset = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]) + window - now
  end
  if count >= limit then
    local nth = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local retry = tonumber(nth[2]) + window - now
    if refused == nil or retry > refused[5] then refused = {0, i, 0, reset, retry} end
  elseif best == nil or limit - count - 1 < best[3] then
    best = {1, i, limit - count - 1, reset, 0}
  end
end
if refused then return refused end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]) * 1000)
end
return best or {1, 0, 0, 0, 0}
"""


class RedisLimiter:
    """Limits shared by every process that uses the same Redis.

    When Redis cannot be reached, requests are decided by a LocalLimiter
    (per-process limits, never none) with a warning and a metric; Redis is
    tried again after `retry_seconds` and takes over as soon as it answers.
    """

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "aethergate", timeout: float = 0.5):
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.script = self.redis.register_script(_SLIDING_LOG)
        self.prefix = f"{prefix}:rl:"
        self.local = LocalLimiter()
        self.retry_seconds = 1.0
        self.down_until = 0.0
        # Sorted-set members must be unique per request across processes.
        self._member_prefix = secrets.token_hex(6)
        self._counter = itertools.count()

    async def hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        if not checks:
            return Decision(True, 0, 2**31, 0.0)
        if time.monotonic() < self.down_until:
            return await self.local.hit(checks)
        keys = [f"{self.prefix}{scope}:{rate.seconds}" for scope, rate in checks]
        args = [f"{self._member_prefix}:{next(self._counter)}"]
        for _, rate in checks:
            args += [rate.limit, rate.seconds]
        try:
            allowed, tier, remaining, reset, retry = await self.script(keys, args)
        except (RedisError, OSError) as exc:
            if self.down_until == 0.0:
                log.warning(
                    "Redis is unreachable (%s): rate limits are per process until it is back",
                    type(exc).__name__,
                )
                metrics.LIMITER_FALLBACKS.inc()
            self.down_until = time.monotonic() + self.retry_seconds
            return await self.local.hit(checks)
        if self.down_until:
            log.warning("Redis is reachable again: rate limits are shared again")
            self.down_until = 0.0
        scope, rate = checks[tier - 1] if tier else ("", Rate(0, 0))
        decision = Decision(bool(allowed), rate.limit, remaining, reset / 1000, retry / 1000, scope)
        metrics.series(metrics.LIMITER_DECISIONS, "redis", _result(decision)).inc()
        return decision

    async def close(self) -> None:
        await self.redis.aclose()


def _result(decision: Decision) -> str:
    return "allowed" if decision.allowed else "refused"


def make_limiter(redis_url: str, prefix: str) -> "LocalLimiter | RedisLimiter":
    """The shared limiter when Redis is configured, else the in-process one."""
    return RedisLimiter(redis_url, prefix=prefix) if redis_url else LocalLimiter()

"""Rate limits: specs (`"60/m"`, `"1000/h"`, `"100000tok/m"`, comma-separated) and limiters."""

import logging
import re
import time
from collections import deque
from typing import NamedTuple

import redis.asyncio as aioredis
from django.conf import settings
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
_RATE = re.compile(r"^\s*(\d+)\s*(tok|tokens)?\s*/\s*([a-z]+)\s*$")


class Rate(NamedTuple):
    """At most `limit` requests (or, with `tokens`, input + output tokens) in any window
    of `seconds`."""

    limit: int
    seconds: int
    tokens: bool = False


def parse_spec(spec: str) -> tuple[Rate, ...]:
    """Parse a spec into rates; an empty spec means no limit. Raises ValueError."""
    rates = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        match = _RATE.match(part.lower())
        if not match or match[3] not in UNIT_SECONDS:
            raise ValueError(
                f'"{part}" is not a rate: write COUNT/UNIT (requests) or COUNTtok/UNIT '
                '(tokens) with UNIT one of s, m, h, d (for example "60/m" or '
                '"60/m,100000tok/m")'
            )
        if int(match[1]) < 1:
            raise ValueError(f'"{part}" allows nothing: the count must be at least 1')
        rates.append(Rate(int(match[1]), UNIT_SECONDS[match[3]], bool(match[2])))
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


# A window is counted in STEPS steps of its length / STEPS, plus the step it
# started in: never more than the limit in any window, whatever the rate, in
# at most STEPS + 1 counters per (scope, window) (a log of every request held
# a minute of a busy key's traffic). The cost: a refusal can last up to one
# step (1/60 of the window) longer than an exact log would make it.
STEPS = 60


class _Window:
    """The counts of one (scope, window): [step index, requests] pairs, oldest first."""

    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts: deque[list[int]] = deque()
        self.total = 0

    def forget_before(self, index: int) -> None:
        while self.counts and self.counts[0][0] < index:
            self.total -= self.counts.popleft()[1]

    def add(self, index: int) -> None:
        if self.counts and self.counts[-1][0] == index:
            self.counts[-1][1] += 1
        else:
            self.counts.append([index, 1])
        self.total += 1


class LocalLimiter:
    """Sliding-window limiter in this process (see STEPS): "at most N in any window".

    `hit` is all-or-nothing across tiers: a request refused by one tier is
    counted by none. The event loop runs it without awaiting, so it is atomic.
    `clock` is swappable for tests.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._windows: dict[tuple[str, int], _Window] = {}
        self._hits = 0

    async def hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        decision = self._hit(checks)
        metrics.series(metrics.LIMITER_DECISIONS, "local", _result(decision)).inc()
        return decision

    @property
    def state(self) -> str:
        return "local"

    async def close(self) -> None:
        pass

    def _hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        now = self.clock()
        tightest = Decision(True, 0, 2**31, 0.0)
        refused = None
        admit = []
        for scope, rate in checks:
            window = self._windows.get((scope, rate.seconds))
            if window is None:
                window = self._windows[(scope, rate.seconds)] = _Window()
            step = rate.seconds / STEPS
            current = int(now // step)
            window.forget_before(current - STEPS)
            admit.append((window, current))
            # A step stops counting once the window has moved past its end.
            oldest = window.counts[0][0] if window.counts else current
            reset = (oldest + STEPS + 1) * step - now
            remaining = rate.limit - window.total
            if remaining <= 0:
                # The first step whose leaving brings the count under the limit.
                left, retry = window.total, reset
                for index, count in window.counts:
                    left -= count
                    if left < rate.limit:
                        retry = (index + STEPS + 1) * step - now
                        break
                if refused is None or retry > refused.retry_after:
                    refused = Decision(False, rate.limit, 0, reset, retry, scope)
            elif remaining - 1 < tightest.remaining:
                tightest = Decision(True, rate.limit, remaining - 1, reset, 0.0, scope)
        if refused is not None:
            return refused
        for window, current in admit:
            window.add(current)
        self._hits += 1
        if self._hits % 10_000 == 0:
            self._sweep(now)
        return tightest

    def _sweep(self, now: float) -> None:
        """Forget windows with no request left in them, so memory tracks activity."""
        for key in [
            key
            for key, window in self._windows.items()
            if not window.counts or window.counts[-1][0] < now // (key[1] / STEPS) - STEPS
        ]:
            del self._windows[key]


# The same stepped window as LocalLimiter, in one hash per (scope, window)
# (field: step index, value: requests), decided for every tier of a request
# in one atomic round trip. Times are the Redis server's (ARGV[2] empty), so
# hosts with skewed clocks still share one window; a limiter given a clock
# passes its time in ARGV[2] instead. Every key expires with its window.
# ARGV: steps, now, then limit and seconds per key.
# Returns {allowed, tier index, remaining, reset ms, retry-after ms}.
_STEPPED_WINDOW = """
local steps = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local refused, best = nil, nil
local current = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i + 1])
  local step = tonumber(ARGV[2 * i + 2]) / steps
  current[i] = math.floor(now / step)
  local raw = redis.call('HGETALL', KEYS[i])
  local counts, total = {}, 0
  for j = 1, #raw, 2 do
    local index = tonumber(raw[j])
    if index < current[i] - steps then
      redis.call('HDEL', KEYS[i], raw[j])
    else
      counts[#counts + 1] = {index, tonumber(raw[j + 1])}
      total = total + counts[#counts][2]
    end
  end
  table.sort(counts, function(a, b) return a[1] < b[1] end)
  local oldest = counts[1] and counts[1][1] or current[i]
  local reset = ((oldest + steps + 1) * step - now) * 1000
  if total >= limit then
    local left, retry = total, reset
    for _, pair in ipairs(counts) do
      left = left - pair[2]
      if left < limit then
        retry = ((pair[1] + steps + 1) * step - now) * 1000
        break
      end
    end
    if refused == nil or retry > refused[5] then refused = {0, i, 0, reset, retry} end
  elseif best == nil or limit - total - 1 < best[3] then
    best = {1, i, limit - total - 1, reset, 0}
  end
end
if refused then return refused end
for i = 1, #KEYS do
  local step = tonumber(ARGV[2 * i + 2]) / steps
  redis.call('HINCRBY', KEYS[i], string.format('%d', current[i]), 1)
  redis.call('PEXPIRE', KEYS[i], math.ceil((steps + 2) * step * 1000))
end
return best or {1, 0, 0, 0, 0}
"""


class RedisLimiter:
    """Limits shared by every process that uses the same Redis.

    When Redis cannot be reached, requests are decided by a LocalLimiter
    (per-process limits, never none) with a warning and a metric; Redis is
    tried again after `retry_seconds` and takes over as soon as it answers.

    Windows run on the Redis server's clock unless `clock` is given (tests
    pass a fake one): then that clock times the windows, the retry and the
    local fallback alike.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aethergate",
        timeout: float = 0.5,
        retry_seconds: float = 1.0,
        clock=None,
    ):
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.script = self.redis.register_script(_STEPPED_WINDOW)
        self.prefix = f"{prefix}:rl:"
        self.server_time = clock is None
        self.clock = clock or time.monotonic
        self.local = LocalLimiter(self.clock)
        self.retry_seconds = retry_seconds
        self.down_until = 0.0

    async def hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        if not checks:
            return Decision(True, 0, 2**31, 0.0)
        if self.clock() < self.down_until:
            return await self.local.hit(checks)
        keys = [f"{self.prefix}{scope}:{rate.seconds}" for scope, rate in checks]
        args = [STEPS, "" if self.server_time else repr(self.clock())]
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
            self.down_until = self.clock() + self.retry_seconds
            return await self.local.hit(checks)
        if self.down_until:
            log.warning("Redis is reachable again: rate limits are shared again")
            self.down_until = 0.0
        scope, rate = checks[tier - 1] if tier else ("", Rate(0, 0))
        decision = Decision(bool(allowed), rate.limit, remaining, reset / 1000, retry / 1000, scope)
        metrics.series(metrics.LIMITER_DECISIONS, "redis", _result(decision)).inc()
        return decision

    @property
    def state(self) -> str:
        return "local (Redis unreachable)" if self.down_until else "redis"

    async def close(self) -> None:
        await self.redis.aclose()


def _result(decision: Decision) -> str:
    return "allowed" if decision.allowed else "refused"


def make_limiter(redis_url: str, prefix: str) -> "LocalLimiter | RedisLimiter":
    """The shared limiter when Redis is configured, else the in-process one.

    After a failure, Redis is tried again every AETHERGATE_REDIS_RETRY_SECONDS.
    """
    if not redis_url:
        return LocalLimiter()
    retry = settings.AETHERGATE_REDIS_RETRY_SECONDS
    return RedisLimiter(redis_url, prefix=prefix, retry_seconds=retry)

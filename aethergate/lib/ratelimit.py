"""Rate limits: specs (`"60/m"`, `"1000/h"`, `"100000tok/m"`, comma-separated) and limiters."""

import logging
import math
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

    `limit`, `remaining` and `reset` (seconds) describe the tightest request
    tier, `token_*` the tightest token tier, for the `x-ratelimit-*` headers.
    When refused, `scope`, `limit` and `tokens` name the tier that refused and
    `retry_after` says when to try again (inf: never, the request alone is
    more than the limit). `held` is what the token tiers reserved, for
    `settle`; `shared` whether Redis holds it.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0
    scope: str = ""
    tokens: bool = False
    token_limit: int = 0
    token_remaining: int = 0
    token_reset: float = 0.0
    held: tuple = ()  # ((scope, seconds, step index), ...) of the token tiers
    reserved: int = 0  # tokens reserved in each of them
    shared: bool = False


ADMITTED = Decision(True, 0, 2**31, 0.0)


# A window is counted in STEPS steps of its length / STEPS, plus the step it
# started in: never more than the limit in any window, whatever the rate, in
# at most STEPS + 1 counters per (scope, window) (a log of every request held
# a minute of a busy key's traffic). The cost: a refusal can last up to one
# step (1/60 of the window) longer than an exact log would make it.
STEPS = 60


class _Window:
    """The counts of one (scope, window): [step index, amount] pairs, oldest first."""

    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts: deque[list[int]] = deque()
        self.total = 0

    def forget_before(self, index: int) -> None:
        while self.counts and self.counts[0][0] < index:
            self.total -= self.counts.popleft()[1]

    def add(self, index: int, amount: int = 1) -> None:
        if self.counts and self.counts[-1][0] == index:
            self.counts[-1][1] += amount
        else:
            self.counts.append([index, amount])
        self.total += amount

    def adjust(self, index: int, delta: int) -> None:
        """Add `delta` to step `index`, if the window still counts it."""
        for pair in reversed(self.counts):
            if pair[0] == index:
                pair[1] += delta
                self.total += delta
                return
            if pair[0] < index:
                return


class LocalLimiter:
    """Sliding-window limiter in this process (see STEPS): "at most N in any window".

    `hit` is all-or-nothing across tiers: a request refused by one tier is
    counted by none. The event loop runs it without awaiting, so it is atomic.
    `clock` is swappable for tests.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._windows: dict[tuple[str, int, bool], _Window] = {}  # (scope, seconds, tokens)
        self._hits = 0

    async def hit(self, checks: list[tuple[str, Rate]], tokens: int = 0) -> Decision:
        """Count one request against every (scope, rate) of `checks`: 1 in a request rate,
        `tokens` (its reservation) in a token rate; or refuse it and count nothing."""
        decision = self._hit(checks, tokens)
        metrics.series(metrics.LIMITER_DECISIONS, "local", _result(decision)).inc()
        return decision

    async def settle(self, decision: Decision, used: int) -> None:
        """Replace what `decision` reserved in its token tiers by the `used` tokens."""
        delta = used - decision.reserved
        if delta:
            for scope, seconds, index in decision.held:
                window = self._windows.get((scope, seconds, True))
                if window is not None:
                    window.adjust(index, delta)

    @property
    def state(self) -> str:
        return "local"

    async def close(self) -> None:
        pass

    def _hit(self, checks: list[tuple[str, Rate]], tokens: int = 0) -> Decision:
        if not checks:
            return ADMITTED
        now = self.clock()
        best: dict[bool, tuple] = {}  # by tokens: (limit, remaining, reset, scope)
        refused = None
        admit = []
        for scope, rate in checks:
            amount = tokens if rate.tokens else 1
            window = self._windows.get((scope, rate.seconds, rate.tokens))
            if window is None:
                window = self._windows[(scope, rate.seconds, rate.tokens)] = _Window()
            step = rate.seconds / STEPS
            current = int(now // step)
            window.forget_before(current - STEPS)
            admit.append((window, current, amount, scope, rate))
            # A step stops counting once the window has moved past its end.
            oldest = window.counts[0][0] if window.counts else current
            reset = (oldest + STEPS + 1) * step - now
            remaining = rate.limit - window.total - amount
            if remaining < 0:
                # The first step whose leaving makes room for this request.
                left, retry = window.total, reset if amount <= rate.limit else math.inf
                for index, count in window.counts:
                    if amount > rate.limit:
                        break
                    left -= count
                    if left + amount <= rate.limit:
                        retry = (index + STEPS + 1) * step - now
                        break
                if refused is None or retry > refused.retry_after:
                    refused = Decision(False, rate.limit, 0, reset, retry, scope, rate.tokens)
            elif rate.tokens not in best or remaining < best[rate.tokens][1]:
                best[rate.tokens] = (rate.limit, remaining, reset, scope)
        if refused is not None:
            return refused
        held = []
        for window, current, amount, scope, rate in admit:
            window.add(current, amount)
            if rate.tokens:
                held.append((scope, rate.seconds, current))
        self._hits += 1
        if self._hits % 10_000 == 0:
            self._sweep(now)
        return _admitted(best, tuple(held), tokens, shared=False)

    def _sweep(self, now: float) -> None:
        """Forget windows with no request left in them, so memory tracks activity."""
        for key in [
            key
            for key, window in self._windows.items()
            if not window.counts or window.counts[-1][0] < now // (key[1] / STEPS) - STEPS
        ]:
            del self._windows[key]


def _admitted(best: dict, held: tuple, tokens: int, *, shared: bool) -> Decision:
    """The Decision of an admitted request from its tightest tiers (`best`, by kind)."""
    limit, remaining, reset, scope = best.get(False, (0, 2**31, 0.0, ""))
    t_limit, t_remaining, t_reset, _ = best.get(True, (0, 0, 0.0, ""))
    return Decision(
        True, limit, remaining, reset, 0.0, scope, False, t_limit, t_remaining, t_reset,
        held, tokens if held else 0, shared,
    )  # fmt: skip


# The time of a script: ARGV[1] when the caller's clock runs it (tests), else the
# Redis server's, so that hosts with skewed clocks share one.
LUA_NOW = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# The same stepped window as LocalLimiter, in one hash per (scope, window)
# (field: step index, value: amount), decided for every tier of a request in
# one atomic round trip. Times are the Redis server's (ARGV[2] empty), so
# hosts with skewed clocks still share one window; a limiter given a clock
# passes its time in ARGV[2] instead. Every key expires with its window.
# ARGV: steps, now, then limit, seconds and amount (1, or the tokens reserved)
# and kind (1: tokens) per key. Returns {allowed, tier, remaining, reset ms,
# retry-after ms (-1: never)} for the tightest (or refusing) request tier,
# then the same five for the tightest token tier, then each key's step index.
_STEPPED_WINDOW = """
local steps = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local refused = nil
local best = {}
local current = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[4 * i - 1])
  local step = tonumber(ARGV[4 * i]) / steps
  local amount = tonumber(ARGV[4 * i + 1])
  local kind = tonumber(ARGV[4 * i + 2])
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
  local remaining = limit - total - amount
  if remaining < 0 then
    local retry = -1
    if amount <= limit then
      retry = reset
      local left = total
      for _, pair in ipairs(counts) do
        left = left - pair[2]
        if left + amount <= limit then
          retry = ((pair[1] + steps + 1) * step - now) * 1000
          break
        end
      end
    end
    if refused == nil or retry == -1 or (refused[5] ~= -1 and retry > refused[5]) then
      refused = {0, i, 0, reset, retry}
    end
  elseif best[kind] == nil or remaining < best[kind][3] then
    best[kind] = {1, i, remaining, reset, 0}
  end
end
if refused then return refused end
for i = 1, #KEYS do
  local step = tonumber(ARGV[4 * i]) / steps
  redis.call('HINCRBY', KEYS[i], string.format('%d', current[i]), tonumber(ARGV[4 * i + 1]))
  redis.call('PEXPIRE', KEYS[i], math.ceil((steps + 2) * step * 1000))
end
local reply = best[0] or {1, 0, 0, 0, 0}
local tokens = best[1] or {1, 0, 0, 0, 0}
for _, value in ipairs(tokens) do reply[#reply + 1] = value end
for i = 1, #KEYS do reply[#reply + 1] = current[i] end
return reply
"""

# Adds ARGV[1] (the tokens used less those reserved) to step ARGV[i + 1] of
# each key, if the window still holds that step.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[i], ARGV[i + 1], ARGV[1])
  end
end
return 0
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
        url: str = "",
        *,
        prefix: str = "aethergate",
        timeout: float = 0.5,
        retry_seconds: float = 1.0,
        clock=None,
        shared: "SharedRedis | None" = None,
    ):
        self.shared = shared or SharedRedis(
            url, timeout=timeout, retry_seconds=retry_seconds, clock=clock
        )
        self.redis = self.shared.redis
        self.script = self.redis.register_script(_STEPPED_WINDOW)
        self.settle_script = self.redis.register_script(_SETTLE)
        self.prefix = f"{prefix}:rl:"
        self.clock = self.shared.clock
        self.local = LocalLimiter(self.clock)

    async def hit(self, checks: list[tuple[str, Rate]], tokens: int = 0) -> Decision:
        if not checks:
            return ADMITTED
        if self.shared.down():
            return await self.local.hit(checks, tokens)
        keys = [f"{self.prefix}{scope}:{rate.seconds}{'t' if rate.tokens else ''}"
                for scope, rate in checks]  # fmt: skip
        args = [STEPS, self.shared.now()]
        for _, rate in checks:
            args += [rate.limit, rate.seconds, tokens if rate.tokens else 1, int(rate.tokens)]
        reply = await self.shared.run(self.script, keys, args, "rate limits")
        if reply is None:
            return await self.local.hit(checks, tokens)
        allowed, tier, remaining, reset, retry = reply[:5]
        if not allowed:
            scope, rate = checks[tier - 1]
            decision = Decision(
                False, rate.limit, 0, reset / 1000,
                math.inf if retry < 0 else retry / 1000, scope, rate.tokens,
            )  # fmt: skip
        else:
            best = {}
            if tier:
                scope, rate = checks[tier - 1]
                best[False] = (rate.limit, remaining, reset / 1000, scope)
            if reply[6]:
                scope, rate = checks[reply[6] - 1]
                best[True] = (rate.limit, reply[7], reply[8] / 1000, scope)
            held = tuple(
                (keys[i], 0, reply[10 + i]) for i, (_, rate) in enumerate(checks) if rate.tokens
            )
            decision = _admitted(best, held, tokens, shared=True)
        metrics.series(metrics.LIMITER_DECISIONS, "redis", _result(decision)).inc()
        return decision

    async def settle(self, decision: Decision, used: int) -> None:
        if not decision.shared:
            await self.local.settle(decision, used)
            return
        delta = used - decision.reserved
        if delta and decision.held:
            keys = [key for key, _, _ in decision.held]
            args = [delta, *(index for _, _, index in decision.held)]
            await self.shared.run(self.settle_script, keys, args, "rate limits")

    @property
    def state(self) -> str:
        return "local (Redis unreachable)" if self.shared.down_until else "redis"

    async def close(self) -> None:
        await self.shared.close()


class SharedRedis:
    """One Redis connection for the shared limits, leases and budgets, and whether it is up.

    `run` returns a script's reply, or None when Redis is unreachable: then
    every caller decides in its process until `retry_seconds` have passed,
    with one warning and a metric per outage. `clock` is the time seam
    (given: it also times the scripts, instead of the Redis server's clock).
    """

    def __init__(self, url: str, *, timeout: float = 0.5, retry_seconds: float = 1.0, clock=None):
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.server_time = clock is None
        self.clock = clock or time.monotonic
        self.retry_seconds = retry_seconds
        self.down_until = 0.0

    def down(self) -> bool:
        return self.clock() < self.down_until

    def now(self) -> str:
        """The time to pass a script (LUA_NOW): "" for the Redis server's."""
        return "" if self.server_time else repr(self.clock())

    async def run(self, script, keys: list, args: list, what: str):
        try:
            reply = await script(keys, args)
        except (RedisError, OSError) as exc:
            if self.down_until == 0.0:
                log.warning(
                    "Redis is unreachable (%s): %s are per process until it is back",
                    type(exc).__name__,
                    what,
                )
                metrics.LIMITER_FALLBACKS.inc()
            self.down_until = self.clock() + self.retry_seconds
            return None
        if self.down_until:
            log.warning("Redis is reachable again: limits are shared again")
            self.down_until = 0.0
        return reply

    async def close(self) -> None:
        await self.redis.aclose()


def _result(decision: Decision) -> str:
    return "allowed" if decision.allowed else "refused"


def make_shared(redis_url: str) -> SharedRedis | None:
    """The shared Redis when one is configured; after a failure it is tried again every
    AETHERGATE_REDIS_RETRY_SECONDS."""
    if not redis_url:
        return None
    return SharedRedis(redis_url, retry_seconds=settings.AETHERGATE_REDIS_RETRY_SECONDS)


def make_limiter(shared: SharedRedis | None, prefix: str) -> "LocalLimiter | RedisLimiter":
    """The shared limiter on `shared` Redis, else the in-process one."""
    if shared is None:
        return LocalLimiter()
    return RedisLimiter(prefix=prefix, shared=shared)

"""Rate limits: specs (`"60/m"`, `"1000/h"`, `"5000/d"`, comma-separated) and limiters."""

import re
import time
from collections import deque
from typing import NamedTuple

from django.core.exceptions import ValidationError

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

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._logs: dict[tuple[str, int], deque] = {}
        self._hits = 0

    async def hit(self, checks: list[tuple[str, Rate]]) -> Decision:
        return self._hit(checks)

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

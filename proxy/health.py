"""What one process knows of a deployment's health: its circuit breaker, load and speed.

A breaker is closed (requests flow), open (none until `open_until`) or
half-open (the cooldown is over: one live request is let through, and its
outcome closes or reopens the circuit). Where the endpoint has a health check,
that GET runs first, when the cooldown is over: only its success makes the
circuit half-open; its failure reopens it for a longer cooldown. It opens when, over the last
`window` seconds, at least `min_requests` attempts were made and at least
`failure_ratio` of them failed, or after `consecutive` failures in a row within
the window, so
that a single failure at a quiet moment never opens it. Each trip that
follows a failed probe doubles the cooldown, up to `max_cooldown`. An
upstream's 429 with Retry-After opens it for exactly that long.

Pure: every method takes the time (`now`, monotonic seconds) from its caller.
"""

from dataclasses import dataclass

from django.conf import settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BUCKETS = 10  # the window is counted in this many steps
TTFB_WEIGHT = 0.3  # of the newest sample in the time-to-first-byte average


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    window: float = 30.0
    min_requests: int = 10
    failure_ratio: float = 0.5
    consecutive: int = 5
    cooldown: float = 5.0
    max_cooldown: float = 300.0

    @classmethod
    def from_settings(cls) -> "BreakerPolicy":
        return cls(
            window=settings.AETHERGATE_BREAKER_WINDOW_SECONDS,
            min_requests=settings.AETHERGATE_BREAKER_MIN_REQUESTS,
            failure_ratio=settings.AETHERGATE_BREAKER_FAILURE_RATIO,
            consecutive=settings.AETHERGATE_BREAKER_CONSECUTIVE_FAILURES,
            cooldown=settings.AETHERGATE_BREAKER_COOLDOWN_SECONDS,
            max_cooldown=settings.AETHERGATE_BREAKER_MAX_COOLDOWN_SECONDS,
        )


class Window:
    """Counts of (ok, failed) over the last `seconds`, in BUCKETS steps."""

    __slots__ = ("at", "failed", "ok", "since", "step", "steps", "until")

    def __init__(self, seconds: float):
        self.step = seconds / BUCKETS
        self.ok = [0] * BUCKETS
        self.failed = [0] * BUCKETS
        self.steps = [-1] * BUCKETS  # which step of time each bucket holds
        # The bucket of the latest count, and the times it covers: counting within
        # them, the common case, is one comparison and one addition.
        self.at, self.since, self.until = 0, 0.0, -1.0

    def add_ok(self, now: float) -> None:
        if not self.since <= now < self.until:
            self._move(now)
        self.ok[self.at] += 1

    def add_failed(self, now: float) -> None:
        if not self.since <= now < self.until:
            self._move(now)
        self.failed[self.at] += 1

    def _move(self, now: float) -> None:
        step = int(now / self.step)
        i = self.at = step % BUCKETS
        self.since, self.until = step * self.step, (step + 1) * self.step
        if self.steps[i] != step:
            self.steps[i], self.ok[i], self.failed[i] = step, 0, 0

    def counts(self, now: float) -> tuple[int, int]:
        """(attempts, failures) in the window ending at `now`."""
        oldest = int(now / self.step) - BUCKETS + 1
        total = failed = 0
        for i in range(BUCKETS):
            if self.steps[i] >= oldest:
                total += self.ok[i] + self.failed[i]
                failed += self.failed[i]
        return total, failed

    def clear(self) -> None:
        self.steps = [-1] * BUCKETS
        self.until = -1.0


class Health:
    """One deployment's breaker, requests in flight and time to first byte, in this process."""

    __slots__ = (
        "consecutive",
        "failed_at",
        "in_flight",
        "open_until",
        "picks",
        "picks_label",
        "policy",
        "probing",
        "state",
        "trips",
        "ttfb",
        "ttfb_at",
        "window",
    )

    def __init__(self, policy: BreakerPolicy):
        self.policy = policy
        self.state = CLOSED
        self.open_until = 0.0
        self.trips = 0  # trips since the circuit last closed: the cooldown doubles with each
        self.probing = False  # half-open: the one request let through is in flight
        self.consecutive = 0
        self.failed_at = 0.0  # the latest failure: a run of failures is broken by time too
        self.window = Window(policy.window)
        self.in_flight = 0
        self.ttfb: float | None = None  # moving average, seconds
        self.ttfb_at = 0.0  # when it was last measured
        self.picks = None  # its picks counter (routing.Router.taken), and what it is labelled
        self.picks_label: str | None = None

    def available(self, now: float, *, gated: bool = False) -> bool:
        """Whether a request may be sent now (half-open: only while no probe is out).

        `gated`: the deployment has a health check, which must pass (`checked`)
        before an open circuit turns half-open; until then it stays open.
        """
        if self.state == OPEN and now >= self.open_until and not gated:
            self.state = HALF_OPEN
        return self.state == CLOSED or (self.state == HALF_OPEN and not self.probing)

    def check_due(self, now: float) -> bool:
        """Whether a health check should run now: open, cooled down, none running."""
        return self.state == OPEN and now >= self.open_until and not self.probing

    def checked(self, now: float, ok: bool) -> str:
        """A health check's outcome: half-open on success, else a trip (its cause)."""
        self.probing = False
        if self.state != OPEN:
            return ""
        if ok:
            self.state = HALF_OPEN
            return ""
        self._trip(now)
        return "check_failed"

    def taken(self) -> None:
        """A request was sent: in flight, and the probe if the circuit is half-open."""
        self.in_flight += 1
        if self.state == HALF_OPEN:
            self.probing = True

    def succeeded(self, now: float, ttfb: float | None) -> bool:
        """The upstream answered; True when that closed the circuit."""
        if self.in_flight:  # inlined _done(): this runs for every answer
            self.in_flight -= 1
        self.probing = False
        if ttfb is not None:
            self.ttfb = ttfb if self.ttfb is None else self.ttfb + TTFB_WEIGHT * (ttfb - self.ttfb)
            self.ttfb_at = now
        self.consecutive = 0
        if self.state == CLOSED:
            self.window.add_ok(now)
            return False
        if self.state == HALF_OPEN:
            self.state, self.trips = CLOSED, 0
            self.window.clear()
            return True
        return False  # an answer that left before the circuit opened: it stays open

    def failed(self, now: float, *, retry_after: float | None = None) -> str:
        """The upstream failed; the cause of the trip it made ("" if none)."""
        self._done()
        if retry_after is not None:
            self.state, self.open_until = OPEN, now + retry_after
            return "retry_after"
        if self.state == HALF_OPEN:
            self._trip(now)
            return "probe_failed"
        if self.state == OPEN:
            return ""
        if now - self.failed_at > self.policy.window:
            self.consecutive = 0
        self.consecutive += 1
        self.failed_at = now
        self.window.add_failed(now)
        total, failures = self.window.counts(now)
        if self.consecutive >= self.policy.consecutive or (
            total >= self.policy.min_requests and failures >= self.policy.failure_ratio * total
        ):
            self._trip(now)
            return "failures"
        return ""

    def abandoned(self) -> None:
        """The request ended without a verdict (the client left): a probe may go again."""
        self._done()

    def _done(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.probing = False

    def _trip(self, now: float) -> None:
        cooldown = min(self.policy.max_cooldown, self.policy.cooldown * 2**self.trips)
        self.state, self.open_until = OPEN, now + cooldown
        self.trips += 1
        self.consecutive = 0
        self.window.clear()

    def error_rate(self, now: float) -> float | None:
        total, failures = self.window.counts(now)
        return failures / total if total else None

    def describe(self, now: float, *, gated: bool = False) -> dict:
        """Its state for people: state, until when (seconds from now), recent error rate."""
        self.available(now, gated=gated)
        return {
            "state": self.state,
            "reopens_in": max(0.0, self.open_until - now) if self.state == OPEN else None,
            "error_rate": self.error_rate(now),
            "in_flight": self.in_flight,
            "ttfb": self.ttfb,
        }

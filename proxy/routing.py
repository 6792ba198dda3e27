"""Which deployment of a model a request goes to, and whether a failed one may be retried.

A `Router` lives in the process's Runtime. It keeps each deployment's
`Health` (breaker, load, speed), the session affinity table and, per model,
a retry budget. Everything it knows it learned from this process's own
traffic: other processes keep their own (the README says so).

Picking: the lowest priority number with an available deployment is the
tier; within it, a session seen before keeps its deployment while that is
available; otherwise the model's strategy chooses. A retry budget lets at most
`AETHERGATE_RETRY_BUDGET_RATIO` of a model's recent requests be retried (and
always `AETHERGATE_RETRY_BUDGET_MIN` per window), so an outage does not
multiply the load on what is left. A deployment whose endpoint has a health
path is checked with a GET of it (never a completion) once its cooldown is over.
"""

import asyncio
import random
import time
from collections import OrderedDict

from django.conf import settings

from aethergate.lib import metrics
from proxy.health import BreakerPolicy, Health, Window
from proxy.snapshot import DeploymentInfo, ModelInfo

# Headers that name a client's session, first found wins, then the body's fields.
SESSION_HEADERS = (b"x-session-id", b"x-claude-code-session-id")
SESSION_FIELDS = ("prompt_cache_key", "user")
BUDGET_WINDOW = 10.0  # seconds over which retries are weighed against requests
# A time to first byte older than this is forgotten, so the deployment it made look
# slow gets a request again (the lowest-latency strategy would otherwise never re-measure it).
TTFB_MAX_AGE = 30.0

STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
CHECK_INTERVAL = 0.5  # seconds between looks for health checks that fell due
CHECK_SECONDS = 5.0  # the most a health check may take


def session_of(headers, payload: dict) -> str | None:
    """The session a request belongs to, if it names one (header, prompt_cache_key, user)."""
    for name, value in headers:
        if name in SESSION_HEADERS and value:
            return value.decode("latin-1")[:200]
    for name in SESSION_FIELDS:
        value = payload.get(name)
        if isinstance(value, str) and value:
            return value[:200]
    return None


class Router:
    """Deployment picks, health, affinity and retry budgets for one process."""

    def __init__(self, *, policy: BreakerPolicy | None = None, clock=time.monotonic, rng=None):
        self.policy = policy or BreakerPolicy.from_settings()
        self.clock = clock  # a seam for tests: the breaker's and the budget's time
        self.rng = rng or random.Random()  # noqa: S311 -- load spreading, not a secret
        self.sleep = asyncio.sleep  # a seam for tests: the backoff's wait
        self.health: dict[int, Health] = {}
        self.affinity: OrderedDict[tuple, tuple[int, float]] = OrderedDict()
        self.affinity_size = settings.AETHERGATE_AFFINITY_MAX_SESSIONS
        self.affinity_seconds = settings.AETHERGATE_AFFINITY_SECONDS
        self.max_retries = settings.AETHERGATE_MAX_RETRIES
        self.budget_ratio = settings.AETHERGATE_RETRY_BUDGET_RATIO
        self.budget_min = settings.AETHERGATE_RETRY_BUDGET_MIN
        self.backoff_base = settings.AETHERGATE_RETRY_BACKOFF_SECONDS
        self.backoff_max = settings.AETHERGATE_RETRY_BACKOFF_MAX_SECONDS
        self.budgets: dict[int, Window] = {}  # per model: ok = requests, failed = retries
        self.failing: dict[int, DeploymentInfo] = {}  # deployments that failed, by id

    def of(self, deployment: DeploymentInfo) -> Health:
        health = self.health.get(deployment.id)
        if health is None:
            health = self.health[deployment.id] = Health(self.policy)
        return health

    # Picking.
    def pick(
        self, model: ModelInfo, excluded: set[int], session: tuple | None
    ) -> DeploymentInfo | None:
        """The deployment to try next, or None when none is available."""
        now = self.clock()
        if len(model.deployments) == 1:  # most models: nothing to choose
            only = model.deployments[0]
            return only if self._open_to(only, excluded, now) else None
        tier = None
        for deployment in model.deployments:  # by priority: the first available tier wins
            if tier is not None and deployment.priority != tier[0].priority:
                break
            if self._open_to(deployment, excluded, now):
                if tier is None:
                    tier = [deployment]
                else:
                    tier.append(deployment)
        if tier is None:
            return None
        if session is not None:
            kept = self._affine(session, tier, now)
            if kept is not None:
                return kept
        if len(tier) == 1:
            return tier[0]
        if model.strategy == "least_busy":
            return self._least_busy(tier)
        if model.strategy == "fastest":
            return self._fastest(tier, now)
        return self._weighted(tier)

    def _open_to(self, deployment: DeploymentInfo, excluded: set[int], now: float) -> bool:
        """Whether `deployment` may be sent this request now."""
        endpoint = deployment.endpoint
        return (
            deployment.id not in excluded
            and endpoint.usable
            and self.of(deployment).available(now, gated=bool(endpoint.health_path))
        )

    def _weighted(self, tier: list[DeploymentInfo]) -> DeploymentInfo:
        point = self.rng.random() * sum(d.weight for d in tier)
        for deployment in tier:
            point -= deployment.weight
            if point < 0:
                return deployment
        return tier[-1]

    def _least_busy(self, tier: list[DeploymentInfo]) -> DeploymentInfo:
        fewest = min(self.health[d.id].in_flight for d in tier)
        return self.rng.choice([d for d in tier if self.health[d.id].in_flight == fewest])

    def _fastest(self, tier: list[DeploymentInfo], now: float) -> DeploymentInfo:
        def latency(d: DeploymentInfo) -> float:
            health = self.health[d.id]
            if health.ttfb is None or now - health.ttfb_at > TTFB_MAX_AGE:
                return -1.0  # unmeasured, or measured too long ago: measure it
            return health.ttfb

        best = min(latency(d) for d in tier)
        return self.rng.choice([d for d in tier if latency(d) == best])

    def _affine(self, session: tuple, tier: list[DeploymentInfo], now: float):
        found = self.affinity.get(session)
        if found is None:
            return None
        deployment_id, seen = found
        if now - seen > self.affinity_seconds:
            del self.affinity[session]
            return None
        for deployment in tier:
            if deployment.id == deployment_id:
                return deployment
        return None  # its deployment is unavailable: the session moves (and is remembered anew)

    def remember(self, session: tuple, deployment: DeploymentInfo) -> None:
        """`session` was served by `deployment`: its next requests go there too."""
        self.affinity[session] = (deployment.id, self.clock())
        self.affinity.move_to_end(session)
        while len(self.affinity) > self.affinity_size:
            self.affinity.popitem(last=False)

    # Outcomes.
    def taken(self, model: ModelInfo, deployment: DeploymentInfo) -> None:
        health = self.health[deployment.id]  # made by the pick
        health.taken()
        if health.picks_label is not deployment.label:  # the same string while unchanged
            health.picks_label = deployment.label
            health.picks = metrics.series(metrics.DEPLOYMENT_PICKS, model.name, deployment.label)
        health.picks.inc()

    def succeeded(self, deployment: DeploymentInfo, ttfb: float | None) -> None:
        health = self.of(deployment)
        if health.succeeded(self.clock(), ttfb):
            self._state_changed(deployment, health)

    def failed(self, deployment: DeploymentInfo, *, retry_after: float | None = None) -> None:
        self.failing[deployment.id] = deployment  # the record its health check will use
        health = self.of(deployment)
        cause = health.failed(self.clock(), retry_after=retry_after)
        if cause:
            metrics.series(metrics.BREAKER_TRIPS, deployment.label, cause).inc()
            self._state_changed(deployment, health)

    def abandoned(self, deployment: DeploymentInfo) -> None:
        self.of(deployment).abandoned()

    def _state_changed(self, deployment: DeploymentInfo, health: Health) -> None:
        metrics.series(metrics.BREAKER_STATE, deployment.label).set(STATE_VALUES[health.state])

    # Health checks.
    async def watch(self, upstream) -> None:
        """Run the health checks that fall due, every CHECK_INTERVAL seconds (a Runtime task)."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await self.run_checks(upstream)

    async def run_checks(self, upstream) -> None:
        """GET the health path of each open deployment whose cooldown is over, at once."""
        now = self.clock()
        due = [
            d
            for d in self.failing.values()
            if d.endpoint.health_path and self.health[d.id].check_due(now)
        ]
        for deployment in due:
            self.health[deployment.id].probing = True
        results = await asyncio.gather(
            *(
                upstream.check(d.endpoint, d.endpoint.health_path, seconds=CHECK_SECONDS)
                for d in due
            ),
            return_exceptions=True,
        )
        for deployment, ok in zip(due, results, strict=True):
            health = self.health[deployment.id]
            passed = ok is True
            metrics.series(metrics.HEALTH_CHECKS, deployment.label, str(passed).lower()).inc()
            cause = health.checked(self.clock(), passed)
            if cause:
                metrics.series(metrics.BREAKER_TRIPS, deployment.label, cause).inc()
            self._state_changed(deployment, health)

    # Retries.
    def requested(self, model: ModelInfo) -> None:
        """A request for `model` began: it adds to what its retry budget allows."""
        self._budget(model).add_ok(self.clock())

    def may_retry(self, model: ModelInfo) -> bool:
        """Whether a request for `model` that failed may try again (and so spend the budget)."""
        budget = self._budget(model)
        now = self.clock()
        total, retries = budget.counts(now)
        allowed = max(self.budget_min, self.budget_ratio * (total - retries))
        if retries >= allowed:
            metrics.series(metrics.RETRY_BUDGET_EXHAUSTED, model.name).inc()
            return False
        budget.add_failed(now)
        return True

    def _budget(self, model: ModelInfo) -> Window:
        budget = self.budgets.get(model.id)
        if budget is None:
            budget = self.budgets[model.id] = Window(BUDGET_WINDOW)
        return budget

    async def backoff(self, retry: int) -> None:
        """Wait before retry number `retry` (1, 2, …): full jitter over an exponential cap."""
        cap = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))
        if cap > 0:
            await self.sleep(self.rng.uniform(0, cap))

    def states(self, deployments) -> dict[int, dict]:
        """What this process knows of each of `deployments` (ids), for the admin."""
        now = self.clock()
        return {
            d: self.health[d].describe(now, gated=d in self.failing and self._gated(d))
            for d in deployments
            if d in self.health
        }

    def _gated(self, deployment_id: int) -> bool:
        return bool(self.failing[deployment_id].endpoint.health_path)

"""What `/v1` knows of keys, users, models and endpoints: frozen records read in a few queries.

Each record is built from its model by `from_model`, so a field `/v1` needs
is added in one place per layer: the model, and its record here.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Max

from aethergate.lib import periods
from aethergate.lib.ratelimit import Rate, parse_spec

log = logging.getLogger(__name__)


def _rates(row) -> tuple[Rate, ...]:
    """A model's or endpoint's limits: requests and tokens per minute and per day."""
    found = (
        row.rpm_limit and Rate(row.rpm_limit, 60),
        row.day_limit and Rate(row.day_limit, 86400),
        row.tpm_limit and Rate(row.tpm_limit, 60, True),
        row.tpd_limit and Rate(row.tpd_limit, 86400, True),
    )
    return tuple(r for r in found if r)


@dataclass(frozen=True, slots=True)
class BudgetInfo:
    """A key's or a user's spend budget; `scope` ("k<id>" or "u<id>") names its counter."""

    scope: str
    owner: str
    limit: Decimal | None  # the hard limit: refused beyond it
    soft: Decimal | None  # the alert
    period: str  # accounts.models.BudgetPeriod

    @classmethod
    def of(cls, row, scope: str, owner: str) -> "BudgetInfo | None":
        """The budget of a User or APIKey row; None when it has neither limit."""
        if row.budget is None and row.budget_soft is None:
            return None
        return cls(scope, owner, row.budget, row.budget_soft, row.budget_period)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    prefix: str
    user_id: int
    username: str
    is_active: bool
    user_active: bool
    expires_at: datetime | None
    log_content: bool
    rates: tuple[Rate, ...]
    capabilities: frozenset[str]
    models: frozenset[str]
    max_concurrent: int | None
    budgets: tuple[BudgetInfo, ...]  # the key's, then its owner's
    # Whether its requests hold anything (proxy.meter): a token limit, leases, a budget.
    holds: bool = field(init=False)

    def __post_init__(self):
        holds = bool(self.budgets or self.max_concurrent or any(r.tokens for r in self.rates))
        object.__setattr__(self, "holds", holds)

    @classmethod
    def from_model(cls, key, *, models: frozenset[str]) -> "KeyInfo":
        """From an APIKey with its owner loaded; `models`: the names it is allowed.

        Raises ValueError for a rate limit that does not parse.
        """
        return cls(
            id=key.pk,
            prefix=key.prefix,
            user_id=key.owner_id,
            username=key.owner.username,
            is_active=key.is_active,
            user_active=key.owner.is_active,
            expires_at=key.expires_at,
            log_content=key.log_content,
            rates=parse_spec(key.rate_limit),
            capabilities=frozenset(key.allowed_capabilities or ()),
            models=models,
            max_concurrent=key.max_concurrent,
            budgets=tuple(
                b
                for b in (
                    BudgetInfo.of(key, f"k{key.pk}", key.prefix),
                    BudgetInfo.of(key.owner, f"u{key.owner_id}", key.owner.username),
                )
                if b
            ),
        )


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    id: int
    name: str
    base_url: str
    kind: str  # Endpoint.Kind: which server software, for per-server adjustments
    native_responses: bool  # it serves OpenAI's Responses API: /v1/responses passes through
    api_key: str
    usable: bool
    rates: tuple[Rate, ...]
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    total_timeout: float
    health_path: str  # "" when a deployment here is not checked before traffic returns

    @classmethod
    def from_model(cls, endpoint) -> "EndpointInfo":
        """From an Endpoint; one whose credential cannot be decrypted is kept, not usable."""
        try:
            credential, usable = endpoint.api_key, True
        except Exception:
            log.exception(
                "Endpoint %s: its credential cannot be decrypted; not serving it", endpoint.name
            )
            credential, usable = "", False
        return cls(
            id=endpoint.pk,
            name=endpoint.name,
            base_url=endpoint.base_url.rstrip("/"),
            kind=endpoint.kind,
            native_responses=endpoint.native_responses,
            api_key=credential,
            usable=usable,
            rates=_rates(endpoint),
            connect_timeout=endpoint.connect_timeout,
            first_byte_timeout=endpoint.first_byte_timeout,
            idle_timeout=endpoint.idle_timeout,
            total_timeout=endpoint.total_timeout,
            health_path=endpoint.health_path,
        )


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """`upstream_name` on `endpoint`: one way to serve a model."""

    id: int
    upstream_name: str
    endpoint: EndpointInfo
    weight: int
    priority: int
    label: str  # "endpoint/upstream model": how metrics and the admin name it

    @classmethod
    def from_model(cls, deployment, *, endpoint: EndpointInfo) -> "DeploymentInfo":
        return cls(
            id=deployment.pk,
            upstream_name=deployment.upstream_name,
            endpoint=endpoint,
            weight=deployment.weight,
            priority=deployment.priority,
            label=f"{endpoint.name}/{deployment.upstream_name}",
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    capability: str
    billing_unit: str
    price_in: Decimal
    price_out: Decimal
    price_cache_read: Decimal  # the input price unless one is set
    price_cache_write: Decimal
    unpriced: bool  # models_registry.models.is_unpriced
    rates: tuple[Rate, ...]
    max_concurrent: int | None
    max_output_tokens: int | None
    strategy: str
    fallback: str | None
    context_fallback: str | None
    # By priority, then weight; only those that may be sent requests (weighted, endpoint active).
    deployments: tuple[DeploymentInfo, ...]
    created: int
    # Whether its requests hold anything (proxy.meter): leases, or a token limit of its
    # own or of one of its endpoints.
    holds: bool = field(init=False)

    def __post_init__(self):
        holds = bool(
            self.max_concurrent
            or any(r.tokens for r in self.rates)
            or any(r.tokens for d in self.deployments for r in d.endpoint.rates)
        )
        object.__setattr__(self, "holds", holds)

    @classmethod
    def from_model(cls, model, *, deployments: tuple[DeploymentInfo, ...]) -> "ModelInfo":
        """From a Model with its fallbacks loaded, and the records of its serving deployments."""
        return cls(
            id=model.pk,
            name=model.name,
            capability=model.capability,
            billing_unit=model.billing_unit,
            price_in=model.price_in,
            price_out=model.price_out,
            price_cache_read=_or(model.price_cache_read, model.price_in),
            price_cache_write=_or(model.price_cache_write, model.price_in),
            unpriced=model.unpriced,
            rates=_rates(model),
            max_concurrent=model.max_concurrent,
            max_output_tokens=model.max_output_tokens,
            strategy=model.strategy,
            fallback=_active_name(model.fallback),
            context_fallback=_active_name(model.context_fallback),
            deployments=deployments,
            created=int(model.created_at.timestamp()),
        )


def _or(value, default):
    return default if value is None else value


def _active_name(model) -> str | None:
    return model.name if model is not None and model.is_active else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys: dict[str, KeyInfo]  # by digest of the whole secret
    models: dict[str, ModelInfo]  # by public name
    balances: dict[int, Decimal | None]  # by user id; users without one are absent
    budgets: dict[str, str] = field(default_factory=dict)  # budget scope -> its period
    # budget scope -> (start of the period it was read for, spent in it then)
    spent: dict[str, tuple[datetime, Decimal]] = field(default_factory=dict)


def load_snapshot() -> Snapshot:
    """Read everything `/v1` needs in a few queries (sync; run in a thread)."""
    from endpoints.models import Endpoint
    from keys.models import APIKey
    from models_registry.models import Deployment, Model

    endpoints = {e.pk: EndpointInfo.from_model(e) for e in Endpoint.objects.filter(is_active=True)}
    serving: dict[int, list[DeploymentInfo]] = {}
    for d in Deployment.objects.serving().filter(model__is_active=True):
        endpoint = endpoints.get(d.endpoint_id)
        if endpoint is None:
            continue  # activated after the endpoints were read: in the next snapshot
        serving.setdefault(d.model_id, []).append(DeploymentInfo.from_model(d, endpoint=endpoint))
    models = {
        m.name: ModelInfo.from_model(m, deployments=tuple(serving.get(m.pk, ())))
        for m in Model.objects.filter(is_active=True).select_related("fallback", "context_fallback")
    }
    allowed: dict[int, set[str]] = {}
    through = APIKey.allowed_models.through.objects.values_list("apikey_id", "model__name")
    for key_id, name in through:
        allowed.setdefault(key_id, set()).add(name)
    keys = {}
    for k in APIKey.objects.select_related("owner"):
        try:
            keys[k.digest] = KeyInfo.from_model(k, models=frozenset(allowed.get(k.pk, ())))
        except ValueError:
            # Validated on save; a bad row (e.g. a raw SQL edit) fails closed.
            log.error(
                "API key %s has an invalid rate limit %r; refusing it", k.prefix, k.rate_limit
            )
    budgets = {b.scope: b.period for key in keys.values() for b in key.budgets}
    return Snapshot(keys, models, load_balances(), budgets, load_spent(budgets))


def load_balances() -> dict[int, Decimal]:
    """The prepaid balances (users without one are not limited by balance)."""
    from accounts.models import User

    return dict(User.objects.filter(balance__isnull=False).values_list("pk", "balance"))


def load_spent(budgets: dict[str, str]) -> dict[str, tuple[datetime, Decimal]]:
    """What each budget (scope -> period) has spent in its current period, from the
    usage the log writer has stored: one query per kind of owner and period start."""
    from django.utils import timezone

    from logs.services import spend_since

    now = timezone.now()
    groups: dict[tuple[str, datetime], list[int]] = {}
    for scope, period in budgets.items():
        start = periods.current(period, now)[0]
        groups.setdefault((scope[0], start), []).append(int(scope[1:]))
    found = {}
    for (kind, start), ids in groups.items():
        field_name = "api_key_id" if kind == "k" else "user_id"
        for owner, amount in spend_since(field_name, ids, start).items():
            found[f"{kind}{owner}"] = (start, amount)
        for owner in ids:
            found.setdefault(f"{kind}{owner}", (start, Decimal(0)))
    return found


def change_marker() -> tuple:
    """A cheap value that changes whenever a row `/v1` depends on is written."""
    from accounts.models import User
    from endpoints.models import Endpoint
    from keys.models import APIKey
    from models_registry.models import Deployment, Model

    return tuple(
        tuple(model.objects.aggregate(n=Count("pk"), t=Max("updated_at")).values())
        for model in (APIKey, User, Model, Endpoint, Deployment)
    )

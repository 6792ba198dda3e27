"""The in-process snapshot of keys, users, models and endpoints that `/v1` reads.

No request queries the database: the snapshot is rebuilt when a change is
signalled in this process (Django signals), announced by another process
over Redis, or seen by polling a cheap change marker. Balances are re-read at
every poll, so charges made by other processes count here within a poll.

If the database is unreachable the previous snapshot keeps serving: known
keys keep working, and `available` turns False so that unknown keys get a
503 rather than a 401 they could not be sure of.
"""

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Max

from aethergate.lib.db import run_db
from aethergate.lib.ratelimit import Rate, parse_spec

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    id: int
    name: str
    base_url: str
    api_key: str
    usable: bool
    rates: tuple[Rate, ...]
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    total_timeout: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    upstream_name: str
    capability: str
    billing_unit: str
    price_in: Decimal
    price_out: Decimal
    rates: tuple[Rate, ...]
    fallback: str | None
    endpoint: EndpointInfo | None
    created: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys: dict[str, KeyInfo]
    models: dict[str, ModelInfo]
    balances: dict[int, Decimal | None]


def _rates(rpm: int | None, per_day: int | None) -> tuple[Rate, ...]:
    return tuple(r for r in (rpm and Rate(rpm, 60), per_day and Rate(per_day, 86400)) if r)


def load_snapshot() -> Snapshot:
    """Read everything `/v1` needs in a few queries (sync; run in a thread)."""
    from endpoints.models import Endpoint
    from keys.models import APIKey
    from models_registry.models import Model

    endpoints = {}
    for e in Endpoint.objects.filter(is_active=True):
        try:
            credential, usable = e.api_key, True
        except Exception:
            log.exception("Endpoint %s: its credential cannot be decrypted; not serving it", e.name)
            credential, usable = "", False
        endpoints[e.pk] = EndpointInfo(
            e.pk,
            e.name,
            e.base_url.rstrip("/"),
            credential,
            usable,
            _rates(e.rpm_limit, e.day_limit),
            e.connect_timeout,
            e.first_byte_timeout,
            e.idle_timeout,
            e.total_timeout,
        )
    models = {
        m.name: ModelInfo(
            m.pk,
            m.name,
            m.upstream_name,
            m.capability,
            m.billing_unit,
            m.price_in,
            m.price_out,
            _rates(m.rpm_limit, m.day_limit),
            m.fallback.name if m.fallback and m.fallback.is_active else None,
            endpoints.get(m.endpoint_id),
            int(m.created_at.timestamp()),
        )
        for m in Model.objects.filter(is_active=True).select_related("fallback")
    }
    allowed: dict[int, set[str]] = {}
    through = APIKey.allowed_models.through.objects.values_list("apikey_id", "model__name")
    for key_id, name in through:
        allowed.setdefault(key_id, set()).add(name)
    keys = {}
    for k in APIKey.objects.select_related("owner"):
        try:
            rates = parse_spec(k.rate_limit)
        except ValueError:
            # Validated on save; a bad row (e.g. a raw SQL edit) fails closed.
            log.error(
                "API key %s has an invalid rate limit %r; refusing it", k.prefix, k.rate_limit
            )
            continue
        keys[k.digest] = KeyInfo(
            k.pk,
            k.prefix,
            k.owner_id,
            k.owner.username,
            k.is_active,
            k.owner.is_active,
            k.expires_at,
            k.log_content,
            rates,
            frozenset(k.allowed_capabilities or ()),
            frozenset(allowed.get(k.pk, ())),
        )
    return Snapshot(keys, models, load_balances())


def load_balances() -> dict[int, Decimal]:
    """The prepaid balances (users without one are not limited by balance)."""
    from accounts.models import User

    return dict(User.objects.filter(balance__isnull=False).values_list("pk", "balance"))


def change_marker() -> tuple:
    """A cheap value that changes whenever a row `/v1` depends on is saved or deleted."""
    from accounts.models import User
    from endpoints.models import Endpoint
    from keys.models import APIKey
    from models_registry.models import Model

    return tuple(
        tuple(model.objects.aggregate(n=Count("pk"), t=Max("updated_at")).values())
        for model in (APIKey, User, Model, Endpoint)
    )


class Catalog:
    """Holds the current snapshot and the balance charges not yet in it."""

    def __init__(self):
        self.snapshot: Snapshot | None = None
        # Every change bumps `_wanted`; a snapshot is current when it was read
        # after the latest change, i.e. `_loaded == _wanted`.
        self._wanted = 1
        self._loaded = 0
        self._marker = None
        self.available = True  # False while the database cannot be read
        self._lock = asyncio.Lock()
        self._unsettled: dict[int, Decimal] = {}
        self._settled: dict[int, Decimal] = {}

    def invalidate(self, **_signal_kwargs) -> None:
        """Mark the snapshot stale (safe from any thread: it only bumps a counter)."""
        self._wanted += 1

    async def get(self) -> Snapshot:
        """The current snapshot, rebuilt first if anything changed since it was read.

        A request that arrives while a rebuild started before the latest change
        is running waits for a newer one: it never sees data older than itself.
        """
        if self._loaded != self._wanted:
            await self.refresh()
        if self.snapshot is None:
            raise RuntimeError("no snapshot")
        return self.snapshot

    async def refresh(self) -> None:
        async with self._lock:
            wanted = self._wanted
            if self._loaded == wanted and self.snapshot is not None:
                return
            try:
                marker, snapshot = await run_db(self._load)
            except Exception as exc:
                # Taken as loaded all the same, so requests do not each retry the
                # database; the poll reloads once it reads a marker again.
                self._loaded = wanted
                self._went_unavailable(exc)
                return
            self._marker, self.snapshot, self._loaded = marker, snapshot, wanted
            self._settled = {}
            self._came_back()

    @staticmethod
    def _load():
        return change_marker(), load_snapshot()

    @staticmethod
    def _poll():
        return change_marker(), load_balances()

    async def watch(self) -> None:
        """Poll for changes made by other processes, and re-read balances."""
        while True:
            await asyncio.sleep(settings.AETHERGATE_CATALOG_POLL_SECONDS)
            try:
                marker, balances = await run_db(self._poll)
            except Exception as exc:
                self._went_unavailable(exc)
                continue
            self._came_back()
            if marker != self._marker or self.snapshot is None:
                self.invalidate()
                await self.refresh()
            elif self._loaded == self._wanted:
                # Read after every charge this process has seen settled (the
                # writer shares the database thread), so those leave the ledger.
                self.snapshot = replace(self.snapshot, balances=balances)
                self._settled = {}

    def _went_unavailable(self, exc: Exception) -> None:
        if self.available:
            log.error(
                "The database is unreachable (%s): serving known keys from the cache, "
                "unknown keys get 503",
                type(exc).__name__,
            )
        self.available = False

    def _came_back(self) -> None:
        if not self.available:
            log.warning("The database is reachable again")
        self.available = True

    # Balances: the snapshot's value, less charges made since it was read.
    def balance(self, user_id: int) -> Decimal | None:
        base = self.snapshot.balances.get(user_id) if self.snapshot else None
        if base is None:
            return None
        return base - self._unsettled.get(user_id, 0) - self._settled.get(user_id, 0)

    def charge(self, user_id: int, cost: Decimal) -> None:
        """A request's cost, counted until the log writer has stored it."""
        if cost:
            self._unsettled[user_id] = self._unsettled.get(user_id, 0) + cost

    def released(self, charges: dict[int, Decimal]) -> None:
        """The writer will never store these charges (their records were refused): forget them."""
        for user_id, cost in charges.items():
            self._unsettled[user_id] = self._unsettled.get(user_id, 0) - cost

    def settled(self, charges: dict[int, Decimal]) -> None:
        """The writer stored these charges: they are in the database, not yet in the snapshot."""
        for user_id, cost in charges.items():
            self._unsettled[user_id] = self._unsettled.get(user_id, 0) - cost
            self._settled[user_id] = self._settled.get(user_id, 0) + cost

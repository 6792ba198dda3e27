"""The in-process snapshot of keys, users, models and endpoints that `/v1` reads.

No request queries the database: the snapshot is rebuilt when a change is
signalled in this process (`aethergate.lib.changes`), announced by another
process over Redis, or seen by polling a cheap change marker. Balances are
re-read at every poll, and so is what each budget has spent this period, so
charges made by other processes count here within a poll.

If the database is unreachable the previous snapshot keeps serving: known
keys keep working, and `available` turns False so that unknown keys get a
503 rather than a 401 they could not be sure of.
"""

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from django.conf import settings

from aethergate.lib import periods
from aethergate.lib.budgets import counter
from aethergate.lib.db import run_db
from proxy.snapshot import Snapshot, change_marker, load_balances, load_snapshot, load_spent

log = logging.getLogger(__name__)


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

    def _poll(self):
        budgets = self.snapshot.budgets if self.snapshot else {}
        return change_marker(), load_balances(), load_spent(budgets) if budgets else {}

    async def watch(self) -> None:
        """Poll for changes made by other processes, and re-read balances."""
        while True:
            await asyncio.sleep(settings.AETHERGATE_CATALOG_POLL_SECONDS)
            try:
                marker, balances, spent = await run_db(self._poll)
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
                self.snapshot = replace(self.snapshot, balances=balances, spent=spent)
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

    # Balances and budget spend: the snapshot's values, with the charges made since
    # they were read. The ledger is keyed by user id (balances) and by budget counter
    # ("k<id>:<period start>", "u<id>:…"; only for keys and users with a budget), so a
    # charge made before a period began never counts in the next.
    def balance(self, user_id: int) -> Decimal | None:
        base = self.snapshot.balances.get(user_id) if self.snapshot else None
        if base is None:
            return None
        return base - self._unsettled.get(user_id, 0) - self._settled.get(user_id, 0)

    def spent(self, scope: str, start: datetime) -> Decimal:
        """What the budget `scope` has spent in the period from `start`, as far as this
        process knows: the database's (at the last poll) and its own charges since."""
        read = self.snapshot.spent.get(scope) if self.snapshot else None
        base = read[1] if read is not None and read[0] == start else Decimal(0)
        name = counter(scope, start)
        return base + self._unsettled.get(name, 0) + self._settled.get(name, 0)

    def charge(self, user_id: int, cost: Decimal, counters=()) -> None:
        """A request's cost to `user_id` and its budget `counters`, counted until the log
        writer has stored it."""
        if cost:
            self._add(self._unsettled, user_id, cost)
            for name in counters:
                self._add(self._unsettled, name, cost)

    def released(self, records) -> None:
        """The writer will never store these records: forget their charges."""
        for key, cost in self._charges(records):
            self._add(self._unsettled, key, -cost)

    def settled(self, records) -> None:
        """The writer stored these records: their charges are in the database, not yet in
        the snapshot."""
        for key, cost in self._charges(records):
            self._add(self._unsettled, key, -cost)
            self._add(self._settled, key, cost)

    def _charges(self, records):
        """(ledger key, cost) of each charge these records made."""
        budgets = self.snapshot.budgets if self.snapshot else {}
        for record in records:
            if not (record.cost and record.user_id):
                continue
            yield record.user_id, record.cost
            for scope in (f"k{record.api_key_id}", f"u{record.user_id}"):
                period = budgets.get(scope)
                if period is not None:
                    name = counter(scope, periods.current(period, record.created_at)[0])
                    if name in self._unsettled:
                        yield name, record.cost

    @staticmethod
    def _add(ledger: dict, key, amount: Decimal) -> None:
        left = ledger.get(key, 0) + amount
        if left:
            ledger[key] = left
        else:
            ledger.pop(key, None)

"""Soft budget limits: an alert, once per budget and period, to the log and a webhook.

A request that ends with its budget's spend at or past the soft limit makes
the alert: a `BudgetAlert` row, unique per (owner, period), is what makes it
once across processes and restarts; the process whose insert succeeded logs
it and, when AETHERGATE_BUDGET_WEBHOOK_URL is set, POSTs it there, signed,
retried with backoff until the receiver answers 2xx or MAX_ATTEMPTS are made.

The signature is `X-AetherGate-Signature: t=<unix time>,v1=<hex>`, the hex
being HMAC-SHA256 under AETHERGATE_BUDGET_WEBHOOK_SECRET of "<t>.<body>":
a receiver recomputes it, compares in constant time and refuses old `t`s.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import time
from decimal import Decimal

import aiohttp
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from aethergate.lib import metrics
from aethergate.lib.db import run_db

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
FIRST_RETRY_SECONDS = 2.0
SEND_TIMEOUT_SECONDS = 10.0
SIGNATURE_HEADER = "X-AetherGate-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Alerts:
    """Makes each soft-limit alert once and delivers it; `sleep` is the backoff's time seam."""

    def __init__(self, *, sleep=asyncio.sleep):
        self.sleep = sleep
        self._made: set[tuple[str, object]] = set()  # (scope, period start) done here
        self._tasks: set[asyncio.Task] = set()

    def check(self, key, budgets, after, cost: Decimal, catalog) -> None:
        """After a request on `key` settled: alert each budget now at or past its soft
        limit, unless this process already has this period. `after` is each budget's
        spend as Redis counted it (None: counted here, from the catalog)."""
        for (budget, start, end), spent in zip(budgets, after, strict=True):
            if budget.soft is None or (budget.scope, start) in self._made:
                continue
            if spent is None:
                spent = catalog.spent(budget.scope, start) + cost
            if spent >= budget.soft:
                self._made.add((budget.scope, start))
                task = asyncio.get_running_loop().create_task(self._make(budget, start, end, spent))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _make(self, budget, start, end, spent: Decimal) -> None:
        try:
            alert = await run_db(_insert, budget, start, spent)
        except Exception:
            log.exception("Could not record the budget alert for %s", budget.scope)
            return
        if alert is None:
            return  # another process made it
        metrics.BUDGET_ALERTS.inc()
        log.warning(
            "Budget alert: %s %s has spent %s this period, past its alert at %s (hard limit %s)",
            "API key" if budget.scope[0] == "k" else "user",
            budget.owner,
            spent,
            budget.soft,
            budget.limit if budget.limit is not None else "none",
            extra={"budget_scope": budget.scope, "period_start": start.isoformat()},
        )
        url = settings.AETHERGATE_BUDGET_WEBHOOK_URL
        if url:
            await self._deliver(url, alert, payload(budget, start, end, spent))

    async def _deliver(self, url: str, alert, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        secret = settings.AETHERGATE_BUDGET_WEBHOOK_SECRET
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                headers = {"Content-Type": "application/json"}
                if secret:
                    headers[SIGNATURE_HEADER] = signature(secret, int(time.time()), data)
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        delivered = 200 <= response.status < 300
                        reason = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    delivered, reason = False, type(exc).__name__
                await run_db(_attempted, alert.pk, delivered)
                if delivered:
                    metrics.series(metrics.BUDGET_WEBHOOKS, "delivered").inc()
                    return
                metrics.series(metrics.BUDGET_WEBHOOKS, "failed").inc()
                log.warning(
                    "Budget webhook attempt %d of %d failed (%s)", attempt, MAX_ATTEMPTS, reason
                )
                if attempt < MAX_ATTEMPTS:
                    await self.sleep(FIRST_RETRY_SECONDS * 2 ** (attempt - 1))
        log.error("Budget webhook not delivered after %d attempts", MAX_ATTEMPTS)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def payload(budget, start, end, spent: Decimal) -> dict:
    """The webhook's JSON body."""
    return {
        "type": "budget.soft_limit_reached",
        "owner_type": "api_key" if budget.scope[0] == "k" else "user",
        "owner_id": int(budget.scope[1:]),
        "owner": budget.owner,
        "period": budget.period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat() if end else None,
        "soft_limit": str(budget.soft),
        "hard_limit": None if budget.limit is None else str(budget.limit),
        "spent": str(spent),
        "at": timezone.now().isoformat(),
    }


def _insert(budget, start, spent):
    """The new BudgetAlert row, or None when this owner's period has one already."""
    from logs.models import BudgetAlert

    try:
        with transaction.atomic():
            return BudgetAlert.objects.create(
                scope=budget.scope[0],
                owner_id=int(budget.scope[1:]),
                owner_name=budget.owner,
                period_start=start,
                soft_limit=budget.soft,
                spent=spent,
            )
    except IntegrityError:
        return None


def _attempted(alert_id: int, delivered: bool) -> None:
    from django.db.models import F

    from logs.models import BudgetAlert

    BudgetAlert.objects.filter(pk=alert_id).update(
        attempts=F("attempts") + 1, delivered_at=timezone.now() if delivered else None
    )

"""`GET /v1/me`: what the calling key may do and has left: its limits, its budgets (spent and
reserved this period, when they reset) and its owner's balance.

Read from the snapshot and the shared counters, never from the database; the
key is the one that authenticated, so a key sees only its own and its owner's.
"""

from datetime import datetime

from django.conf import settings

from aethergate.lib import periods
from aethergate.lib.budgets import counter
from aethergate.lib.ratelimit import Rate
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope
from proxy.codec import dumps
from proxy.snapshot import BudgetInfo


def _rate(rate: Rate) -> dict:
    return {"limit": rate.limit, "window_seconds": rate.seconds}


def _time(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def _money(amount) -> str | None:
    return None if amount is None else str(amount)


async def _budget(runtime, budget: BudgetInfo, now: datetime) -> dict:
    start, end = periods.current(budget.period, now)
    seed = runtime.catalog.spent(budget.scope, start)
    spent, reserved = await runtime.budgets.read(counter(budget.scope, start), seed)
    return {
        "owner_type": "api_key" if budget.scope[0] == "k" else "user",
        "period": budget.period,
        "period_start": _time(None if budget.period == "none" else start),
        "resets_at": _time(end),
        "limit": _money(budget.limit),
        "soft_limit": _money(budget.soft),
        "spent": _money(spent),
        "reserved": _money(reserved),
        "remaining": _money(None if budget.limit is None else max(budget.limit - spent, 0)),
    }


async def describe(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    key = ex.key
    concurrent = None
    if key.max_concurrent:
        in_use = await runtime.leases.in_use(f"k{key.id}")
        concurrent = {"limit": key.max_concurrent, "in_use": in_use}
    body = {
        "object": "api_key",
        "prefix": key.prefix,
        "user": key.username,
        "expires_at": _time(key.expires_at),
        "models": sorted(key.models) or None,
        "capabilities": sorted(key.capabilities) or None,
        "limits": {
            "requests": [_rate(r) for r in key.rates if not r.tokens],
            "tokens": [_rate(r) for r in key.rates if r.tokens],
            "concurrent": concurrent,
        },
        "budgets": [await _budget(runtime, b, ex.created_at) for b in key.budgets],
        "balance": _money(runtime.catalog.balance(key.user_id)),
        "currency": settings.AETHERGATE_CURRENCY_SYMBOL,
    }
    await responder.json(200, dumps(body))

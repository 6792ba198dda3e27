"""What a request holds while it runs, and how it is given back: token reservations,
concurrency leases and budget reservations.

`reserve` estimates what a request may use before it is admitted; `take`
admits it against its concurrency limits and budgets (after its rate limits,
which reserve its tokens: `admission.limit`); `settle` runs in the request's
`finally`, whatever ended it, and replaces every reservation by what the
request used and cost, then tells `proxy.alerts` of a soft limit crossed.

A request with none of these limits holds nothing (`ex.held` stays None) and
pays for none of this.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings

from aethergate.lib import periods
from aethergate.lib.budgets import Hold, Refusal, Wanted, counter
from aethergate.lib.leases import Lease
from aethergate.lib.ratelimit import Decision
from proxy import admission, forms, usage
from proxy.snapshot import BudgetInfo, KeyInfo, ModelInfo

# Output caps a client may set, by API: Chat Completions (both names), Responses.
OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
DAY_SECONDS = 86400


@dataclass(slots=True)
class Held:
    """What one request holds until it ends."""

    tokens: int = 0  # reserved in each token limit
    cost: Decimal = Decimal(0)  # reserved in each budget
    decisions: list[tuple[Decision, int | None]] = field(default_factory=list)  # (…, endpoint)
    leases: list[Lease] = field(default_factory=list)  # the requested model's, its fallbacks'
    budget: Hold | None = None
    budgets: tuple[tuple[BudgetInfo, datetime, datetime | None], ...] = ()  # (…, start, end)
    counters: tuple[str, ...] = ()  # theirs this period (aethergate.lib.budgets.counter)


def needs_holding(key: KeyInfo, model: ModelInfo, models: dict[str, ModelInfo]) -> bool:
    """Whether a request of `key` on `model` falls under a token, concurrency or budget
    limit: its key's, its model's (their `holds`), or a model it may fall back to."""
    if key.holds or model.holds:
        return True
    if model.fallback is None and model.context_fallback is None:
        return False
    seen, todo = {model.name}, [model]
    while todo:
        current = todo.pop()
        for name in (current.fallback, current.context_fallback):
            if name is not None and name not in seen and name in models:
                if models[name].holds:
                    return True
                seen.add(name)
                todo.append(models[name])
    return False


def reserve(model: ModelInfo, payload: dict) -> tuple[int, Decimal]:
    """(tokens, cost) a request may use: its input, estimated, and its output cap (the
    client's max_tokens, else the model's output tokens reserved, else
    AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS); the cost at the model's prices, in its unit.

    Tokens are counted for token-billed models only: an image or a minute of
    audio is not a token, and token limits do not hold them.
    """
    unit = model.billing_unit
    tokens_in = tokens_out = 0
    if unit == "TOKEN":
        tokens_in = usage.estimate_tokens(usage.prompt_text(payload))
        if model.capability == "TEXT":
            tokens_out = output_cap(model, payload)
        cost = usage.cost(model, tokens_in, tokens_out)
    elif unit == "IMAGE":
        n = payload.get("n")
        cost = usage.cost(model, 0, n if type(n) is int and n > 0 else 1)
    elif unit == "MINUTE":
        upload = payload.get(forms.FILE_FIELD)
        seconds = upload.seconds() if isinstance(upload, forms.Upload) else None
        cost = usage.cost(model, seconds or 0, 0)
    else:
        cost = usage.cost(model, 0, 0)
    return tokens_in + tokens_out, cost


def output_cap(model: ModelInfo, payload: dict) -> int:
    for name in OUTPUT_CAPS:
        value = payload.get(name)
        if type(value) is int and value >= 0:
            return min(value, usage.MAX_COUNT)
    return model.max_output_tokens or settings.AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS


async def take(runtime, key: KeyInfo, model: ModelInfo, held: Held, now: datetime) -> None:
    """Take the request's concurrency leases, then reserve its cost in its budgets;
    429 or 402 when one is full (what it took by then, `settle` gives back)."""
    wanted = []
    if key.max_concurrent:
        wanted.append((f"k{key.id}", key.max_concurrent))
    if model.max_concurrent:
        wanted.append((f"m{model.id}", model.max_concurrent))
    if wanted:
        await _lease(runtime, wanted, held)
    if not key.budgets:
        return
    held.budgets = tuple((b, *periods.current(b.period, now)) for b in key.budgets)
    held.counters = tuple(counter(b.scope, start) for b, start, _ in held.budgets)
    found = await runtime.budgets.reserve(
        [
            Wanted(name, b.limit, runtime.catalog.spent(b.scope, start), _keep_seconds(now, end))
            for name, (b, start, end) in zip(held.counters, held.budgets, strict=True)
        ],
        held.cost,
    )
    if isinstance(found, Refusal):
        budget, _, end = held.budgets[found.index]
        raise admission.budget_refused(
            budget, end, spent=found.spent, reserved=found.reserved, reserving=held.cost
        )
    held.budget = found


async def take_fallback(runtime, model: ModelInfo, held: Held) -> None:
    """Take a fallback model's concurrency lease before it is tried; 429 if it is full."""
    if model.max_concurrent:
        await _lease(runtime, [(f"m{model.id}", model.max_concurrent)], held)


async def _lease(runtime, wanted: list[tuple[str, int]], held: Held) -> None:
    lease = await runtime.leases.acquire(wanted)
    if not isinstance(lease, Lease):
        scope, limit = wanted[lease]
        raise admission.concurrency_refused(scope[0], limit)
    held.leases.append(lease)


def _keep_seconds(now: datetime, end: datetime | None) -> int:
    """How long a period's counter must live: to its end and a day more (a year, for a
    budget without periods: it is seeded again from the database when it expires)."""
    if end is None:
        return 365 * DAY_SECONDS
    return int((end - now).total_seconds()) + DAY_SECONDS


async def settle(runtime, ex) -> None:
    """Give back everything `ex` holds: its token reservations become the tokens used,
    its lease is released, its budget reservation becomes its cost."""
    held: Held = ex.held
    used = ex.input_units + ex.output_units if ex.model and ex.model.billing_unit == "TOKEN" else 0
    endpoint = ex.deployment.endpoint.id if ex.deployment else None
    try:
        for decision, on_endpoint in held.decisions:
            # An endpoint's reservation counts only where the answer came from.
            tokens = used if on_endpoint is None or on_endpoint == endpoint else 0
            await runtime.limiter.settle(decision, tokens)
    finally:
        for lease in held.leases:
            await runtime.leases.release(lease)
        if held.budget is not None:
            cost = ex.charge()
            after = await runtime.budgets.settle(held.budget, cost)
            runtime.alerts.check(ex.key, held.budgets, after, cost, runtime.catalog)

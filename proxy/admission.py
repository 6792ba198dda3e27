"""Whether a key may make this call, in the documented order: model, allowed, capability,
request and token limits, concurrency, budget, balance. Each refusal is an APIError
naming its reason.

`find_model`, `admit`, `check_balance` and the refusals are pure; `limit` asks the
limiter; `proxy.meter` takes the leases and budget reservations.
"""

import math
from decimal import Decimal

from django.conf import settings

from aethergate.lib.money import format_money
from aethergate.lib.ratelimit import Decision
from logs.models import Outcome
from proxy import errors
from proxy.errors import APIError
from proxy.snapshot import EndpointInfo, KeyInfo, ModelInfo, Snapshot

# What each limiter scope prefix stands for, in the 429's message.
TIERS = {"k": "this API key", "m": "this model", "e": "this model's endpoint"}
MAX_RETRY_AFTER_SECONDS = 120


def find_model(snapshot: Snapshot, name: str) -> ModelInfo:
    model = snapshot.models.get(name)
    if model is None:
        raise errors.model_not_found(name)
    return model


def admit(key: KeyInfo, model: ModelInfo, capability: str) -> None:
    """Refuse a model the key may not use, or one that does not do this operation's capability."""
    if key.models and model.name not in key.models:
        raise errors.forbidden(
            f"This API key is not allowed to use the model '{model.name}'.", "model_not_allowed"
        )
    if model.capability != capability:
        raise errors.bad_request(
            f"The model '{model.name}' does not support this endpoint "
            f"(its capability is {model.capability}).",
            code="unsupported_capability",
            param="model",
        )
    if key.capabilities and capability not in key.capabilities:
        raise errors.forbidden(
            f"This API key is not allowed the {capability} capability.",
            "capability_not_allowed",
        )


def checks(key: KeyInfo | None, model: ModelInfo) -> list[tuple[str, object]]:
    """The (scope, rate) pairs a request counts against on admission: its key's and its model's.

    Its endpoint's are counted when a deployment is picked (`limit_endpoint`).
    """
    found = [(f"k{key.id}", r) for r in key.rates] if key else []
    found += [(f"m{model.id}", r) for r in model.rates]
    return found


async def limit(limiter, key: KeyInfo | None, model: ModelInfo, tokens: int = 0) -> Decision:
    """Count the request against every limit it falls under, reserving `tokens` in the
    token limits; 429 if one is reached.

    `key` is None for a fallback model: the key was counted once already.
    """
    return refused_unless_allowed(await limiter.hit(checks(key, model), tokens), tokens)


async def limit_endpoint(
    limiter, endpoint: EndpointInfo, headers: dict[str, str], tokens: int = 0
) -> Decision:
    """Count an attempt against its endpoint's limits; 429 if one is reached.

    `headers` (the answer's `x-ratelimit-*`) then describe the endpoint's tiers
    where they are the tightest.
    """
    decision = await limiter.hit([(f"e{endpoint.id}", r) for r in endpoint.rates], tokens)
    refused_unless_allowed(decision, tokens)
    found = ratelimit_headers(decision)
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if f"x-ratelimit-limit-{kind}" in found and (
            remaining is None or int(found[f"x-ratelimit-remaining-{kind}"]) < int(remaining)
        ):
            for part in ("limit", "remaining", "reset"):
                name = f"x-ratelimit-{part}-{kind}"
                headers[name] = found[name]
    return decision


def refused_unless_allowed(decision: Decision, tokens: int = 0) -> Decision:
    """`decision`, or the 429 that says which limit refused it, in requests or tokens."""
    if decision.allowed:
        return decision
    tier = TIERS[decision.scope[0]]
    if decision.retry_after == math.inf:
        raise APIError(
            429,
            f"Request too large for {tier}'s limit of {decision.limit} tokens per window: "
            f"it reserves {tokens} (its input, estimated, and its max_tokens). Reduce the "
            "input or max_tokens.",
            type="tokens",
            code="rate_limit_exceeded",
            outcome=Outcome.RATE_LIMITED,
        )
    retry = min(MAX_RETRY_AFTER_SECONDS, max(1, int(decision.retry_after + 0.999)))
    unit = "tokens" if decision.tokens else "requests"
    raise APIError(
        429,
        f"Rate limit reached for {tier}: {decision.limit} {unit} per window. Retry in {retry} s.",
        type=unit,
        code="rate_limit_exceeded",
        outcome=Outcome.RATE_LIMITED,
        headers={"retry-after": str(retry), **ratelimit_headers(decision)},
    )


def concurrency_refused(tier: str, limit: int) -> APIError:
    """The 429 for a request over a concurrency limit: retried once one in flight ends."""
    return APIError(
        429,
        f"Too many concurrent requests for {TIERS[tier]}: at most {limit} at once. Retry "
        "when one of them has finished.",
        type="requests",
        code="concurrency_limit_exceeded",
        outcome=Outcome.RATE_LIMITED,
        headers={"retry-after": "1"},
    )


def budget_refused(
    budget, period_end, *, spent: Decimal, reserved: Decimal, reserving: Decimal
) -> APIError:
    """The 402 for a request whose reserved cost would take `budget` (a BudgetInfo) past
    its hard limit."""
    owner = "This API key's" if budget.scope[0] == "k" else "Your account's"
    per = "" if budget.period == "none" else f" per {budget.period}"
    message = f"{owner} budget of {format_money(budget.limit)}{per} has {format_money(spent)} spent"
    if reserved:
        message += f" and {format_money(reserved)} held by requests in progress"
    message += (
        f"; this request may cost up to {format_money(reserving)} (its input, estimated, "
        "and its max_tokens), more than is left."
    )
    if period_end is not None:
        message += f" It resets at {period_end.isoformat().replace('+00:00', 'Z')}."
    return APIError(
        402,
        message,
        type="insufficient_quota",
        code="budget_exceeded",
        outcome=Outcome.BUDGET_EXCEEDED,
    )


def check_balance(balance: Decimal | None) -> None:
    """402 once a prepaid balance is used up; no balance (None) is never limited by it."""
    if balance is not None and balance <= 0:
        raise APIError(
            402,
            "Your balance is exhausted; add credit to continue.",
            type="insufficient_quota",
            code="insufficient_balance",
            outcome=Outcome.INSUFFICIENT_BALANCE,
        )


def check_priced(model: ModelInfo, metered: bool) -> None:
    """403 `model_unpriced` for a `metered` request (its key or owner has a budget or a
    prepaid balance) on a model without prices, when AETHERGATE_UNPRICED_MODELS is "refuse".

    403, not 402: the refusal is the operator's configuration, which no credit
    the client adds can change (402 says "pay", and a client may do just that
    and retry); the model must be priced or marked free. Unmetered requests,
    and every request under "serve", go on and are logged with their cost unknown.
    """
    if model.unpriced and metered and settings.AETHERGATE_UNPRICED_MODELS == "refuse":
        raise errors.forbidden(
            f"The model '{model.name}' has no price yet, and this key's spending is metered: "
            "ask the gateway's operator to price it.",
            "model_unpriced",
        )


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """The `x-ratelimit-*` headers of the tightest request and token tiers, as OpenAI
    sends them (the reset as a duration, "1.5s")."""
    found = {}
    if decision.limit and not (decision.tokens and not decision.allowed):
        found["x-ratelimit-limit-requests"] = str(decision.limit)
        found["x-ratelimit-remaining-requests"] = str(decision.remaining)
        found["x-ratelimit-reset-requests"] = f"{max(decision.reset, 0):.3f}s"
    if decision.token_limit or (decision.tokens and not decision.allowed):
        limit = decision.token_limit or decision.limit
        found["x-ratelimit-limit-tokens"] = str(limit)
        found["x-ratelimit-remaining-tokens"] = str(decision.token_remaining)
        reset = decision.token_reset if decision.allowed else decision.reset
        found["x-ratelimit-reset-tokens"] = f"{max(reset, 0):.3f}s"
    return found

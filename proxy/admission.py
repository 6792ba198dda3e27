"""Whether a key may make this call, in the documented order: model, allowed, capability,
limits, balance. Each refusal is an APIError naming its reason.

`find_model`, `admit` and `check_balance` are pure; `limit` asks the limiter.
"""

from decimal import Decimal

from django.conf import settings

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


async def limit(limiter, key: KeyInfo | None, model: ModelInfo) -> Decision:
    """Count the request against every limit it falls under; 429 if one is reached.

    `key` is None for a fallback model: the key was counted once already.
    """
    return refused_unless_allowed(await limiter.hit(checks(key, model)))


async def limit_endpoint(limiter, endpoint: EndpointInfo, headers: dict[str, str]) -> None:
    """Count an attempt against its endpoint's limits; 429 if one is reached.

    `headers` (the answer's `x-ratelimit-*`) then describe the endpoint's tier
    if it is the tightest.
    """
    decision = await limiter.hit([(f"e{endpoint.id}", r) for r in endpoint.rates])
    refused_unless_allowed(decision)
    remaining = headers.get("x-ratelimit-remaining-requests")
    if remaining is None or decision.remaining < int(remaining):
        headers.update(ratelimit_headers(decision))


def refused_unless_allowed(decision: Decision) -> Decision:
    """`decision`, or the 429 that says which limit refused it."""
    if not decision.allowed:
        retry = min(MAX_RETRY_AFTER_SECONDS, max(1, int(decision.retry_after + 0.999)))
        raise APIError(
            429,
            f"Rate limit reached for {TIERS[decision.scope[0]]}: {decision.limit} requests "
            f"per window. Retry in {retry} s.",
            type="requests",
            code="rate_limit_exceeded",
            outcome=Outcome.RATE_LIMITED,
            headers={"retry-after": str(retry), **ratelimit_headers(decision)},
        )
    return decision


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
    if not decision.limit:
        return {}
    return {
        "x-ratelimit-limit-requests": str(decision.limit),
        "x-ratelimit-remaining-requests": str(decision.remaining),
        "x-ratelimit-reset-requests": f"{max(decision.reset, 0):.3f}s",
    }

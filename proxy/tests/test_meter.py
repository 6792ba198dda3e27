"""What a request reserves before it is admitted, and which requests hold anything (pure)."""

from decimal import Decimal

import pytest

from aethergate.lib.ratelimit import Decision, Rate
from proxy import admission, meter
from proxy.snapshot import BudgetInfo
from proxy.tests import fakes

HELLO = [{"role": "user", "content": "x" * 40}]  # estimated at 10 tokens


@pytest.mark.parametrize(
    ("fields", "tokens"),
    [
        ({"max_tokens": 100}, 110),
        ({"max_completion_tokens": 30, "max_tokens": 100}, 40),  # the newer name first
        ({"max_output_tokens": 7}, 17),  # the Responses API's
        ({"max_tokens": -5}, 10 + 4096),  # not a cap: the default
        ({"max_tokens": True}, 10 + 4096),
        ({}, 10 + 4096),
    ],
)
def test_a_request_reserves_its_estimated_input_and_its_output_cap(fields, tokens, settings):
    settings.AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS = 4096
    model = fakes.model_info(price_in=Decimal("0.001"), price_out=Decimal("0.002"))

    reserved, cost = meter.reserve(model, {"messages": HELLO, **fields})

    assert reserved == tokens
    assert cost == 10 * Decimal("0.001") + (tokens - 10) * Decimal("0.002")


def test_the_models_reserved_output_comes_before_the_default():
    model = fakes.model_info(max_output_tokens=64)
    assert meter.reserve(model, {"messages": HELLO})[0] == 10 + 64


def test_embeddings_reserve_their_input_only():
    model = fakes.model_info(capability="EMBEDDING")
    assert meter.reserve(model, {"input": "x" * 40, "max_tokens": 50})[0] == 10


def test_media_reserve_no_tokens_but_their_price():
    images = fakes.model_info(billing_unit="IMAGE", price_out=Decimal("0.04"))
    per_request = fakes.model_info(billing_unit="REQUEST", price_in=Decimal("0.5"))

    assert meter.reserve(images, {"prompt": "a cat", "n": 3}) == (0, Decimal("0.12"))
    assert meter.reserve(images, {"prompt": "a cat"}) == (0, Decimal("0.04"))
    assert meter.reserve(per_request, {"input": "hello"}) == (0, Decimal("0.5"))


def test_only_requests_under_a_token_concurrency_or_budget_limit_hold_anything():
    plain, models = fakes.model_info(), {}
    tokens = fakes.model_info(name="t", rates=(Rate(1000, 60, True),))
    behind = fakes.model_info(name="b", endpoint=fakes.endpoint_info(rates=(Rate(1000, 60, True),)))
    requests_only = fakes.key_info(rate_limit="60/m")
    budget = BudgetInfo("k7", "k", Decimal(1), None, "day")

    assert not meter.needs_holding(requests_only, plain, models)
    assert meter.needs_holding(fakes.key_info(rate_limit="60/m,10tok/m"), plain, models)
    assert meter.needs_holding(fakes.key_info(max_concurrent=2), plain, models)
    assert meter.needs_holding(fakes.key_info(budgets=(budget,)), plain, models)
    assert meter.needs_holding(requests_only, tokens, models)
    assert meter.needs_holding(requests_only, behind, models)
    assert meter.needs_holding(requests_only, fakes.model_info(max_concurrent=1), models)


def test_a_fallback_with_a_token_limit_makes_its_model_hold():
    limited = fakes.model_info(name="limited", rates=(Rate(1000, 60, True),))
    first = fakes.model_info(name="first", fallback="second")
    second = fakes.model_info(name="second", context_fallback="limited")
    models = {m.name: m for m in (first, second, limited)}

    assert meter.needs_holding(fakes.key_info(), first, models)
    assert not meter.needs_holding(fakes.key_info(), second, {"second": second})


def test_headers_name_the_tightest_request_and_token_tiers():
    decision = Decision(True, 60, 59, 1.0, token_limit=1000, token_remaining=400, token_reset=2.5)

    assert admission.ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1.000s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "2.500s",
    }


def test_a_token_refusal_says_so_in_its_headers_and_type():
    refused = Decision(False, 1000, 0, 12.0, 12.0, "m5", True)

    with pytest.raises(admission.APIError) as error:
        admission.refused_unless_allowed(refused, 300)

    assert error.value.type == "tokens" and error.value.status == 429
    assert "this model: 1000 tokens per window" in error.value.message
    assert error.value.headers["x-ratelimit-limit-tokens"] == "1000"
    assert error.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-limit-requests" not in error.value.headers
    assert error.value.headers["retry-after"] == "12"

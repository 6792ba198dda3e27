"""Usage counts and costs: what an upstream may report; bounds that keep every record storable."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from proxy import usage


@pytest.mark.parametrize(
    "reported, counted",
    [
        ({"prompt_tokens": 12, "completion_tokens": 5}, (12, 5)),
        ({"prompt_tokens": 0, "completion_tokens": 0}, (0, 0)),
        ({"prompt_tokens": 7}, (7, 0)),  # embeddings report no completion
        ({"prompt_tokens": 7, "completion_tokens": None}, (7, 0)),
        ({"prompt_tokens": 2**31 - 1, "completion_tokens": 2**31 - 1}, (2**31 - 1, 2**31 - 1)),
    ],
)
def test_it_takes_counts_that_fit_the_columns(reported, counted):
    assert usage.from_upstream(reported) == counted


@pytest.mark.parametrize(
    "absurd", [2**63, 2**31, -1, -1_000_000, -1e6, 12.0, 12.5, "12", True, False, [], {}]
)
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_it_refuses_a_usage_object_with_any_count_that_is_not_a_storable_int(absurd, field):
    reported = {"prompt_tokens": 3, "completion_tokens": 4, field: absurd}

    assert usage.from_upstream(reported) is None


@pytest.mark.parametrize(
    "reported", [None, 5, "usage", [], {}, {"prompt_tokens": None, "completion_tokens": 4}]
)
def test_it_finds_no_usage_in_what_is_not_a_usage_object(reported):
    assert usage.from_upstream(reported) is None


def test_estimates_and_milliseconds_stay_within_the_columns():
    assert usage.estimate_tokens("") == 0
    assert usage.estimate_tokens("abcde") == 2
    assert usage.milliseconds(0.0123) == 12
    assert usage.milliseconds(10**9) == usage.MAX_COUNT


@dataclass
class Model:
    billing_unit: str = "TOKEN"
    price_in: Decimal = Decimal("0")
    price_out: Decimal = Decimal("0")


def test_cost_is_capped_at_what_the_money_column_holds():
    assert usage.cost(Model(price_in=Decimal("0.001"), price_out=Decimal("0.002")), 10, 5) == (
        Decimal("0.02")
    )
    top = Decimal("9999999999.9999999999")
    assert usage.MAX_COST == top
    assert usage.cost(Model(price_in=top, price_out=top), usage.MAX_COUNT, usage.MAX_COUNT) == top
    assert usage.cost(Model(billing_unit="REQUEST", price_in=Decimal("2")), 0, 0) == 2

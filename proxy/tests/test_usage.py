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


@pytest.mark.parametrize(
    ("unit", "units", "cost"),
    [
        ("TOKEN", (10, 5), Decimal("10") * 3 + 5 * 7),
        ("IMAGE", (0, 2), 2 * Decimal("7")),  # the output price per image; input not billed
        ("IMAGE", (99, 2), 2 * Decimal("7")),
        ("MINUTE", (90, 0), Decimal("1.5") * 3),  # 90 s are 1.5 minutes
        ("MINUTE", (1, 0), Decimal(3) / 60),
        ("REQUEST", (1000, 1000), Decimal("3")),  # once, whatever the units
    ],
)
def test_each_billing_unit_has_its_own_rule(unit, units, cost):
    model = Model(billing_unit=unit, price_in=Decimal("3"), price_out=Decimal("7"))

    assert usage.cost(model, *units) == cost


@pytest.mark.parametrize(
    ("unit", "answer", "counted"),
    [
        ("IMAGE", {"data": [{}, {}, {}]}, (0, 3, False)),
        ("REQUEST", {"data": [{}]}, (0, 1, False)),
        (
            "TOKEN",
            {"data": [{}], "usage": {"input_tokens": 9, "output_tokens": 40}},
            (9, 40, False),
        ),
        ("TOKEN", {"data": [{}], "usage": {"input_tokens": 9}}, (3, 0, True)),
        ("TOKEN", {"data": [{}]}, (3, 0, True)),  # the prompt's 10 characters, estimated
    ],
)
def test_an_images_answer_is_counted_in_its_models_unit(unit, answer, counted):
    assert usage.of_images(Model(billing_unit=unit), answer, "a red fox!") == counted


class Upload:
    def __init__(self, seconds):
        self._seconds = seconds

    def seconds(self):
        return self._seconds


@pytest.mark.parametrize(
    ("unit", "answer", "measured", "counted"),
    [
        ("MINUTE", {"text": "hi", "duration": 90.2}, 95, (91, 0, False)),
        (
            "MINUTE",
            {"text": "hi", "usage": {"type": "duration", "seconds": 12}},
            95,
            (12, 0, False),
        ),
        ("MINUTE", {"text": "hi"}, 95, (95, 0, True)),  # measured by the gateway
        ("MINUTE", "1\n00:00:00,000 --> 00:00:02,000\nhi\n", 2, (2, 0, True)),
        ("MINUTE", {"text": "hi", "duration": -1}, 95, (95, 0, True)),
        ("MINUTE", {"text": "hi", "duration": "90.5"}, 95, (91, 0, False)),  # vLLM's, as text
        ("MINUTE", {"text": "hi", "duration": "long"}, 95, (95, 0, True)),
        ("REQUEST", {"text": "hi", "duration": 3}, 95, (3, 0, False)),
        (
            "TOKEN",
            {
                "text": "hi",
                "usage": {
                    "type": "tokens",
                    "input_tokens": 50,
                    "output_tokens": 2,
                    "total_tokens": 52,
                },
            },
            95,
            (50, 2, False),
        ),
        ("TOKEN", {"text": "hello world!"}, 95, (0, 3, True)),
    ],
)
def test_a_transcript_is_counted_in_its_models_unit(unit, answer, measured, counted):
    assert usage.of_transcript(Model(billing_unit=unit), answer, Upload(measured)) == counted

"""Usage counts and costs: what an upstream may report; bounds that keep every record storable."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from proxy import usage
from proxy.usage import Usage


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
    assert usage.from_upstream(reported) == Usage(*counted)


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


# --------------------------------------------------------------------------- components

# Hostile component values: each must be dropped (0), never crash or reach a column.
ABSURD_PARTS = [2**63, 2**31, -1, -1e6, 3.0, 2.5, "3", True, False, [], {"n": 3}]


@pytest.mark.parametrize(
    "reported, counted",
    [
        # OpenAI (vLLM, llama.cpp server, Ollama alike): cached tokens are part of the prompt.
        (
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 120},
            },
            Usage(2006, 300, cache_read=1920, reasoning=120),
        ),
        # The spec's cache_write_tokens (OpenRouter too).
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 80},
            },
            Usage(100, 1, cache_read=10, cache_write=80),
        ),
        # DeepSeek: prompt_tokens is hits + misses.
        (
            {
                "prompt_tokens": 50,
                "completion_tokens": 4,
                "prompt_cache_hit_tokens": 32,
                "prompt_cache_miss_tokens": 18,
            },
            Usage(50, 4, cache_read=32),
        ),
        # Anthropic's names in a chat usage (some OpenAI-compatible proxies): parts of it.
        (
            {
                "prompt_tokens": 300,
                "completion_tokens": 9,
                "cache_read_input_tokens": 200,
                "cache_creation_input_tokens": 50,
            },
            Usage(300, 9, cache_read=200, cache_write=50),
        ),
        # OpenAI's own name wins over another's.
        (
            {
                "prompt_tokens": 300,
                "completion_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 100},
                "cache_read_input_tokens": 200,
            },
            Usage(300, 9, cache_read=100),
        ),
        # Zeros and nulls as servers send them when nothing was cached.
        (
            {
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "prompt_tokens_details": None,
                "completion_tokens_details": {"reasoning_tokens": None},
            },
            Usage(12, 5),
        ),
        ({"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}, Usage(12, 0)),
    ],
)
def test_a_chat_usage_is_split_into_its_components(reported, counted):
    assert usage.from_upstream(reported) == counted


def test_llama_cpp_servers_timings_count_the_cache_when_the_usage_does_not():
    reported = {"prompt_tokens": 40, "completion_tokens": 6}
    timings = {"cache_n": 32, "prompt_n": 8, "predicted_n": 6, "prompt_ms": 1.5}

    assert usage.from_upstream(reported, timings) == Usage(40, 6, cache_read=32)
    detailed = {**reported, "prompt_tokens_details": {"cached_tokens": 30}}
    assert usage.from_upstream(detailed, timings) == Usage(40, 6, cache_read=30)
    assert usage.from_upstream(reported, {"cache_n": 41}) == Usage(40, 6)  # more than the prompt
    assert usage.from_upstream(None, timings) is None  # timings alone are no usage


@pytest.mark.parametrize("absurd", ABSURD_PARTS)
@pytest.mark.parametrize(
    "where",
    [
        ("prompt_tokens_details", "cached_tokens"),
        ("prompt_tokens_details", "cache_write_tokens"),
        (None, "prompt_cache_hit_tokens"),
        (None, "cache_read_input_tokens"),
        (None, "cache_creation_input_tokens"),
        ("completion_tokens_details", "reasoning_tokens"),
    ],
)
def test_a_component_that_is_not_a_storable_count_is_dropped_and_the_totals_kept(absurd, where):
    reported = {"prompt_tokens": 30, "completion_tokens": 4}
    parent, name = where
    if parent:
        reported[parent] = {name: absurd}
    else:
        reported[name] = absurd

    assert usage.from_upstream(reported) == Usage(30, 4)


@pytest.mark.parametrize("details", [5, "x", [], True])
def test_details_that_are_not_objects_are_ignored(details):
    reported = {"prompt_tokens": 30, "completion_tokens": 4, "prompt_tokens_details": details,
                "completion_tokens_details": details}  # fmt: skip

    assert usage.from_upstream(reported) == Usage(30, 4)


def test_components_larger_than_their_total_are_dropped():
    def parsed(cached, written, reasoning):
        return usage.from_upstream(
            {
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            }
        )

    assert parsed(101, 0, 11) == Usage(100, 10)
    assert parsed(100, 0, 10) == Usage(100, 10, cache_read=100, reasoning=10)
    # Read and written together more than the prompt: what is left over for the write.
    assert parsed(60, 50, 0) == Usage(100, 10, cache_read=60)
    assert parsed(60, 40, 0) == Usage(100, 10, cache_read=60, cache_write=40)


@pytest.mark.parametrize(
    "reported, counted",
    [
        (
            {
                "input_tokens": 5000,
                "input_tokens_details": {"cached_tokens": 4096, "cache_write_tokens": 0},
                "output_tokens": 700,
                "output_tokens_details": {"reasoning_tokens": 512},
                "total_tokens": 5700,
            },
            Usage(5000, 700, cache_read=4096, reasoning=512),
        ),
        (
            {
                "input_tokens": 90,
                "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 70},
                "output_tokens": 1,
            },
            Usage(90, 1, cache_read=10, cache_write=70),
        ),
        ({"input_tokens": 9, "output_tokens": 3}, Usage(9, 3)),
        ({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 10}}, Usage(9, 0)),
        (
            {
                "input_tokens": 9,
                "output_tokens": 3,
                "input_tokens_details": {"cached_tokens": -1, "cache_write_tokens": 2.0},
                "output_tokens_details": {"reasoning_tokens": "3"},
            },
            Usage(9, 3),
        ),
    ],
)
def test_a_responses_usage_is_split_into_its_components(reported, counted):
    assert usage.from_responses(reported) == counted


@pytest.mark.parametrize(
    "reported",
    [None, [], {}, {"prompt_tokens": 9, "completion_tokens": 3},  # chat's names are not these
     {"input_tokens": 9.0, "output_tokens": 3}, {"input_tokens": 9, "output_tokens": -3},
     {"input_tokens": True, "output_tokens": 3}, {"input_tokens": 2**31, "output_tokens": 3}],
)  # fmt: skip
def test_a_responses_usage_with_unusable_totals_is_none(reported):
    assert usage.from_responses(reported) is None


@pytest.mark.parametrize(
    "reported, counted",
    [
        # input_tokens leaves the cache out: all input is the three added.
        (
            {
                "input_tokens": 21,
                "cache_read_input_tokens": 1800,
                "cache_creation_input_tokens": 248,
                "output_tokens": 393,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 248,
                    "ephemeral_1h_input_tokens": 0,
                },
            },
            Usage(2069, 393, cache_read=1800, cache_write=248),
        ),
        ({"input_tokens": 12, "output_tokens": 6}, Usage(12, 6)),
        (
            {"input_tokens": 12, "output_tokens": 6, "cache_read_input_tokens": None,
             "cache_creation_input_tokens": None},
            Usage(12, 6),
        ),
        # message_start's usage: output not counted yet.
        ({"input_tokens": 12, "cache_read_input_tokens": 3}, Usage(15, 0, cache_read=3)),
    ],
)  # fmt: skip
def test_a_messages_usage_adds_the_cache_to_the_input(reported, counted):
    assert usage.from_messages(reported) == counted


@pytest.mark.parametrize("absurd", ABSURD_PARTS)
def test_a_messages_cache_count_that_is_not_storable_is_dropped(absurd):
    reported = {"input_tokens": 12, "output_tokens": 6, "cache_read_input_tokens": absurd,
                "cache_creation_input_tokens": absurd}  # fmt: skip

    assert usage.from_messages(reported) == Usage(12, 6)


def test_a_messages_cache_count_that_would_overflow_the_column_is_dropped():
    top = usage.MAX_COUNT
    reported = {"input_tokens": top - 10, "output_tokens": 1, "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 1}  # fmt: skip

    assert usage.from_messages(reported) == Usage(top, 1, cache_read=10)


@pytest.mark.parametrize(
    "reported",
    [None, {}, {"output_tokens": 3}, {"input_tokens": -1, "output_tokens": 3},
     {"input_tokens": 3, "output_tokens": 1.5}, {"input_tokens": "3", "output_tokens": 1}],
)  # fmt: skip
def test_a_messages_usage_with_unusable_totals_is_none(reported):
    assert usage.from_messages(reported) is None


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
    price_cache_read: Decimal = Decimal("0")
    price_cache_write: Decimal = Decimal("0")


def test_cost_is_capped_at_what_the_money_column_holds():
    assert usage.cost(Model(price_in=Decimal("0.001"), price_out=Decimal("0.002")), 10, 5) == (
        Decimal("0.02")
    )
    top = Decimal("9999999999.9999999999")
    assert usage.MAX_COST == top
    assert usage.cost(Model(price_in=top, price_out=top), usage.MAX_COUNT, usage.MAX_COUNT) == top
    assert usage.cost(Model(billing_unit="REQUEST", price_in=Decimal("2")), 0, 0) == 2


def test_cached_input_is_charged_at_the_cache_prices_and_reasoning_as_output():
    model = Model(
        price_in=Decimal("0.000003"),
        price_out=Decimal("0.000015"),
        price_cache_read=Decimal("0.0000003"),
        price_cache_write=Decimal("0.00000375"),
    )

    # 2069 in: 21 uncached, 1800 read from the cache, 248 written to it; 393 out.
    charged = usage.cost(model, 2069, 393, cache_read=1800, cache_write=248)

    assert charged == (
        21 * Decimal("0.000003")
        + 1800 * Decimal("0.0000003")
        + 248 * Decimal("0.00000375")
        + 393 * Decimal("0.000015")
    )
    assert charged == Decimal("0.007428")
    assert usage.cost(model, 2069, 393) == 2069 * Decimal("0.000003") + 393 * Decimal("0.000015")


def test_cache_counts_larger_than_the_input_never_make_a_negative_charge():
    model = Model(price_in=Decimal(1), price_out=Decimal(1), price_cache_read=Decimal(0))

    assert usage.cost(model, 5, 0, cache_read=9) == 0


def test_the_cache_counts_change_nothing_for_other_units():
    for unit in ("IMAGE", "MINUTE", "REQUEST"):
        model = Model(billing_unit=unit, price_in=Decimal(3), price_out=Decimal(7))
        assert usage.cost(model, 90, 2, cache_read=90) == usage.cost(model, 90, 2)


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
    input_units, output_units, estimated = counted

    assert usage.of_images(Model(billing_unit=unit), answer, "a red fox!") == (
        Usage(input_units, output_units),
        estimated,
    )


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
    input_units, output_units, estimated = counted

    assert usage.of_transcript(Model(billing_unit=unit), answer, Upload(measured)) == (
        Usage(input_units, output_units),
        estimated,
    )

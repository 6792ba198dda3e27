"""Usage components end to end: an upstream's cached and reasoning tokens, through the live
gateway to the stand-in, are recorded in the request log and charged at the cache prices; a
model without prices is logged with its cost unknown, never silently free."""

import json
from decimal import Decimal

import pytest

from aethergate.testing import wait_for_logs
from proxy.tests.test_forwarding import data_events, post, stream_lines
from proxy.tests.upstream import PREFIX

# A long system prompt, so that most of the prompt can be "cached": 60 + 2 words, plus the
# stand-in's 3, are 65 prompt tokens.
MESSAGES = [
    {"role": "system", "content": " ".join(["rules"] * 60)},
    {"role": "user", "content": "hi there"},
]
PROMPT_TOKENS = 65
ANSWER_TOKENS = len((PREFIX + "hi there").split())  # 5, non-stream
CHUNKS = 4  # a stream's completion tokens
CACHED, WRITTEN, REASONING = 48, 8, 2
UPSTREAM = f"echo+cached={CACHED}+cachewrite={WRITTEN}+reasoning={REASONING}+chunks={CHUNKS}"
# Per token, as stored: $3, $0.30, $3.75 and $15 per 1M tokens.
PRICES = {
    "price_in": Decimal("0.000003"),
    "price_cache_read": Decimal("0.0000003"),
    "price_cache_write": Decimal("0.00000375"),
    "price_out": Decimal("0.000015"),
}
BALANCE = Decimal("10")


def cost_of(output_tokens: int) -> Decimal:
    uncached = PROMPT_TOKENS - CACHED - WRITTEN
    return (
        uncached * PRICES["price_in"]
        + CACHED * PRICES["price_cache_read"]
        + WRITTEN * PRICES["price_cache_write"]
        + output_tokens * PRICES["price_out"]
    )


@pytest.fixture
def owner(make_user):
    return make_user(balance=BALANCE)


@pytest.fixture
def secret(make_key, owner):
    return make_key(owner=owner)[1]


def components(row) -> tuple:
    return (
        row.input_units,
        row.cache_read_units,
        row.cache_write_units,
        row.output_units,
        row.reasoning_units,
        row.usage_estimated,
        row.cost_unknown,
    )


def test_a_cached_answer_is_recorded_and_charged_at_the_cache_prices(
    gateway, make_model, owner, secret
):
    make_model(name="cached", upstream_name=UPSTREAM, **PRICES)

    answer = post(gateway, secret, "/chat/completions", {"model": "cached", "messages": MESSAGES})

    assert answer.status_code == 200, answer.text
    # The upstream's usage reaches the client as it was sent, details included.
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHED
    (row,) = wait_for_logs(1)
    assert components(row) == (PROMPT_TOKENS, CACHED, WRITTEN, ANSWER_TOKENS, REASONING,
                               False, False)  # fmt: skip
    # 9 uncached at $3/M, 48 read at $0.30/M, 8 written at $3.75/M, 5 out at $15/M.
    assert row.cost == cost_of(ANSWER_TOKENS) == Decimal("0.0001464")
    owner.refresh_from_db()
    assert owner.balance == BALANCE - Decimal("0.0001464")


@pytest.mark.parametrize("client_wants_usage", [True, False], ids=["usage-asked", "not-asked"])
def test_a_cached_stream_is_charged_from_its_last_chunks_usage(
    gateway, make_model, owner, secret, client_wants_usage
):
    make_model(name="cached", upstream_name=UPSTREAM, **PRICES)
    payload = {"model": "cached", "messages": MESSAGES, "stream": True}
    if client_wants_usage:
        payload["stream_options"] = {"include_usage": True}

    response, lines = stream_lines(gateway, secret, payload)

    assert response.status_code == 200
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    usages = [json.loads(e).get("usage") for e in events[:-1]]
    if client_wants_usage:  # the gateway asks the upstream for it either way
        assert usages[-1]["prompt_tokens_details"] == {
            "cached_tokens": CACHED,
            "cache_write_tokens": WRITTEN,
        }
    else:
        assert not any(usages)
    (row,) = wait_for_logs(1)
    assert components(row) == (PROMPT_TOKENS, CACHED, WRITTEN, CHUNKS, REASONING, False, False)
    assert row.cost == cost_of(CHUNKS) == Decimal("0.0001314")
    owner.refresh_from_db()
    assert owner.balance == BALANCE - Decimal("0.0001314")


def test_a_model_without_prices_is_logged_with_its_cost_unknown(gateway, make_model, owner, secret):
    make_model(name="unpriced", upstream_name="echo+cached=3")
    make_model(name="local", upstream_name="echo", is_free=True)

    for model in ("unpriced", "local"):
        answer = post(gateway, secret, "/chat/completions", {"model": model, "messages": MESSAGES})
        assert answer.status_code == 200, answer.text

    unpriced, free = wait_for_logs(2)
    assert (unpriced.model, unpriced.cost, unpriced.cost_unknown) == ("unpriced", 0, True)
    assert (unpriced.input_units, unpriced.cache_read_units) == (PROMPT_TOKENS, 3)
    assert (free.model, free.cost, free.cost_unknown) == ("local", 0, False)
    owner.refresh_from_db()
    assert owner.balance == BALANCE


def test_under_refuse_a_metered_key_is_refused_an_unpriced_model_and_an_unmetered_one_served(
    gateway, make_model, make_user, make_key, owner, secret, settings
):
    settings.AETHERGATE_UNPRICED_MODELS = "refuse"
    make_model(name="unpriced", upstream_name="echo")
    unmetered = make_key(owner=make_user("bob"))[1]  # no balance, no budget

    refused = post(
        gateway, secret, "/chat/completions", {"model": "unpriced", "messages": MESSAGES}
    )
    served = post(
        gateway, unmetered, "/chat/completions", {"model": "unpriced", "messages": MESSAGES}
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_unpriced"
    assert served.status_code == 200, served.text
    first, second = wait_for_logs(2)
    assert (first.username, first.outcome, first.cost_unknown) == ("alice", "forbidden", False)
    assert (second.username, second.outcome, second.cost_unknown) == ("bob", "ok", True)

"""Absurd usage from an upstream and failing metrics never stop requests being logged and billed."""

from decimal import Decimal

import pytest

from aethergate.testing import wait_for_logs
from proxy import usage
from proxy.tests.test_forwarding import (
    HELLO,
    HELLO_COMPLETION_TOKENS,
    HELLO_PROMPT_TOKENS,
    HELLO_TEXT,
    post,
    stream_lines,
)
from proxy.tests.upstream import DEFAULT_CHUNKS, stream_text

PRICES = {"price_in": Decimal("0.001"), "price_out": Decimal("0.002")}


@pytest.fixture
def owner(make_user):
    return make_user(balance=Decimal("100"))


@pytest.fixture
def secret(make_key, owner):
    return make_key(owner=owner)[1]


def ask(gateway, secret, model, stream):
    payload = {"model": model, "messages": HELLO, "stream": stream}
    if stream:
        response, lines = stream_lines(gateway, secret, payload)
        assert [line for line in lines if line][-1] == "data: [DONE]"
    else:
        response = post(gateway, secret, "/chat/completions", payload)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("kind", ["huge", "overflow", "negative", "exponent", "text"])
def test_absurd_usage_is_estimated_and_later_requests_are_logged_and_billed(
    gateway, make_model, owner, secret, kind, stream
):
    make_model(name="absurd", upstream_name=f"echo+usage={kind}", **PRICES)
    make_model(name="sane", upstream_name="echo", **PRICES)

    ask(gateway, secret, "absurd", stream)
    for _ in range(3):
        ask(gateway, secret, "sane", stream)

    rows = wait_for_logs(4)
    assert [row.model for row in rows] == ["absurd", "sane", "sane", "sane"]
    absurd, *sane = rows
    completion = stream_text(HELLO_TEXT) if stream else HELLO_TEXT
    assert (absurd.input_units, absurd.output_units, absurd.usage_estimated) == (
        usage.estimate_tokens(HELLO[0]["content"]),
        usage.estimate_tokens(completion),
        True,
    )
    output = DEFAULT_CHUNKS if stream else HELLO_COMPLETION_TOKENS
    for row in sane:
        assert (row.input_units, row.output_units, row.usage_estimated) == (
            HELLO_PROMPT_TOKENS,
            output,
            False,
        )
    assert all(row.cost > 0 and row.outcome == "ok" for row in rows)
    owner.refresh_from_db()
    assert owner.balance == Decimal("100") - sum(row.cost for row in rows)

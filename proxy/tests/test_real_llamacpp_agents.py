"""The agent APIs in front of a real upstream: `/v1/responses` (the `openai` SDK) and
`/v1/messages` (the `anthropic` SDK) translated onto llama-cpp-python's chat completions.

The server and its models are test_real_llamacpp.py's (greedy decoding, so an answer is the
same on every call): what a client gets through the gateway is compared with what the server
answers the same chat request directly. Streams are checked strictly (responses_checker,
messages_checker). Skipped without .venv-llama, as there, except in CI.
"""

import json

import anthropic
import httpx
import httpx2
import openai
import pytest

from aethergate.testing import wait_for_logs
from proxy.tests import messages_checker, responses_checker
from proxy.tests.test_real_llamacpp import (
    CHAT,
    HELLO,
    MAX_TOKENS,
    TIMEOUT,
    TOOLS,
    WEATHER_TOOL,
    serve,
    upstream_chat,
)
from proxy.tests.wire import replay

pytestmark = pytest.mark.llama

FUNCTION = {"type": "function", **WEATHER_TOOL["function"]}
# Anthropic's SDK (API version 2026-10-21) has no `temperature` argument; the gateway still
# takes the field, and greedy decoding is what makes the tiny model's answers repeatable.
GREEDY_MESSAGES = {"max_tokens": MAX_TOKENS, "extra_body": {"temperature": 0}}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest.fixture
def secret(transactional_db, llama_server):
    return serve(llama_server)


@pytest.fixture
def direct(llama_server):
    """An httpx client on the real server's /v1, without the gateway."""
    with httpx.Client(base_url=llama_server.v1, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def sdk(gateway, secret, wire):
    """`openai.OpenAI` on the gateway, its answers recorded by `wire`."""
    with openai.OpenAI(
        base_url=gateway.v1,
        api_key=secret,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=wire.client(),
    ) as client:
        yield client


@pytest.fixture
def claude(gateway, secret, wire):
    """`anthropic.Anthropic` on the gateway's root, as Claude Code's ANTHROPIC_BASE_URL."""
    with anthropic.Anthropic(
        base_url=gateway.base_url,
        api_key=secret,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=wire.client(httpx2),
    ) as client:
        yield client


def test_it_answers_a_response_as_the_server_answers_its_chat(sdk, direct, wire):
    expected = upstream_chat(direct)

    answer = sdk.responses.create(model=CHAT, input="hi there", max_output_tokens=16, temperature=0)
    again = upstream_chat(direct, max_tokens=16)

    responses_checker.check_response(wire.json())
    assert answer.output_text == again["choices"][0]["message"]["content"]
    assert expected["usage"]["prompt_tokens"] == again["usage"]["prompt_tokens"]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        again["usage"]["prompt_tokens"],
        again["usage"]["completion_tokens"],
    )
    (row,) = wait_for_logs(1, path="/v1/responses")
    assert (row.input_units, row.output_units, row.usage_estimated) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
        False,
    )


def test_it_streams_a_response_every_event_in_order(sdk, direct, wire):
    expected = upstream_chat(direct, max_tokens=16)["choices"][0]["message"]["content"]

    with sdk.responses.stream(
        model=CHAT, input="hi there", max_output_tokens=16, temperature=0
    ) as stream:
        for _ in stream:  # the SDK's accumulator takes every event
            pass

    final = responses_checker.check_stream([data for _, data in wire.events()])
    # The tiny model never stops of itself: cut at 16 tokens, its answer is incomplete, as
    # OpenAI's is (response.incomplete; the SDK's get_final_response() wants
    # response.completed: openai/openai-python#3538).
    assert (final["status"], final["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert final["output"][0]["content"][0]["text"] == expected
    (row,) = wait_for_logs(1, path="/v1/responses")
    # llama-cpp-python streams no usage: the gateway's estimate, flagged, in log and answer.
    assert row.stream and row.usage_estimated
    assert row.output_units == final["usage"]["output_tokens"]


def test_it_runs_a_function_tool_round_trip_on_responses(sdk, wire):
    first = sdk.responses.create(
        model=TOOLS,
        input="What is the weather?",
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=30,
        temperature=0,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments) in ({"unit": "celsius"}, {"unit": "fahrenheit"})

    with sdk.responses.stream(
        model=TOOLS,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[FUNCTION],
        tool_choice="none",
        max_output_tokens=16,
        temperature=0,
    ) as stream:
        for _ in stream:
            pass

    second = responses_checker.check_stream([data for _, data in wire.events()])
    assert second["status"] in ("completed", "incomplete")
    assert second["previous_response_id"] == first.id
    sdk.responses.retrieve(second["id"])
    assert wire.json()["output"] == second["output"]


def test_it_answers_messages_as_the_server_answers_its_chat(claude, direct, wire):
    expected = upstream_chat(direct)["choices"][0]["message"]["content"]

    message = claude.messages.create(model=CHAT, messages=HELLO, **GREEDY_MESSAGES)
    with claude.messages.stream(model=CHAT, messages=HELLO, **GREEDY_MESSAGES) as stream:
        final = stream.get_final_message()

    messages_checker.check_message(wire.json(0))
    messages_checker.check_stream(wire.events(1))
    assert message.content[0].text == expected == final.content[0].text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == MAX_TOKENS


def test_it_runs_a_tool_round_trip_on_messages_with_a_thinking_block_in_history(claude, wire):
    turn = {"role": "user", "content": "What is the weather?"}
    first = claude.messages.create(
        model=TOOLS,
        max_tokens=30,
        extra_body={"temperature": 0},
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[turn],
    )
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.input in ({"unit": "celsius"}, {"unit": "fahrenheit"})

    second = claude.messages.create(
        model=TOOLS,
        **GREEDY_MESSAGES,
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "none"},
        messages=[
            turn,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "The user wants the weather.",
                        "signature": "x",
                    },
                    *[b.model_dump() for b in first.content],
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )

    messages_checker.check_message(wire.json(), given=frozenset({use.id}))
    assert second.stop_reason in ("end_turn", "max_tokens")


def test_it_estimates_count_tokens_for_the_server(claude):
    counted = claude.messages.count_tokens(model=CHAT, messages=HELLO)

    assert counted.input_tokens > 0


def test_it_serves_a_codex_and_a_claude_code_shaped_request_from_the_server(gateway, secret):
    # On the chat model: the tools model's function-calling prompt of Codex's tools is past
    # the tiny model's 512-token context (it then ends its stream empty: a 502 here).
    codex, events = replay(
        gateway.base_url, "codex_responses.json", secret, model=CHAT, max_output_tokens=32
    )
    claude_code, messages_events = replay(
        gateway.base_url, "claude_code_messages.json", secret, model=CHAT, max_tokens=32
    )

    assert codex.status_code == 200
    assert all(name == data["type"] for name, data in events)
    assert responses_checker.check_stream([data for _, data in events])["status"] in (
        "completed",
        "incomplete",
    )
    assert claude_code.status_code == 200
    assert messages_checker.check_stream(messages_events)["stop_reason"] in (
        "end_turn",
        "max_tokens",
        "tool_use",
    )


def test_it_deletes_a_stored_response(sdk):
    created = sdk.responses.create(model=CHAT, input="hi there", max_output_tokens=16)

    sdk.responses.delete(created.id)

    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)

"""The agent APIs end to end: `/v1/responses` with the `openai` SDK and `/v1/messages` with the
`anthropic` SDK, through the real gateway, in front of the stand-in (chat, Anthropic and
Responses servers); every stream checked strictly (responses_checker, messages_checker);
usage, cost and balance checked in the database as for chat.

The translations themselves are tested in process: test_format_responses.py,
test_format_messages.py, test_format_anthropic.py. The same SDK flows against the real
llama.cpp server are in test_real_llamacpp_agents.py.
"""

import json
from decimal import Decimal

import anthropic
import httpx
import httpx2
import openai
import pytest

from aethergate.testing import make_user, wait_for_logs
from proxy.models import StoredResponse
from proxy.tests import fakes, messages_checker, responses_checker
from proxy.tests.conftest import CLIENT_TIMEOUT_SECONDS, UPSTREAM_API_KEY
from proxy.tests.upstream import PREFIX
from proxy.tests.wire import replay, sse

pytestmark = pytest.mark.django_db(transaction=True)

PRICE_IN, PRICE_OUT = Decimal("0.001"), Decimal("0.002")
TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}
HI = [{"role": "user", "content": "hi"}]
CODEX_INSTRUCTIONS = (
    "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI on a "
    "user's computer."
)
ANTHROPIC_TOOL = {
    "name": "lookup",
    "description": "Look something up.",
    "input_schema": TOOL["parameters"],
}


@pytest.fixture
def claude(gateway):
    """`claude(secret, **options)` → an `anthropic.Anthropic` on the gateway (its root, as
    Claude Code's ANTHROPIC_BASE_URL), no retries."""
    clients = []

    def make(secret, **options):
        client = anthropic.Anthropic(
            base_url=gateway.base_url,
            api_key=secret,
            **{"max_retries": 0, "timeout": CLIENT_TIMEOUT_SECONDS, **options},
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def priced(make_model):
    """`priced(upstream_name="echo", **fields)` → the model "agent", priced, on the stand-in."""

    def make(upstream_name="echo", name="agent", **fields):
        return make_model(
            name=name, upstream_name=upstream_name, price_in=PRICE_IN, price_out=PRICE_OUT, **fields
        )

    return make


def streamed(gateway, secret: str, path: str, body: dict, **headers) -> list[tuple[str, dict]]:
    """The events of a streamed POST of `body` to `path` (after the root), off the wire."""
    with httpx.stream(
        "POST",
        gateway.base_url + path,
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {secret}", **headers},
        timeout=CLIENT_TIMEOUT_SECONDS,
    ) as answer:
        assert answer.status_code == 200, answer.read()
        return sse(answer)


def check_responses_stream(events: list[tuple[str, dict]]) -> dict:
    """The strict check, and each event named by its type (as OpenAI writes them)."""
    assert all(name == data["type"] for name, data in events)
    return responses_checker.check_stream([data for _, data in events])


def cost(row) -> Decimal:
    return row.input_units * PRICE_IN + row.output_units * PRICE_OUT


def assert_charged(user, rows) -> None:
    """Each row costs its units at the model's prices, and the balance paid exactly that."""
    for row in rows:
        assert row.cost == cost(row)
        assert not row.usage_estimated
    user.refresh_from_db()
    assert user.balance == Decimal("10") - sum(row.cost for row in rows)


# --------------------------------------------------------------------------- Responses


def test_it_answers_a_responses_create_translated_onto_chat_and_bills_it(
    client_for, priced, make_key, upstream
):
    priced()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    raw = client_for(secret).responses.with_raw_response.create(
        model="agent", input="hi there", instructions="Be brief."
    )
    answer = raw.parse()

    responses_checker.check_response(raw.http_response.json())
    assert answer.output_text == PREFIX + "hi there"
    assert answer.model == "agent" and answer.status == "completed"
    (sent,) = upstream.received
    assert sent.path == "/v1/chat/completions"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
    ]
    assert sent.json["model"] == "echo"
    (row,) = wait_for_logs(1)
    assert (row.path, row.outcome, row.status) == ("/v1/responses", "ok", 200)
    # "Be brief." and "hi there": 4 words + 3; the answer's 5 words.
    assert (row.input_units, row.output_units) == (7, 5)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (7, 5)
    assert_charged(user, [row])


def test_it_streams_a_response_with_every_event_in_order(gateway, client_for, priced, make_key):
    priced("echo+chunks=4")
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    events = streamed(gateway, secret, "/v1/responses", {"model": "agent", "input": "hi there"})
    with client_for(secret).responses.stream(model="agent", input="hi there") as stream:
        final = stream.get_final_response()

    completed = check_responses_stream(events)
    deltas = [e["delta"] for _, e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 4 and final.output_text == "".join(deltas)
    assert final.output_text.startswith(PREFIX)
    assert completed["id"].startswith("resp_") and final.id.startswith("resp_")
    rows = wait_for_logs(2)
    assert all(row.stream and row.path == "/v1/responses" for row in rows)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        rows[1].input_units,
        rows[1].output_units,
    )
    assert rows[1].output_units == 4  # the stand-in's completion tokens: one per chunk
    assert completed["usage"]["output_tokens"] == rows[0].output_units
    assert_charged(user, rows)


def test_it_keeps_stores_retrieves_lists_and_deletes_a_response_for_its_owner_only(
    client_for, priced, make_key
):
    priced()
    owner = make_user(username="owner")
    _, secret = make_key(owner=owner, name="first")
    _, same_owner = make_key(owner=owner, name="second")
    _, stranger = make_key(owner=make_user(username="stranger"))
    client = client_for(secret)

    created = client.responses.create(model="agent", input="hi there", metadata={"k": "v"})

    again = client_for(same_owner).responses.retrieve(created.id)
    assert again.model_dump(mode="json") == created.model_dump(mode="json")
    items = client.responses.input_items.list(created.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]
    assert items.data[0].content[0].text == "hi there"
    with pytest.raises(openai.NotFoundError):
        client_for(stranger).responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client_for(stranger).responses.delete(created.id)

    client.responses.delete(created.id)

    assert not StoredResponse.objects.filter(pk=created.id).exists()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_it_stores_nothing_with_store_false_and_refuses_to_continue_it(
    client_for, priced, make_key, upstream
):
    priced()
    _, secret = make_key()
    client = client_for(secret)

    created = client.responses.create(model="agent", input="hi there", store=False)

    assert not StoredResponse.objects.exists()
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="agent", input="more", previous_response_id=created.id)
    assert refused.value.code == "previous_response_not_found"
    assert len(upstream.received) == 1  # the refused one never went upstream


@pytest.mark.parametrize("stream", [False, True])
def test_it_runs_a_function_tool_round_trip_through_previous_response_id(
    client_for, priced, make_key, upstream, wire, stream
):
    priced("echo+tools+chunks=6")  # "Hello from upstream: tool said sunny"
    _, secret = make_key()
    client = client_for(secret, http_client=wire.client())

    def create(**fields):
        if not stream:
            created = client.responses.create(model="agent", tools=[TOOL], **fields)
            responses_checker.check_response(wire.json())
            return created
        with client.responses.stream(model="agent", tools=[TOOL], **fields) as events:
            final = events.get_final_response()
        check_responses_stream(wire.events())
        return final

    first = create(input="weather in Paris")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.id.startswith("fc_") and call.name == "lookup"
    assert json.loads(call.arguments) == {"query": "weather in Paris"}

    second = create(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )

    assert second.output_text.startswith(PREFIX) and "sunny" in second.output_text
    history = upstream.received[1].json["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[1]["tool_calls"][0]["id"] == call.call_id
    assert history[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert second.previous_response_id == first.id


def test_it_passes_responses_through_to_an_endpoint_that_speaks_them(
    client_for, make_endpoint, make_key, upstream, wire
):
    from aethergate.testing import make_model

    native = make_endpoint(name="native", native_responses=True)
    make_model(name="agent", upstream_name="echo", endpoint=native)
    _, secret = make_key()
    client = client_for(secret, http_client=wire.client())

    first = client.responses.create(model="agent", input="hi there")
    with client.responses.stream(
        model="agent", input="and again", previous_response_id=first.id
    ) as stream:
        final = stream.get_final_response()

    responses_checker.check_response(wire.json(0))
    check_responses_stream(wire.events())
    assert first.output_text == PREFIX + "hi there"
    assert final.output_text.startswith(PREFIX)
    assert [r.path for r in upstream.received] == ["/v1/responses"] * 2
    # The gateway keeps the conversation: the server is sent all of it, and stores nothing.
    sent = upstream.received[1].json
    assert sent["store"] is False and "previous_response_id" not in sent
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert final.id.startswith("resp_") and final.model == "agent"
    assert StoredResponse.objects.filter(pk=final.id).exists()


# --------------------------------------------------------------------------- Messages


def test_it_answers_messages_create_translated_onto_chat_and_bills_it(
    claude, priced, make_key, upstream
):
    priced()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    message = claude(secret).messages.create(
        model="agent",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hi there"}],
    )

    messages_checker.check_message(message.model_dump(mode="json"))
    assert message.content[0].text == PREFIX + "hi there"
    assert message.stop_reason == "end_turn" and message.model == "agent"
    (sent,) = upstream.received
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent.json["max_tokens"] == 100
    (row,) = wait_for_logs(1)
    assert row.path == "/v1/messages" and (row.input_units, row.output_units) == (7, 5)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 5)
    assert_charged(user, [row])


def test_it_streams_messages_with_every_event_in_order(gateway, claude, priced, make_key):
    priced("echo+think+chunks=4")
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)
    body = {
        "model": "agent",
        "max_tokens": 100,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "hi there"}],
    }

    with httpx.stream(
        "POST",
        f"{gateway.v1}/messages?beta=true",
        json=body,
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    ) as answer:
        events = sse(answer)
    with claude(secret).messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as s:
        final = s.get_final_message()

    reassembled = messages_checker.check_stream(events)
    assert [b["type"] for b in reassembled["content"]] == ["thinking", "text"]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking.startswith("Thinking about")
    rows = wait_for_logs(2)
    assert all(r.stream and r.path == "/v1/messages" for r in rows)
    assert final.usage.output_tokens == rows[1].output_units
    assert_charged(user, rows)


def test_it_runs_a_tool_round_trip_on_messages(claude, priced, make_key, upstream):
    priced("echo+tools")
    _, secret = make_key()
    client = claude(secret)
    turn = [{"role": "user", "content": "weather in Paris"}]

    first = client.messages.create(
        model="agent", max_tokens=100, tools=[ANTHROPIC_TOOL], messages=turn
    )

    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.input == {"query": "weather in Paris"}
    with client.messages.stream(
        model="agent",
        max_tokens=100,
        tools=[ANTHROPIC_TOOL],
        messages=[
            *turn,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    ) as stream:
        second = stream.get_final_message()

    assert "sunny" in second.content[0].text and second.stop_reason == "end_turn"
    sent = upstream.received[1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


def test_it_counts_tokens_by_estimate_for_a_chat_upstream_and_bills_nothing(
    gateway, claude, priced, make_key, upstream
):
    priced()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    raw = claude(secret).messages.with_raw_response.count_tokens(
        model="agent", messages=[{"role": "user", "content": "hi there, how are you?"}]
    )

    assert raw.parse().input_tokens > 0
    assert raw.headers["x-aethergate-estimated"] == "true"
    assert upstream.received == []
    (row,) = wait_for_logs(1)
    assert (row.path, row.cost, row.input_units) == ("/v1/messages/count_tokens", 0, 0)
    user.refresh_from_db()
    assert user.balance == Decimal("10")


def test_it_answers_errors_in_anthropics_shape_on_messages(gateway, claude, priced, make_key):
    priced()
    _, secret = make_key()

    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        claude("sk-wrong").messages.create(
            model="agent", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.NotFoundError):
        claude(secret).messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.BadRequestError) as invalid:
        claude(secret).messages.create(model="agent", max_tokens=10, messages=[])

    assert unauthenticated.value.body["type"] == "error"
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"
    assert invalid.value.body["error"]["type"] == "invalid_request_error"
    assert set(invalid.value.body) == {"type", "error"}


def test_it_lists_models_in_anthropics_shape_for_anthropic_clients(claude, priced, make_key):
    priced()
    _, secret = make_key()

    listed = claude(secret).models.list()

    assert [m.id for m in listed.data] == ["agent"]
    assert listed.data[0].type == "model"


def test_it_answers_head_on_the_root(gateway):
    assert httpx.head(gateway.base_url + "/").status_code == 200


# --------------------------------------------------------------------------- Anthropic upstream


@pytest.fixture
def on_anthropic(make_endpoint):
    """The model "agent" on the stand-in's Anthropic Messages API (kind anthropic)."""
    from aethergate.testing import make_model

    def make(upstream_name="claude-echo"):
        endpoint = make_endpoint(name="anthropic", kind="anthropic")
        return make_model(
            name="agent",
            upstream_name=upstream_name,
            endpoint=endpoint,
            price_in=PRICE_IN,
            price_out=PRICE_OUT,
        )

    return make


def test_it_passes_messages_through_to_anthropic_with_its_headers(
    gateway, on_anthropic, make_key, upstream
):
    on_anthropic()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)
    beta = "claude-code-20250219,interleaved-thinking-2025-05-14"
    body = {
        "model": "agent",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi there"}],
    }

    with httpx.stream(
        "POST",
        f"{gateway.v1}/messages?beta=true",
        json=body,
        headers={
            "authorization": f"Bearer {secret}",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": beta,
        },
        timeout=CLIENT_TIMEOUT_SECONDS,
    ) as answer:
        events = sse(answer)

    message = messages_checker.check_stream(events)
    assert message["model"] == "agent"
    assert message["content"][0]["text"] == PREFIX + "hi there"
    (sent,) = upstream.received
    assert sent.path == "/v1/messages"
    assert sent.json == {**body, "model": "claude-echo"}
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["x-api-key"] == UPSTREAM_API_KEY and "authorization" not in headers
    assert (headers["anthropic-version"], headers["anthropic-beta"]) == ("2023-06-01", beta)
    (row,) = wait_for_logs(1)
    assert (row.input_units, row.output_units) == (
        message["usage"]["input_tokens"],
        message["usage"]["output_tokens"],
    )
    assert_charged(user, [row])


def test_it_serves_chat_completions_and_responses_from_an_anthropic_upstream(
    client_for, on_anthropic, make_key, upstream
):
    on_anthropic()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)
    client = client_for(secret)

    chat = client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "hi there"}]
    )
    streamed = client.chat.completions.create(
        model="agent",
        messages=[{"role": "user", "content": "hi there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    response = client.responses.create(model="agent", input="hi there")

    assert chat.choices[0].message.content == PREFIX + "hi there"
    assert chat.model == "agent" and chat.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        PREFIX + "hi there"
    )
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert response.output_text == PREFIX + "hi there"
    assert [r.path for r in upstream.received] == ["/v1/messages"] * 3
    assert all(r.json["max_tokens"] > 0 for r in upstream.received)
    rows = wait_for_logs(3)
    assert [r.path for r in rows] == ["/v1/chat/completions"] * 2 + ["/v1/responses"]
    assert_charged(user, rows)


def test_it_counts_tokens_with_an_anthropic_upstream(claude, on_anthropic, make_key, upstream):
    on_anthropic()
    _, secret = make_key()

    raw = claude(secret).messages.with_raw_response.count_tokens(
        model="agent", messages=[{"role": "user", "content": "one two three"}]
    )

    assert raw.parse().input_tokens == 6  # the stand-in's: words + 3
    assert "x-aethergate-estimated" not in raw.headers
    assert upstream.received[0].path == "/v1/messages/count_tokens"
    assert upstream.received[0].json["model"] == "claude-echo"


# --------------------------------------------------------------------------- recorded shapes


def test_it_serves_a_codex_shaped_request(gateway, priced, make_key, upstream):
    priced("echo+tools")
    _, secret = make_key()

    answer, events = replay(gateway.base_url, "codex_responses.json", secret)

    assert answer.status_code == 200
    completed = responses_checker.check_stream([data for _, data in events])
    assert all(name == data["type"] for name, data in events)
    assert completed["status"] == "completed"
    (call,) = completed["output"]
    assert (call["type"], call["name"]) == ("function_call", "shell")  # Codex's first tool
    sent = upstream.received[0].json
    assert sent["messages"][0] == {"role": "system", "content": CODEX_INSTRUCTIONS}
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "update_plan"]
    assert sent["parallel_tool_calls"] is False and sent["reasoning_effort"] == "medium"
    (row,) = wait_for_logs(1)
    assert (row.path, row.status, row.stream) == ("/v1/responses", 200, True)
    assert not StoredResponse.objects.exists()  # Codex sends store: false


def test_it_serves_a_claude_code_shaped_request(gateway, priced, make_key, upstream):
    priced("echo+tools")
    _, secret = make_key()

    answer, events = replay(gateway.base_url, "claude_code_messages.json", secret)

    assert answer.status_code == 200
    message = messages_checker.check_stream(events, given=frozenset({"call_0"}))
    assert message["stop_reason"] == "tool_use"
    sent = upstream.received[0].json
    system = sent["messages"][0]
    assert system["role"] == "system" and "x-anthropic-billing-header" not in system["content"]
    assert system["content"].startswith("You are Claude Code, Anthropic's official CLI")
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read"]
    # thinking with a 31999-token budget, approximated; the session's id is its user.
    assert (sent["reasoning_effort"], sent["max_tokens"]) == ("high", 32000)
    assert sent["user"].startswith("user_2f4c_account__session_")


# --------------------------------------------------------------------------- disconnects


RESPONSE = ("/v1/responses", {"input": "hi there, how are you today?"})
MESSAGE = ("/v1/messages", {"max_tokens": 100, "messages": HI})


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        (*RESPONSE, "generic"),
        (*RESPONSE, "anthropic"),
        (*RESPONSE, "native responses"),
        (*MESSAGE, "generic"),
        (*MESSAGE, "anthropic"),
    ],
)
def test_it_bills_what_reached_a_client_that_left_mid_stream_and_closes_the_upstream(
    gateway, make_endpoint, make_key, upstream, path, body, kind
):
    from aethergate.testing import make_model

    endpoint = make_endpoint(
        kind="generic" if kind == "native responses" else kind,
        native_responses=kind == "native responses",
    )
    make_model(
        name="agent",
        upstream_name="echo+gap=0.3+chunks=20",
        endpoint=endpoint,
        price_in=PRICE_IN,
        price_out=PRICE_OUT,
    )
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    with httpx.stream(
        "POST",
        gateway.base_url + path,
        json={"model": "agent", "stream": True, **body},
        headers={"authorization": f"Bearer {secret}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    ) as answer:
        deltas = 0
        for line in answer.iter_lines():
            deltas += '"text_delta"' in line or '"response.output_text.delta"' in line
            if deltas == 2:
                break

    record = upstream.wait_for_requests(1)[-1]
    assert record.wait_done(5) and record.closed_early
    (row,) = wait_for_logs(1)
    assert (row.outcome, row.status, row.stream, row.path) == (
        "client_disconnected",
        499,
        True,
        path,
    )
    assert 0 < row.output_units < 20  # an estimate of what was relayed: not the whole answer
    assert row.usage_estimated and row.cost == cost(row)
    user.refresh_from_db()
    assert user.balance == Decimal("10") - row.cost


# --------------------------------------------------------------------------- failures and more


def test_it_passes_a_whole_message_with_thinking_and_tools_through_to_anthropic(
    claude, on_anthropic, make_key, upstream, wire
):
    on_anthropic("claude-echo+tools")
    _, secret = make_key()

    message = claude(secret, http_client=wire.client(httpx2)).messages.create(
        model="agent",
        max_tokens=200,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[ANTHROPIC_TOOL],
        messages=[{"role": "user", "content": "weather in Paris"}],
    )

    sent = wire.json()
    messages_checker.check_message(sent, given=frozenset({"toolu_0"}))
    assert [b["type"] for b in sent["content"]] == ["thinking", "tool_use"]
    assert sent["content"][0]["signature"]  # Anthropic's own, passed on as it came
    assert message.model == "agent" and message.stop_reason == "tool_use"
    assert upstream.received[0].json["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_it_streams_a_response_from_an_anthropic_upstream(
    gateway, on_anthropic, make_key, upstream
):
    on_anthropic()
    user = make_user(username="prepaid", balance=Decimal("10"))
    _, secret = make_key(owner=user)

    events = streamed(gateway, secret, "/v1/responses", {"model": "agent", "input": "hi there"})

    final = check_responses_stream(events)
    assert final["output"][0]["content"][0]["text"] == PREFIX + "hi there"
    assert upstream.received[0].path == "/v1/messages"
    (row,) = wait_for_logs(1)
    assert (row.input_units, row.output_units) == (
        final["usage"]["input_tokens"],
        final["usage"]["output_tokens"],
    )
    assert_charged(user, [row])


@pytest.mark.parametrize(
    ("path", "body", "terminal"),
    [
        ("/v1/responses", {"input": "hi there"}, "response.failed"),
        ("/v1/messages", {"max_tokens": 100, "messages": HI}, "error"),
    ],
)
def test_it_ends_a_stream_the_upstream_broke_with_the_apis_failure_event(
    gateway, priced, make_key, path, body, terminal
):
    priced("echo+reset=4")
    _, secret = make_key()

    events = streamed(gateway, secret, path, {"model": "agent", **body})

    name, last = events[-1]
    assert name == terminal == last["type"]
    if path == "/v1/responses":
        assert check_responses_stream(events)["status"] == "failed"
        assert last["response"]["error"]["code"] == "upstream_error"
    else:
        assert messages_checker.check_stream(events)["error"]["type"] == "api_error"
    (row,) = wait_for_logs(1)
    assert (row.status, row.outcome) == (502, "upstream_error")


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_it_answers_an_upstream_that_failed_before_answering_in_the_apis_error_shape(
    gateway, priced, make_key, path
):
    priced("echo+fail=503")
    _, secret = make_key()
    body = {"input": "hi"} if path == "/v1/responses" else {"max_tokens": 9, "messages": HI}

    answer = httpx.post(
        gateway.base_url + path,
        json={"model": "agent", **body},
        headers={"authorization": f"Bearer {secret}"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )

    assert answer.status_code == 502
    error = answer.json()
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
    else:
        assert error["error"]["code"] == "upstream_error"


def test_it_passes_what_only_the_clients_own_api_can_do_to_a_server_of_that_api(
    gateway, make_endpoint, make_key, upstream
):
    from aethergate.testing import make_model

    web_search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    make_model(
        name="claude",
        upstream_name="claude-echo",
        endpoint=make_endpoint(name="anthropic", kind="anthropic"),
    )
    make_model(
        name="gpt",
        upstream_name="echo",
        endpoint=make_endpoint(name="native", native_responses=True),
    )
    make_model(name="local", upstream_name="echo", endpoint=make_endpoint(name="local"))
    _, secret = make_key()

    def post(path, body):
        return httpx.post(
            gateway.base_url + path,
            json=body,
            headers={"authorization": f"Bearer {secret}", "anthropic-version": "2023-06-01"},
            timeout=CLIENT_TIMEOUT_SECONDS,
        )

    message = {"max_tokens": 50, "messages": HI, "tools": [web_search]}
    response = {"input": "hi", "tools": [{"type": "web_search"}]}
    served = [
        post("/v1/messages", {"model": "claude", **message}),
        post("/v1/responses", {"model": "gpt", **response}),
    ]
    refused = [
        post("/v1/messages", {"model": "local", **message}),
        post("/v1/responses", {"model": "local", **response}),
    ]

    assert [a.status_code for a in served] == [200, 200]
    assert [r.json["tools"] for r in upstream.received] == [[web_search], [{"type": "web_search"}]]
    assert [a.status_code for a in refused] == [400, 400]
    assert refused[0].json()["error"]["type"] == "invalid_request_error"
    assert refused[1].json()["error"]["code"] == "unsupported_parameter"
    assert len(upstream.received) == 2  # the refused ones never went upstream


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (404, "not_found_error")]
)
def test_it_passes_an_anthropic_refusal_on_with_its_status_and_words(
    gateway, claude, on_anthropic, make_key, status, kind
):
    on_anthropic(f"claude-echo+fail={status}")
    _, secret = make_key()

    with pytest.raises(anthropic.APIStatusError) as refused:
        claude(secret).messages.create(model="agent", max_tokens=10, messages=HI)

    assert refused.value.status_code == status
    error = refused.value.body["error"]
    assert error["type"] == kind
    # The upstream's words, with what it must not show (its host, its key) taken out.
    assert error["message"].startswith(f"upstream says {status}")
    fakes.assert_no_internals(error["message"])

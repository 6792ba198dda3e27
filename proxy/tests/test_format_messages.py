"""Anthropic Messages on a chat upstream (`proxy.formats.messages`): requests, answers, streams."""

import json

import pytest
from anthropic._models import construct_type
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent

from proxy import errors, validation
from proxy.errors import APIError
from proxy.formats import messages
from proxy.formats.messages import MessagesStream, from_chat, to_chat
from proxy.tests.messages_checker import StreamError, check_message, check_stream
from proxy.usage import Usage

HELLO = [{"role": "user", "content": "Hello"}]
BASE = {"model": "claude-public", "max_tokens": 256, "messages": HELLO}


def request(**fields) -> dict:
    return {**BASE, **fields}


def refused(payload: dict) -> APIError:
    with pytest.raises(APIError) as caught:
        to_chat(payload)
    assert caught.value.status == 400
    return caught.value


# --------------------------------------------------------------------------- request


def test_it_translates_a_plain_request():
    assert to_chat(request(stream=True)) == {
        "model": "claude-public",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 256,
        "stream": True,
    }


def test_it_makes_the_system_prompt_a_leading_system_message():
    assert to_chat(request(system="Be brief."))["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }


def test_it_joins_system_blocks_without_claude_codes_billing_line():
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0; cch=9f3a1;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]

    assert to_chat(request(system=system))["messages"][0] == {
        "role": "system",
        "content": "You are Claude Code.\n\nBe brief.",
    }


def test_a_system_prompt_of_only_the_billing_line_sends_no_system_message():
    system = [{"type": "text", "text": "x-anthropic-billing-header: cch=1;"}]

    assert to_chat(request(system=system))["messages"] == [{"role": "user", "content": "Hello"}]


def test_it_maps_the_sampling_parameters():
    body = to_chat(
        request(
            stop_sequences=["END", "\n\nHuman:"],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "user-7"},
        )
    )

    assert body == {
        **to_chat(BASE),
        "stop": ["END", "\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "user": "user-7",
    }


def test_it_leaves_out_what_chat_does_not_take():
    body = to_chat(
        request(stop_sequences=[], metadata={}, service_tier="auto", cache_control={"a": 1})
    )

    assert body == to_chat(BASE)


def test_a_turn_of_only_text_blocks_is_a_plain_string():
    turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>x</system-reminder>"},
            {"type": "text", "text": "Fix it.", "cache_control": {"type": "ephemeral"}},
        ],
    }

    assert to_chat(request(messages=[turn]))["messages"] == [
        {"role": "user", "content": "<system-reminder>x</system-reminder>\nFix it."}
    ]


def test_it_passes_images_as_image_url_parts():
    turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Compare:"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ],
    }

    assert to_chat(request(messages=[turn]))["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        }
    ]


TOOL_HISTORY = [
    {"role": "user", "content": "What is in /srv?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "I should list it.", "signature": "sig"},
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"path": "/srv"}},
            {"type": "tool_use", "id": "toolu_2", "name": "du", "input": {}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here you are."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "is_error": True,
                "content": [{"type": "text", "text": "du: denied"}],
            },
        ],
    },
]


def test_it_translates_a_tool_round_trip_in_the_history():
    assert to_chat(request(messages=TOOL_HISTORY))["messages"] == [
        {"role": "user", "content": "What is in /srv?"},
        {
            "role": "assistant",
            "content": "Listing.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path":"/srv"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "du", "arguments": "{}"},
                },
            ],
        },
        # The results come first, answering the calls; then the turn's own text.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: du: denied"},
        {"role": "user", "content": "Here you are."},
    ]


def test_an_assistant_turn_of_only_tool_calls_has_null_content():
    turn = {"role": "assistant", "content": [TOOL_HISTORY[1]["content"][2]]}

    assert to_chat(request(messages=[*HELLO, turn]))["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "ls", "arguments": '{"path":"/srv"}'},
            }
        ],
    }


def test_a_tool_results_images_are_replaced_by_a_note():
    turn = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "screenshot:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "x"},
                    },
                ],
            },
            {"type": "tool_result", "tool_use_id": "toolu_2"},
        ],
    }

    assert to_chat(request(messages=[turn]))["messages"] == [
        {
            "role": "tool",
            "tool_call_id": "toolu_1",
            "content": "screenshot:\n" + messages.OMITTED.format("image"),
        },
        {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
    ]


def test_thinking_in_the_history_is_dropped():
    turn = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
        ],
    }
    thought = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hi"},
        ],
    }

    assert to_chat(request(messages=[*HELLO, turn]))["messages"] == HELLO
    assert to_chat(request(messages=[*HELLO, thought]))["messages"][1] == {
        "role": "assistant",
        "content": "Hi",
    }


SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}


def test_it_makes_custom_tools_chat_functions():
    tools = [
        {"name": "ls", "description": "List a directory.", "input_schema": SCHEMA},
        {"type": "custom", "name": "noop", "input_schema": {"type": "object"}, "cache_control": {}},
    ]

    assert to_chat(request(tools=tools))["tools"] == [
        {
            "type": "function",
            "function": {"name": "ls", "description": "List a directory.", "parameters": SCHEMA},
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "ls"},
            {"tool_choice": {"type": "function", "function": {"name": "ls"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_it_maps_tool_choice(choice, expected):
    tools = [{"name": "ls", "input_schema": SCHEMA}]

    body = to_chat(request(tools=tools, tool_choice=choice))

    assert {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body} == expected


def test_a_tool_choice_without_tools_is_left_out():
    assert to_chat(request(tool_choice={"type": "any"})) == to_chat(BASE)


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4095}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 16383}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
        ({"type": "adaptive"}, "medium"),
        ({"type": "disabled"}, None),
    ],
)
def test_it_approximates_the_thinking_budget_as_a_reasoning_effort(thinking, effort):
    assert to_chat(request(thinking=thinking)).get("reasoning_effort") == effort


def test_an_explicit_effort_wins_over_the_thinking_budget():
    body = to_chat(
        request(
            thinking={"type": "enabled", "budget_tokens": 2000}, output_config={"effort": "max"}
        )
    )

    assert body["reasoning_effort"] == "high"


def test_a_json_schema_output_format_becomes_a_response_format():
    body = to_chat(request(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}))

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA},
    }


def turn_of(role: str, block: dict) -> list[dict]:
    return (
        [*HELLO, {"role": role, "content": [block]}]
        if role == "assistant"
        else [{"role": role, "content": [block]}]
    )


@pytest.mark.parametrize(
    ("role", "block", "param"),
    [
        (
            "user",
            {
                "type": "document",
                "source": {"type": "text", "data": "x", "media_type": "text/plain"},
            },
            "messages[0].content[0].type",
        ),
        (
            "user",
            {"type": "tool_use", "id": "t", "name": "n", "input": {}},
            "messages[0].content[0].type",
        ),
        ("assistant", {"type": "tool_result", "tool_use_id": "t"}, "messages[1].content[0].type"),
        (
            "assistant",
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
            "messages[1].content[0].type",
        ),
        (
            "user",
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
            "messages[0].content[0].source.type",
        ),
        ("user", {"type": "search_result", "source": "x"}, "messages[0].content[0].type"),
    ],
)
def test_it_refuses_content_it_cannot_translate(role, block, param):
    error = refused(request(messages=turn_of(role, block)))

    assert (error.code, error.param) == ("unsupported_content", param)


def test_it_refuses_server_tools_naming_them():
    tools = [
        {"name": "ls", "input_schema": SCHEMA},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ]

    error = refused(request(tools=tools))

    assert (error.code, error.param) == ("unsupported_parameter", "tools[1].type")
    assert "'web_search_20250305'" in error.message


def test_it_refuses_mcp_servers_and_system_blocks_other_than_text():
    mcp = refused(request(mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]))
    system = refused(request(system=[{"type": "image", "source": {}}]))

    assert (mcp.code, mcp.param) == ("unsupported_parameter", "mcp_servers")
    assert (system.code, system.param) == ("unsupported_content", "system[0].type")


# --------------------------------------------------------------------------- schema


def schema_error(payload: dict, schema=validation.MESSAGES) -> tuple[str, str]:
    with pytest.raises(APIError) as caught:
        validation.check_body(payload, schema)
    return caught.value.code, caught.value.param


def test_the_schema_takes_what_claude_code_sends():
    payload = request(
        system=[{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
        messages=TOOL_HISTORY,
        tools=[{"name": "ls", "description": "d", "input_schema": SCHEMA}],
        tool_choice={"type": "auto"},
        metadata={"user_id": "u"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        temperature=1,
        stream=True,
    )

    validation.check_body(payload, validation.MESSAGES)
    validation.check_body(
        {k: v for k, v in payload.items() if k != "max_tokens"}, validation.COUNT_TOKENS
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": None}, ("missing_required_parameter", "max_tokens")),
        ({"max_tokens": 0}, ("integer_below_min_value", "max_tokens")),
        ({"max_tokens": 1.5}, ("invalid_type", "max_tokens")),
        ({"messages": []}, ("empty_array", "messages")),
        ({"messages": [{"role": "system", "content": "x"}]}, ("invalid_value", "messages[0].role")),
        ({"messages": [{"role": "user"}]}, ("missing_required_parameter", "messages[0].content")),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            ("missing_required_parameter", "messages[0].content[0].type"),
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            ("missing_required_parameter", "messages[0].content[0].text"),
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}],
                    }
                ]
            },
            ("invalid_type", "messages[0].content[0].input"),
        ),
        ({"system": 3}, ("invalid_type", "system")),
        ({"tools": [{"input_schema": {}}]}, ("missing_required_parameter", "tools[0].name")),
        ({"tool_choice": {"type": "required"}}, ("invalid_value", "tool_choice.type")),
        ({"tool_choice": {"type": "tool"}}, ("missing_required_parameter", "tool_choice.name")),
        ({"stop_sequences": [1]}, ("invalid_type", "stop_sequences[0]")),
        ({"temperature": 1.5}, ("decimal_above_max_value", "temperature")),
        ({"top_p": -0.1}, ("decimal_below_min_value", "top_p")),
        ({"top_k": -1}, ("integer_below_min_value", "top_k")),
        ({"stream": "yes"}, ("invalid_type", "stream")),
        ({"metadata": []}, ("invalid_type", "metadata")),
        (
            {"thinking": {"type": "enabled"}},
            ("missing_required_parameter", "thinking.budget_tokens"),
        ),
    ],
)
def test_the_schema_refuses(fields, expected):
    assert schema_error(request(**fields)) == expected


def test_count_tokens_needs_no_max_tokens_but_its_messages():
    validation.check_body({"model": "m", "messages": HELLO}, validation.COUNT_TOKENS)

    assert schema_error({"model": "m"}, validation.COUNT_TOKENS) == (
        "missing_required_parameter",
        "messages",
    )


# --------------------------------------------------------------------------- answer

USED = Usage(input=100, output=20, cache_read=60, cache_write=10)
USAGE = {
    "input_tokens": 30,
    "output_tokens": 20,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 60,
}


def chat_answer(message: dict, finish: str | None = "stop", **choice) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "llama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
    }


def answer(chat: dict, payload: dict = BASE) -> dict:
    message = from_chat(chat, payload, message_id="msg_1", model="claude-public", used=USED)
    check_message(message, given=frozenset({"call_1", "call_2"}))
    Message.model_validate(message)  # what the SDK reads
    return message


def test_it_makes_a_text_answer_a_message():
    assert answer(chat_answer({"role": "assistant", "content": "Hi!"})) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-public",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }


def test_it_gives_reasoning_text_and_tool_calls_in_that_order():
    message = {
        "role": "assistant",
        "content": "Let me look.",
        "reasoning_content": "The user wants a listing.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "ls", "arguments": '{"path": "/"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "pwd", "arguments": ""}},
        ],
    }

    assert answer(chat_answer(message, "tool_calls"))["content"] == [
        {
            "type": "thinking",
            "thinking": "The user wants a listing.",
            "signature": messages.sign("The user wants a listing."),
        },
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "ls", "input": {"path": "/"}},
        {"type": "tool_use", "id": "call_2", "name": "pwd", "input": {}},
    ]


def test_the_gateways_signature_is_opaque_and_stable():
    assert messages.sign("x") == messages.sign("x") != messages.sign("y")
    assert messages.sign("x").startswith("aethergate.")


def test_it_reads_reasoning_from_the_reasoning_field_too():
    content = answer(chat_answer({"role": "assistant", "content": None, "reasoning": "hm"}))[
        "content"
    ]

    assert content == [{"type": "thinking", "thinking": "hm", "signature": messages.sign("hm")}]


def test_a_tool_call_without_an_id_gets_one_and_bad_arguments_become_an_empty_input():
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "ls", "arguments": "{broken"}},
            {"id": "", "type": "function", "function": {"name": "ls", "arguments": "[1]"}},
        ],
    }

    first, second = answer(chat_answer(message, "stop"))["content"]

    assert first["id"].startswith("toolu_") and len(first["id"]) == 30
    assert second["id"].startswith("toolu_") and second["id"] != first["id"]
    assert first["input"] == second["input"] == {}


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_it_maps_the_finish_reason(finish, reason):
    assert (
        answer(chat_answer({"role": "assistant", "content": "x"}, finish))["stop_reason"] == reason
    )


def test_tool_calls_make_it_tool_use_whatever_the_finish_reason():
    call = {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}

    assert answer(chat_answer(message, "stop"))["stop_reason"] == "tool_use"


def test_vllms_stop_reason_names_the_stop_sequence():
    payload = request(stop_sequences=["END"])
    chat = chat_answer({"role": "assistant", "content": "x"}, "stop", stop_reason="END")

    message = answer(chat, payload)

    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # A stop token id, or a string the client did not ask for, says nothing.
    chat = chat_answer({"role": "assistant", "content": "x"}, "stop", stop_reason=128009)
    assert answer(chat, payload)["stop_reason"] == "end_turn"


def test_a_refusal_is_the_text():
    chat = chat_answer({"role": "assistant", "content": None, "refusal": "No."}, "content_filter")

    assert answer(chat)["content"] == [{"type": "text", "text": "No."}]


def test_an_empty_answer_has_no_blocks_and_usage_never_goes_negative():
    chat = chat_answer({"role": "assistant", "content": ""})

    message = from_chat(chat, BASE, message_id="msg_1", model="m", used=Usage(5, 0, 5, 3))

    assert message["content"] == []
    assert message["usage"]["input_tokens"] == 0


@pytest.mark.parametrize(
    "chat",
    [
        {"choices": []},
        {},
        {"choices": [{"index": 0}]},
        chat_answer({"role": "assistant", "content": [{"type": "text"}]}),
        chat_answer({"role": "assistant", "tool_calls": [{"id": "x", "function": {}}]}),
        chat_answer({"role": "assistant", "tool_calls": {"id": "x"}}),
    ],
)
def test_it_refuses_an_answer_not_shaped_as_chats(chat):
    with pytest.raises(ValueError):
        from_chat(chat, BASE, message_id="msg_1", model="m", used=USED)


# --------------------------------------------------------------------------- stream


def chunk(finish: str | None = None, **delta) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "llama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def call(index: int, id: str | None = None, name: str | None = None, arguments: str | None = None):
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    found = {"index": index, "function": function}
    if id:
        found |= {"id": id, "type": "function"}
    return found


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "llama",
    "choices": [],
    "usage": {},
}


def streamed(chunks: list[dict], payload: dict = BASE, used: Usage = USED) -> list[dict]:
    encoder = MessagesStream(payload, message_id="msg_1", model="claude-public", input_tokens=7)
    events = encoder.start()
    for piece in chunks:
        events += encoder.feed(piece)
    return events + encoder.finish(used)


def pairs(events: list[dict]) -> list[tuple[str, dict]]:
    return [(event["type"], event) for event in events]


def sdk_message(events: list[dict]):
    """The Message the anthropic SDK's stream accumulator makes of `events`."""
    snapshot, buffers = None, {}
    for event in events:
        typed = construct_type(type_=RawMessageStreamEvent, value=event)
        snapshot = accumulate_event(event=typed, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def both(events: list[dict], given=frozenset()) -> dict:
    """The Message, checked strictly and accumulated by the SDK, which must agree."""
    message = check_stream(pairs(events), given=given)
    assert sdk_message(events).to_dict(exclude_none=True) == {
        k: v for k, v in message.items() if v is not None
    }
    return message


def test_it_streams_text():
    events = streamed(
        [
            chunk(role="assistant", content=""),
            chunk(content="Hel"),
            chunk(content="lo"),
            chunk("stop"),
            USAGE_CHUNK,
        ]
    )

    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-public",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 7,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": USAGE,
        },
        {"type": "message_stop"},
    ]
    assert both(events)["content"] == [{"type": "text", "text": "Hello"}]
    assert both(events)["usage"] == USAGE


def test_it_streams_thinking_then_text():
    events = streamed(
        [
            chunk(role="assistant", reasoning_content="Let me "),
            chunk(reasoning_content="think."),
            chunk(content="Done."),
            chunk("stop"),
        ]
    )

    assert events[1:6] == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Let me "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "think."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": messages.sign("Let me think.")},
        },
        {"type": "content_block_stop", "index": 0},
    ]
    assert both(events)["content"] == [
        {
            "type": "thinking",
            "thinking": "Let me think.",
            "signature": messages.sign("Let me think."),
        },
        {"type": "text", "text": "Done."},
    ]


def test_it_reads_the_reasoning_field_and_never_both():
    events = streamed(
        [chunk(reasoning="a", reasoning_content="a"), chunk(reasoning="b"), chunk("stop")]
    )

    assert both(events)["content"] == [
        {"type": "thinking", "thinking": "ab", "signature": messages.sign("ab")}
    ]


def test_it_streams_text_then_two_tool_calls_with_their_arguments():
    events = streamed(
        [
            chunk(role="assistant", content="Checking."),
            chunk(tool_calls=[call(0, "call_1", "ls", "")]),
            chunk(tool_calls=[call(0, arguments='{"pa')]),
            chunk(tool_calls=[call(0, arguments='th": "/srv"}')]),
            chunk(tool_calls=[call(1, "call_2", "cat", '{"file":')]),
            chunk(tool_calls=[call(1, arguments=' "a"}')]),
            chunk("tool_calls"),
            USAGE_CHUNK,
        ]
    )

    assert [e for e in events if e["type"] == "content_block_start"] == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "call_1", "name": "ls", "input": {}},
        },
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "call_2", "name": "cat", "input": {}},
        },
    ]
    assert [
        e["delta"]["partial_json"]
        for e in events
        if e.get("delta", {}).get("type") == "input_json_delta"
    ] == [
        '{"pa',
        'th": "/srv"}',
        '{"file":',
        ' "a"}',
    ]
    message = both(events, given=frozenset({"call_1", "call_2"}))
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "ls", "input": {"path": "/srv"}},
        {"type": "tool_use", "id": "call_2", "name": "cat", "input": {"file": "a"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_a_tool_call_waits_for_its_name_and_gets_an_id_if_it_has_none():
    events = streamed(
        [
            chunk(tool_calls=[call(0, arguments='{"a"')]),
            chunk(tool_calls=[call(0, name="f", arguments=": 1}")]),
            chunk("stop"),
        ]
    )

    content = both(events)["content"]
    assert content == [{"type": "tool_use", "id": content[0]["id"], "name": "f", "input": {"a": 1}}]
    assert content[0]["id"].startswith("toolu_")
    assert both(events)["stop_reason"] == "tool_use"  # llama.cpp finishes tool calls with stop


def test_calls_all_numbered_0_are_told_apart_by_their_ids():
    events = streamed(
        [
            chunk(tool_calls=[call(0, "call_1", "f", "{}")]),
            chunk(tool_calls=[call(0, "call_2", "g", '{"x": 2}')]),
            chunk("tool_calls"),
        ]
    )

    assert both(events, given=frozenset({"call_1", "call_2"}))["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "g", "input": {"x": 2}},
    ]


def test_an_empty_stream_is_a_message_without_blocks():
    events = streamed([], used=Usage(3, 0))

    assert events[1:] == [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 3,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
        {"type": "message_stop"},
    ]
    assert both(events)["content"] == []


def test_a_stream_cut_by_the_length_limit_ends_with_max_tokens():
    events = streamed([chunk(content="abc"), chunk("length")])

    assert both(events)["stop_reason"] == "max_tokens"


def test_a_failure_midway_ends_with_an_error_event():
    encoder = MessagesStream(BASE, message_id="msg_1", model="claude-public", input_tokens=7)
    events = (
        encoder.start()
        + encoder.feed(chunk(content="Hal"))
        + encoder.fail(errors.invalid_response("claude-public", mid_stream=True))
    )

    assert events[-1] == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "The upstream for model 'claude-public' broke off mid-stream.",
        },
    }
    checked = check_stream(pairs(events))
    assert checked["error"]["type"] == "api_error"
    assert checked["partial"]["content"] == [{"type": "text", "text": "Hal"}]


def test_a_failure_before_anything_is_only_the_error_event():
    encoder = MessagesStream(BASE, message_id="msg_1", model="m", input_tokens=0)

    assert encoder.fail(errors.upstream_timeout("m")) == [
        {
            "type": "error",
            "error": {
                "type": "timeout_error",
                "message": "The upstream for model 'm' did not answer in time.",
            },
        }
    ]


def test_it_refuses_deltas_for_a_tool_call_already_closed():
    encoder = MessagesStream(BASE, message_id="msg_1", model="m", input_tokens=0)
    encoder.feed(chunk(tool_calls=[call(0, "call_1", "f", "{")]))
    encoder.feed(chunk(content="interlude"))

    with pytest.raises(ValueError, match="already closed"):
        encoder.feed(chunk(tool_calls=[call(0, arguments="}")]))


def test_it_refuses_a_tool_call_that_never_gets_a_name():
    encoder = MessagesStream(BASE, message_id="msg_1", model="m", input_tokens=0)
    encoder.feed(chunk(tool_calls=[call(0, "call_1", arguments="{}")]))

    with pytest.raises(ValueError, match="without a name"):
        encoder.finish(USED)


@pytest.mark.parametrize("piece", [{"choices": None}, {"choices": ["x"]}, chunk(tool_calls=["x"])])
def test_it_refuses_chunks_not_shaped_as_chats(piece):
    encoder = MessagesStream(BASE, message_id="msg_1", model="m", input_tokens=0)

    with pytest.raises(ValueError):
        encoder.feed(piece)


# --------------------------------------------------------------------------- checker

GOOD = streamed(
    [
        chunk(content="a"),
        chunk(tool_calls=[call(0, "toolu_1", "f", '{"x": 1}')]),
        chunk("tool_calls"),
    ]
)


def broken(change) -> list[tuple[str, dict]]:
    events = json.loads(json.dumps(GOOD))
    change(events)
    return pairs(events)


def test_the_checker_takes_a_good_stream():
    assert check_stream(pairs(GOOD))["content"][1]["input"] == {"x": 1}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: e.pop(1), id="a delta before its start"),
        pytest.param(lambda e: e[4].update(index=2), id="a gap in indexes"),
        pytest.param(lambda e: e.pop(), id="no message_stop"),
        pytest.param(lambda e: e.pop(3), id="a block never stopped"),
        pytest.param(lambda e: e[0]["message"].update(id="chatcmpl-1"), id="not a msg_ id"),
        pytest.param(
            lambda e: e[2]["delta"].update(type="input_json_delta", partial_json="{"),
            id="a delta of another block type",
        ),
        pytest.param(
            lambda e: e[5]["delta"].update(partial_json='{"x": '), id="tool input not JSON"
        ),
        pytest.param(
            lambda e: e[5]["delta"].update(partial_json="[1]"), id="tool input not an object"
        ),
        pytest.param(
            lambda e: e[4]["content_block"].update(id="call_9"), id="a tool id not toolu_"
        ),
        pytest.param(lambda e: e[7]["delta"].update(stop_reason="stop"), id="a chat stop reason"),
        pytest.param(lambda e: e[7]["usage"].pop("output_tokens"), id="no output_tokens"),
        pytest.param(lambda e: e.insert(8, e[7]), id="two message_deltas"),
        pytest.param(lambda e: e.append({"type": "ping"}), id="events after message_stop"),
    ],
)
def test_the_checker_rejects(change):
    with pytest.raises(StreamError):
        check_stream(broken(change))


def test_the_checker_wants_the_event_name_to_be_the_data_type_and_allows_pings():
    events = pairs(GOOD)
    check_stream([events[0], ("ping", {"type": "ping"}), *events[1:]])

    with pytest.raises(StreamError, match="data type"):
        check_stream([("message", events[0][1]), *events[1:]])


def test_the_checker_rejects_an_answer_that_is_not_a_message():
    good = answer(chat_answer({"role": "assistant", "content": "x"}))

    for change in (
        {"stop_reason": None},
        {"type": "completion"},
        {"stop_sequence": "x"},
        {"usage": {"input_tokens": 1}},
        {"content": [{"type": "text"}]},
    ):
        with pytest.raises(StreamError):
            check_message({**good, **change})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (415, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_it_names_anthropics_error_type_for_a_status(status, kind):
    assert messages.error_type(status) == kind


def test_an_error_body_is_anthropics_shape():
    body = messages.error_body(errors.model_not_found("claude-x"))

    assert json.loads(body) == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "The model 'claude-x' does not exist or you do not have access to it.",
        },
    }


# --------------------------------------------------------------------------- count_tokens


def test_it_estimates_input_tokens_from_what_is_sent():
    payload = request(
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cch=1;"},
            {"type": "text", "text": "abcd"},
        ],
        messages=[
            {"role": "user", "content": "12345678"},  # 8
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "not sent on", "signature": "s"},
                    {"type": "tool_use", "id": "t", "name": "ls", "input": {"a": 1}},  # 2 + 7
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {"type": "text", "text": "out"},
                            {"type": "image", "source": {}},
                        ],
                    },  # 3
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": "ok",
                        "is_error": True,
                    },  # 9
                    {"type": "image", "source": {}},
                    {"type": "text", "text": "go"},  # 2
                ],
            },
        ],
        tools=[
            {"name": "ls", "description": "List.", "input_schema": {"type": "object"}}
        ],  # 2+5+17
    )

    chars = 4 + 8 + 9 + 3 + 9 + 2 + 24
    assert messages.estimate_input_tokens(payload) == -(-chars // 4) + 3 * 4 + 2 * 1600


def test_other_blocks_in_a_tool_result_are_noted_by_type():
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "tool_reference", "tool_name": "grep"}],
    }

    assert to_chat(request(messages=[{"role": "user", "content": [result]}]))["messages"] == [
        {
            "role": "tool",
            "tool_call_id": "toolu_1",
            "content": "[tool_reference omitted: not supported in tool results here]",
        }
    ]


def test_a_chunk_without_choices_is_a_usage_chunk():
    encoder = MessagesStream(BASE, message_id="msg_1", model="m", input_tokens=0)

    assert encoder.feed({"id": "c", "usage": {"prompt_tokens": 1}}) == []


def test_the_chat_body_meets_the_chat_schema_and_the_payload_is_left_as_it_came():
    payload = request(
        system="Be brief.",
        messages=[
            *TOOL_HISTORY,
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                ],
            },
        ],
        tools=[{"name": "ls", "description": "List.", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "ls", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        thinking={"type": "enabled", "budget_tokens": 5000},
        metadata={"user_id": "u"},
        stream=True,
    )
    kept = json.loads(json.dumps(payload))

    validation.check_body(to_chat(payload), validation.CHAT)

    assert payload == kept

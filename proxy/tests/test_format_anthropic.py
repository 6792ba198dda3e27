"""Chat bodies become Anthropic Messages requests, and Messages answers and streams chat ones."""

import json

import pytest

from proxy.errors import APIError
from proxy.formats.anthropic import ChatChunks, from_chat, to_chat

HI = [{"role": "user", "content": "hi"}]


def refused(body: dict, *, max_tokens: int = 100) -> APIError:
    with pytest.raises(APIError) as caught:
        from_chat(body, max_tokens=max_tokens)
    assert caught.value.status == 400
    return caught.value


# --------------------------------------------------------------------------- requests


def test_it_makes_a_minimal_request_with_the_default_max_tokens():
    assert from_chat({"model": "claude", "messages": HI}, max_tokens=4096) == {
        "model": "claude",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_it_joins_system_and_developer_messages_into_system():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
            *HI,
        ],
    }

    assert from_chat(body, max_tokens=1)["system"] == "be brief\n\nbe kind"


def test_it_merges_consecutive_turns_of_one_role_and_drops_empty_text():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "c"},
        ],
    }

    assert from_chat(body, max_tokens=1)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
    ]


def test_it_maps_images_from_data_urls_and_http_urls():
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    turns = from_chat(
        {"model": "m", "messages": [{"role": "user", "content": content}]}, max_tokens=1
    )

    assert turns["messages"][0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0=="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url", ["data:application/pdf;base64,AAAA", "data:image/png,notbase64", "ftp://x/y.png"]
)
def test_it_refuses_an_image_it_cannot_send(url):
    content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]
    error = refused({"model": "m", "messages": [{"role": "user", "content": content}]})

    assert error.param == "messages[0].content[1]"


def test_it_refuses_content_parts_other_than_text_and_images():
    content = [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]

    assert refused({"model": "m", "messages": [{"role": "user", "content": content}]}).param == (
        "messages[0].content[0]"
    )


TOOL_ROUND = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": "checking",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": '{"c":1}'}},
            {"id": "call_b", "type": "function", "function": {"name": "w", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
    {"role": "user", "content": "thanks"},
]


def test_it_maps_tool_calls_to_tool_use_and_tool_messages_to_one_user_turn_of_results():
    assert from_chat({"model": "m", "messages": TOOL_ROUND}, max_tokens=1)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "call_a", "name": "w", "input": {"c": 1}},
                {"type": "tool_use", "id": "call_b", "name": "w", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "rain"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize("arguments", ["[1, 2]", "{not json", "3"])
def test_it_refuses_tool_call_arguments_that_are_not_a_json_object(arguments):
    messages = [
        *HI,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]
    error = refused({"model": "m", "messages": messages})

    assert error.param == "messages[1].tool_calls[0].function.arguments"
    assert "messages[1]" in error.message


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "w",
            "description": "the weather",
            "parameters": {"type": "object", "properties": {"c": {"type": "string"}}},
            "strict": True,
        },
    },
    {"type": "function", "function": {"name": "bare"}},
]


def test_it_maps_function_tools():
    assert from_chat({"model": "m", "messages": HI, "tools": TOOLS}, max_tokens=1)["tools"] == [
        {
            "name": "w",
            "description": "the weather",
            "input_schema": {"type": "object", "properties": {"c": {"type": "string"}}},
            "strict": True,
        },
        {"name": "bare", "input_schema": {"type": "object"}},
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", None, {"type": "auto"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ({"type": "function", "function": {"name": "w"}}, True, {"type": "tool", "name": "w"}),
    ],
)
def test_it_maps_tool_choice_and_parallel_tool_calls(choice, parallel, expected):
    body = {"model": "m", "messages": HI, "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel

    assert from_chat(body, max_tokens=1).get("tool_choice") == expected


def test_it_refuses_tools_other_than_functions():
    tools = [*TOOLS, {"type": "custom", "custom": {"name": "x"}}]

    assert refused({"model": "m", "messages": HI, "tools": tools}).param == "tools[2].type"


def test_it_maps_sampling_limits_stop_user_and_stream():
    body = {
        "model": "m",
        "messages": HI,
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "stop": "END",
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 3,
        "frequency_penalty": 0.1,
    }

    made = from_chat(body, max_tokens=4096)

    assert {k: v for k, v in made.items() if k != "messages"} == {
        "model": "m",
        "max_tokens": 60,
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    assert from_chat({**body, "stop": ["a", "b"]}, max_tokens=1)["stop_sequences"] == ["a", "b"]
    assert (
        from_chat({"model": "m", "messages": HI, "max_tokens": 7}, max_tokens=1)["max_tokens"] == 7
    )


def test_it_refuses_a_temperature_over_one():
    assert refused({"model": "m", "messages": HI, "temperature": 1.5}).param == "temperature"


@pytest.mark.parametrize(
    ("effort", "limit", "expected"),
    [
        ("low", 8192, {"type": "enabled", "budget_tokens": 1024}),
        ("medium", 8192, {"type": "enabled", "budget_tokens": 4096}),
        ("high", 8192, {"type": "enabled", "budget_tokens": 8191}),
        ("high", 1024, None),
        ("none", 8192, None),
    ],
)
def test_it_maps_reasoning_effort_to_a_thinking_budget_below_max_tokens(effort, limit, expected):
    body = {"model": "m", "messages": HI, "reasoning_effort": effort}

    assert from_chat(body, max_tokens=limit).get("thinking") == expected


def test_it_maps_a_json_schema_response_format_to_structured_output():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"model": "m", "messages": HI, "response_format": response_format}

    assert from_chat(body, max_tokens=1)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    assert "output_config" not in from_chat(
        {**body, "response_format": {"type": "text"}}, max_tokens=1
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_it_refuses_what_messages_cannot_carry(extra, param):
    assert refused({"model": "m", "messages": HI, **extra}).param == param


# --------------------------------------------------------------------------- answers


def message(content: list, stop_reason: str = "end_turn", **usage) -> dict:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_it_answers_text_as_a_chat_completion():
    answer = to_chat(message([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]))

    assert answer == {
        "id": "msg_01",
        "object": "chat.completion",
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        },
    }


def test_it_answers_tool_use_and_thinking():
    content = [
        {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Zürich", "n": 2}},
    ]
    answer = to_chat(message(content, "tool_use"))

    assert answer["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city":"Zürich","n":2}'},
                }
            ],
        },
        "finish_reason": "tool_calls",
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_it_maps_stop_reasons(stop_reason, finish):
    assert to_chat(message([], stop_reason))["choices"][0]["finish_reason"] == finish


def test_it_counts_cached_input_in_prompt_tokens():
    answer = to_chat(message([], cache_read_input_tokens=100, cache_creation_input_tokens=20))

    assert answer["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }


def test_it_leaves_out_absurd_usage_and_drops_an_absurd_cache_count():
    assert "usage" not in to_chat(message([], input_tokens=-1))
    assert "usage" not in to_chat(message([], output_tokens=2**63))
    dropped = to_chat(message([], cache_read_input_tokens="100"))["usage"]
    assert dropped["prompt_tokens"] == 10
    assert dropped["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"type": "error", "error": {"type": "api_error", "message": "x"}},
        {"type": "message", "content": "text"},
        {"type": "message", "content": ["text"]},
    ],
)
def test_it_raises_value_error_for_what_is_not_a_message(answer):
    with pytest.raises(ValueError):
        to_chat(answer)


# --------------------------------------------------------------------------- streams

START = {
    "type": "message_start",
    "message": {
        "id": "msg_s",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5},
    },
}


def block_delta(index: int, delta: dict) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def chunk(delta: dict, finish=None) -> dict:
    return {
        "id": "msg_s",
        "object": "chat.completion.chunk",
        "model": "claude-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def run(events: list[dict], **kwargs) -> tuple[list[dict], ChatChunks]:
    chunks = ChatChunks(**kwargs)
    out = []
    for event in events:
        out += chunks.feed(event)
    return out, chunks


def test_it_streams_text_as_the_docs_example_does():
    # The text example of docs.anthropic.com/en/api/messages-streaming.
    events = [
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        block_delta(0, {"type": "text_delta", "text": "Hello"}),
        block_delta(0, {"type": "text_delta", "text": "!"}),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        {"type": "message_stop"},
    ]

    out, chunks = run(events)

    assert out == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": "!"}),
        chunk({}, "stop"),
        {
            "id": "msg_s",
            "object": "chat.completion.chunk",
            "model": "claude-x",
            "choices": [],
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 15,
                "total_tokens": 45,
                "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
            },
        },
    ]
    assert chunks.finished


def test_it_streams_thinking_and_tool_use_with_cumulative_usage():
    # The extended-thinking and tool-use examples of the streaming docs, together.
    events = [
        START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        block_delta(0, {"type": "thinking_delta", "thinking": "Let me think"}),
        block_delta(0, {"type": "signature_delta", "signature": "EqQ"}),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        block_delta(1, {"type": "text_delta", "text": "Okay"}),
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_a",
                "name": "get_weather",
                "input": {},
            },
        },
        block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"location": "San Fra'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": 'ncisco"}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}},
        },
        {"type": "content_block_stop", "index": 3},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"input_tokens": 26, "output_tokens": 89, "cache_read_input_tokens": 5},
        },
        {"type": "some_future_event", "x": 1},
        {"type": "message_stop"},
    ]

    out, _ = run(events, created=7)

    def tool(index: int, **function) -> dict:
        return {"tool_calls": [{"index": index, "function": function}]}

    opening = {"index": 0, "id": "toolu_a", "type": "function"}
    second = {"index": 1, "id": "toolu_b", "type": "function"}
    expected = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Let me think"}),
        chunk({"content": "Okay"}),
        chunk({"tool_calls": [{**opening, "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk(tool(0, arguments='{"location": "San Fra')),
        chunk(tool(0, arguments='ncisco"}')),
        chunk({"tool_calls": [{**second, "function": {"name": "now", "arguments": ""}}]}),
        chunk(tool(1, arguments="{}")),
        chunk({}, "tool_calls"),
    ]
    assert out[:-1] == [{**c, "created": 7} for c in expected]
    assert out[-1]["usage"]["prompt_tokens"] == 31
    assert out[-1]["usage"]["completion_tokens"] == 89
    assert out[-1]["created"] == 7


def test_it_raises_on_an_error_event_and_on_what_is_no_event():
    chunks = ChatChunks()
    chunks.feed(START)

    with pytest.raises(ValueError, match="overloaded_error"):
        chunks.feed(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    with pytest.raises(ValueError):
        chunks.feed({"no": "type"})
    assert not chunks.finished


def test_it_leaves_out_the_usage_chunk_when_usage_is_absurd():
    start = json.loads(json.dumps(START))
    start["message"]["usage"] = {"input_tokens": -3, "output_tokens": 1}
    out, chunks = run([start, {"type": "message_stop"}])

    assert out == [chunk({"role": "assistant", "content": ""}), chunk({}, "stop")]
    assert chunks.finished

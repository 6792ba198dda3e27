"""The Responses API on chat upstreams (`proxy.formats.responses`): request mapping, answers,
streams checked by `responses_checker` and accepted by the official openai SDK."""

import itertools
import json

import httpx
import openai
import pytest
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from proxy import validation
from proxy.errors import APIError, upstream_timeout
from proxy.formats import responses
from proxy.tests.responses_checker import check_response, check_stream
from proxy.usage import Usage

IDS = {"response_id": "resp_0123456789abcdef01234567", "created_at": 1700000000, "model": "pub"}
USED = Usage(input=20, output=9, cache_read=4, cache_write=1, reasoning=3)
USAGE = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 1},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 29,
}


@pytest.fixture(autouse=True)
def counted_ids(monkeypatch):
    """Ids made in order: `msg_000…001`, `fc_000…002`, … (prefix and 24 hex digits)."""
    counter = itertools.count(1)
    monkeypatch.setattr(responses, "new_id", lambda prefix: f"{prefix}{next(counter):024x}")


def n(number: int) -> str:
    return f"{number:024x}"


def refused(payload: dict, history=()) -> APIError:
    with pytest.raises(APIError) as caught:
        responses.to_chat({"model": "pub", **payload}, list(history))
    assert caught.value.status == 400
    return caught.value


def chat(payload: dict, history=()) -> dict:
    return responses.to_chat({"model": "pub", **payload}, list(history))


def messages(payload: dict, history=()) -> list[dict]:
    return chat(payload, history)["messages"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("input", 3, "invalid_type"),
        ("input", ["hi"], "invalid_type"),
        ("instructions", ["x"], "invalid_type"),
        ("tools", [{"name": "f"}], "missing_required_parameter"),
        ("tools", [{"type": 1}], "invalid_type"),
        ("tool_choice", 1, "invalid_type"),
        ("parallel_tool_calls", "yes", "invalid_type"),
        ("max_output_tokens", 15, "integer_below_min_value"),
        ("temperature", 2.5, "decimal_above_max_value"),
        ("top_p", -0.1, "decimal_below_min_value"),
        ("stream", "true", "invalid_type"),
        ("store", 1, "invalid_type"),
        ("previous_response_id", 5, "invalid_type"),
        ("metadata", {"k": 1}, "invalid_type"),
        ("metadata", {str(i): "v" for i in range(17)}, "object_above_max_properties"),
        ("text", "json", "invalid_type"),
        ("reasoning", "high", "invalid_type"),
        ("include", [1], "invalid_type"),
        ("safety_identifier", "x" * 65, "string_above_max_length"),
        ("user", 7, "invalid_type"),
    ],
)
def test_it_refuses_a_request_the_spec_refuses(field, value, code):
    with pytest.raises(APIError) as caught:
        validation.check_body({"model": "pub", field: value}, validation.RESPONSES)

    assert (caught.value.status, caught.value.code) == (400, code)
    assert caught.value.param.startswith(field)


def test_it_accepts_what_codex_sends_and_fields_it_does_not_know():
    payload = {
        "model": "pub",
        "instructions": "be brief",
        "input": [{"type": "message", "role": "user", "content": "hi"}],
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": True}},
        "max_output_tokens": 16,
        "metadata": {"k": "v"},
        "a_new_field": {"x": 1},
    }

    validation.check_body(payload, validation.RESPONSES)


def test_it_requires_a_model():
    with pytest.raises(APIError) as caught:
        validation.check_body({"input": "hi"}, validation.RESPONSES)

    assert caught.value.code == "missing_model"


# --------------------------------------------------------------------------- input items


def test_it_makes_a_string_input_one_user_message_item():
    assert responses.input_items({"input": "hi"}) == [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "type": "message",
            "status": "completed",
            "id": "msg_" + n(1),
        }
    ]


def test_it_types_items_and_keeps_the_clients_ids():
    items = responses.input_items(
        {
            "input": [
                {"role": "assistant", "content": "ok", "id": "msg_mine"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {
                    "type": "function_call",
                    "id": "fc_mine",
                    "call_id": "c2",
                    "name": "f",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "4"},
                {"type": "reasoning", "summary": []},
                {"role": "developer", "content": [{"type": "input_text", "text": "d"}]},
            ]
        }
    )

    assert items == [
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            "id": "msg_mine",
            "type": "message",
            "status": "completed",
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
            "id": "fc_" + n(1),
        },
        {
            "type": "function_call",
            "id": "fc_mine",
            "call_id": "c2",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
        },
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": "4",
            "status": "completed",
            "id": "fco_" + n(2),
        },
        {"type": "reasoning", "summary": [], "id": "rs_" + n(3)},
        {
            "role": "developer",
            "content": [{"type": "input_text", "text": "d"}],
            "type": "message",
            "status": "completed",
            "id": "msg_" + n(4),
        },
    ]


def test_its_items_are_what_the_sdk_lists_as_input_items():
    from openai.types.responses import ResponseItemList

    items = responses.input_items(
        {
            "input": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "4"},
            ]
        }
    )
    listed = ResponseItemList.model_validate(
        {"object": "list", "data": items, "first_id": "a", "last_id": "b", "has_more": False}
    )

    assert [type(i).__name__ for i in listed.data] == [
        "ResponseInputMessageItem",
        "ResponseOutputMessage",
        "ResponseFunctionToolCallItem",
        "ResponseFunctionToolCallOutputItem",
    ]


@pytest.mark.parametrize(
    ("given", "code", "param"),
    [
        ([1], "invalid_type", "input[0]"),
        ([{"content": "x"}], "missing_required_parameter", "input[0].type"),
        ([{"role": "tool", "content": "x"}], "invalid_value", "input[0].role"),
        ([{"role": "user"}], "missing_required_parameter", "input[0].content"),
        ([{"role": "user", "content": 5}], "invalid_type", "input[0].content"),
    ],
)
def test_it_refuses_input_that_is_not_items(given, code, param):
    with pytest.raises(APIError) as caught:
        responses.input_items({"input": given})

    assert (caught.value.code, caught.value.param) == (code, param)


# --------------------------------------------------------------------------- to_chat


def test_it_maps_a_plain_text_request():
    assert chat({"input": "hi", "stream": True}) == {
        "model": "pub",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


def test_it_puts_the_instructions_first_and_keeps_developer_messages():
    assert messages(
        {
            "instructions": "be brief",
            "input": [
                {"role": "developer", "content": "dev"},
                {"role": "system", "content": [{"type": "input_text", "text": "sys"}]},
                {"role": "user", "content": "hi"},
            ],
        }
    ) == [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "dev"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]


def test_it_maps_multi_part_user_content_and_images():
    content = [
        {"type": "input_text", "text": "what is"},
        {"type": "input_text", "text": "this?"},
        {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "original"},
    ]

    assert messages({"input": [{"role": "user", "content": content}]}) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is"},
                {"type": "text", "text": "this?"},
                {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        }
    ]


def test_it_puts_the_chains_history_before_the_input_without_its_instructions():
    history = [
        *responses.input_items({"input": "2+2?"}),
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "add"}],
        },
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "4", "annotations": []}],
        },
    ]

    assert messages({"input": "and 3+3?", "instructions": "new"}, history) == [
        {"role": "system", "content": "new"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ]


def test_it_maps_a_function_tool_round_trip():
    history = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "user",
            "content": [{"type": "input_text", "text": "weather in Paris and Rome?"}],
        },
        {
            "type": "message",
            "id": "msg_2",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Looking.", "annotations": []}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_a",
            "name": "weather",
            "arguments": '{"city":"Paris"}',
            "status": "completed",
        },
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_b",
            "name": "weather",
            "arguments": '{"city":"Rome"}',
            "status": "completed",
        },
    ]
    payload = {
        "input": [
            {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [
                    {"type": "input_text", "text": "rain"},
                    {"type": "input_image", "image_url": "https://x/r.png"},
                    {"type": "input_text", "text": "cold"},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object"},
                "strict": True,
            },
        ],
        "tool_choice": {"type": "function", "name": "weather"},
    }

    assert chat(payload, history) == {
        "model": "pub",
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": "rain\ncold"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }


def test_it_merges_text_after_a_call_into_the_calls_assistant_message():
    # A tool message must follow its assistant tool_calls directly: text may not come between.
    result = messages(
        {
            "input": [
                {"role": "user", "content": "go"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"role": "assistant", "content": "calling f"},
                {"type": "function_call_output", "call_id": "c", "output": "done"},
            ]
        }
    )

    assert result[1:] == [
        {
            "role": "assistant",
            "content": "calling f",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "done"},
    ]


def test_it_approximates_custom_tools_as_functions_of_one_string():
    body = chat(
        {
            "input": [
                {"role": "user", "content": "patch"},
                {
                    "type": "custom_tool_call",
                    "call_id": "c",
                    "name": "apply_patch",
                    "input": "*** Begin",
                },
                {"type": "custom_tool_call_output", "call_id": "c", "output": "ok"},
            ],
            "tools": [
                {
                    "type": "custom",
                    "name": "apply_patch",
                    "description": "Patch files",
                    "format": {"type": "grammar", "syntax": "lark", "definition": "x"},
                }
            ],
            "tool_choice": {"type": "custom", "name": "apply_patch"},
        }
    )

    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "apply_patch",
                "description": "Patch files",
                "parameters": responses.CUSTOM_INPUT,
            },
        }
    ]
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}


def test_it_narrows_the_tools_for_allowed_tools():
    tools = [{"type": "function", "name": name} for name in ("a", "b", "c")]
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "c"}],
    }

    body = chat({"input": "x", "tools": tools, "tool_choice": choice})

    assert body["tools"] == [
        {"type": "function", "function": {"name": "a"}},
        {"type": "function", "function": {"name": "c"}},
    ]
    assert body["tool_choice"] == "required"


@pytest.mark.parametrize("choice", ["none", "auto", "required"])
def test_it_passes_tool_choice_strings(choice):
    assert chat({"input": "x", "tool_choice": choice})["tool_choice"] == choice


def test_it_maps_the_settings_and_keeps_the_gateways_own():
    body = chat(
        {
            "input": "x",
            "max_output_tokens": 100,
            "temperature": 0.3,
            "top_p": 0.9,
            "parallel_tool_calls": False,
            "reasoning": {"effort": "high", "summary": "detailed"},
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "description": "d",
                    "schema": {"type": "object"},
                    "strict": True,
                },
                "verbosity": "low",
            },
            "store": True,
            "previous_response_id": "resp_1",
            "metadata": {"k": "v"},
            "user": "u",
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "include": ["reasoning.encrypted_content"],
            "service_tier": "flex",
            "truncation": "disabled",
            "background": False,
        }
    )

    assert body == {
        "model": "pub",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "max_completion_tokens": 100,
        "verbosity": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "out",
                "description": "d",
                "schema": {"type": "object"},
                "strict": True,
            },
        },
        "reasoning_effort": "high",
    }


def test_it_maps_json_object_and_drops_plain_text_format():
    assert chat({"input": "x", "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in chat({"input": "x", "text": {"format": {"type": "text"}}})


def test_the_payload_is_left_as_it_came():
    payload = {"model": "pub", "input": [{"role": "user", "content": "hi"}]}

    responses.to_chat(payload, [])

    assert payload == {"model": "pub", "input": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "unsupported_parameter",
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "unsupported_parameter",
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "missing_required_parameter",
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "video"}]}]},
            "invalid_value",
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"text": "x"}]}]},
            "missing_required_parameter",
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "unsupported_parameter",
            "input[0].content[0].type",
        ),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "unsupported_parameter",
            "input[0].type",
        ),
        (
            {"input": [{"type": "local_shell_call", "call_id": "c"}]},
            "unsupported_parameter",
            "input[0].type",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "missing_required_parameter",
            "input[0].call_id",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c"}]},
            "missing_required_parameter",
            "input[0].output",
        ),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "unsupported_parameter", "tools"),
        (
            {"input": "x", "tools": [{"type": "mcp", "server_label": "s"}]},
            "unsupported_parameter",
            "tools",
        ),
        (
            {"input": "x", "tools": [{"type": "function"}]},
            "missing_required_parameter",
            "tools[0].name",
        ),
        ({"input": "x", "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
        (
            {"input": "x", "tool_choice": {"type": "web_search_preview"}},
            "unsupported_parameter",
            "tool_choice",
        ),
        (
            {"input": "x", "tool_choice": {"type": "allowed_tools", "mode": "x", "tools": []}},
            "invalid_value",
            "tool_choice.mode",
        ),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "invalid_value", "text.format.type"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "missing_required_parameter",
            "text.format.name",
        ),
        ({"input": "x", "truncation": "auto"}, "unsupported_parameter", "truncation"),
        ({"input": "x", "background": True}, "unsupported_parameter", "background"),
        ({"input": "x", "conversation": "conv_1"}, "unsupported_parameter", "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "unsupported_parameter", "prompt"),
        ({}, "missing_required_parameter", "input"),
    ],
)
def test_it_refuses_what_a_chat_upstream_cannot_be_asked(payload, code, param):
    error = refused(payload)

    assert (error.code, error.param) == (code, param)


def test_it_names_the_chain_for_a_bad_item_in_the_history():
    error = refused({"input": "x"}, [{"type": "item_reference", "id": "msg_1"}])

    assert error.param == "previous_response_id"


# --------------------------------------------------------------------------- from_chat


def answer(message: dict, finish_reason="stop") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
    }


def from_chat(message: dict, finish_reason="stop", payload=None) -> dict:
    made = responses.from_chat(
        answer(message, finish_reason),
        payload or {"model": "pub", "input": "hi"},
        used=USED,
        **IDS,
    )
    check_response(made)
    return made


def test_it_makes_a_text_answer_a_complete_response():
    made = from_chat({"content": "Hello!"})

    assert made == {
        "id": IDS["response_id"],
        "object": "response",
        "created_at": IDS["created_at"],
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "pub",
        "output": [
            {
                "id": "msg_" + n(1),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": None,
        "store": True,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": USAGE,
        "user": None,
        "metadata": {},
    }
    assert Response.model_validate(made).output_text == "Hello!"


def test_it_echoes_the_requests_settings():
    payload = {
        "model": "pub",
        "input": "hi",
        "instructions": "be brief",
        "max_output_tokens": 50,
        "parallel_tool_calls": False,
        "previous_response_id": "resp_p",
        "reasoning": {"effort": "low"},
        "store": False,
        "temperature": 0.5,
        "top_p": 0.5,
        "text": {"verbosity": "low"},
        "tool_choice": "none",
        "metadata": {"k": "v"},
        "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": True}],
        "user": "u",
    }

    made = from_chat({"content": "x"}, payload=payload)

    assert {k: made[k] for k in payload if k != "input"} == {
        **{k: v for k, v in payload.items() if k != "input"},
        "text": {"format": {"type": "text"}, "verbosity": "low"},
    }
    Response.model_validate(made)


def test_it_makes_reasoning_and_tool_calls_output_items():
    made = from_chat(
        {
            "content": None,
            "reasoning_content": "think",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x":1}'},
                },
                {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        "tool_calls",
    )

    assert made["status"] == "completed"
    assert made["output"] == [
        {
            "id": "rs_" + n(1),
            "type": "reasoning",
            "status": "completed",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "think"}],
        },
        {
            "id": "fc_" + n(2),
            "type": "function_call",
            "status": "completed",
            "arguments": '{"x":1}',
            "call_id": "call_a",
            "name": "f",
        },
        {
            "id": "fc_" + n(3),
            "type": "function_call",
            "status": "completed",
            "arguments": "{}",
            "call_id": "call_b",
            "name": "g",
        },
    ]
    parsed = Response.model_validate(made)
    assert [item.type for item in parsed.output] == ["reasoning", "function_call", "function_call"]


def test_it_reads_reasoning_from_the_reasoning_field_too():
    made = from_chat({"content": "4", "reasoning": "2+2"})

    assert [item["type"] for item in made["output"]] == ["reasoning", "message"]
    assert made["output"][0]["content"] == [{"type": "reasoning_text", "text": "2+2"}]


@pytest.mark.parametrize(
    ("finish_reason", "reason"),
    [("length", "max_output_tokens"), ("content_filter", "content_filter")],
)
def test_it_reports_an_answer_cut_short_as_incomplete(finish_reason, reason):
    made = from_chat({"content": "Once upon"}, finish_reason)

    assert made["status"] == "incomplete"
    assert made["incomplete_details"] == {"reason": reason}
    assert made["output"][0]["status"] == "incomplete"
    assert Response.model_validate(made).output_text == "Once upon"


def test_it_makes_an_empty_answer_a_response_without_output():
    assert from_chat({"content": ""})["output"] == []


@pytest.mark.parametrize(
    "chat",
    [
        {},
        {"choices": []},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": "x"}]},
        {"choices": [{"message": {"content": 3}}]},
        {"choices": [{"message": {"tool_calls": "x"}}]},
    ],
)
def test_it_raises_value_error_for_an_answer_not_shaped_as_chat(chat):
    with pytest.raises(ValueError):
        responses.from_chat(chat, {"model": "pub"}, used=USED, **IDS)


# --------------------------------------------------------------------------- streams


def chunk(delta: dict | None = None, finish_reason=None, choices=True) -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    body["choices"] = (
        [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}] if choices else []
    )
    return body


def call(index, *, id=None, name=None, arguments=None) -> dict:
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    made = {"index": index, "function": function}
    if id is not None:
        made |= {"id": id, "type": "function"}
    return {"tool_calls": [made]}


def stream(chunks, payload=None, used=USED):
    """The events of an encoder over `chunks`, checked; (events, encoder)."""
    encoder = responses.ResponsesStream(payload or {"model": "pub", "input": "hi"}, **IDS)
    events = encoder.start()
    for one in chunks:
        events += encoder.feed(one)
    events += encoder.finish(used)
    assert check_stream(events) == encoder.response
    return events, encoder


def sdk_state(events: list[dict], tools=None) -> ResponseStreamState:
    """The openai SDK's stream accumulator, fed the events as its client decodes them."""
    state = ResponseStreamState(input_tools=tools or [], text_format=openai.omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    return state


def over_http(events: list[dict]):
    """The official client's `responses.stream()` over the events written as SSE."""
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

    def answer_with(request):
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(answer_with)),
    )
    return client.responses.stream(model="pub", input="hi")


def kinds(events) -> list[str]:
    return [event["type"].removeprefix("response.") for event in events]


TEXT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(finish_reason="stop"),
    chunk(choices=False),
]


def test_it_streams_a_text_answer():
    events, encoder = stream(TEXT)

    assert kinds(events) == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert events[4] == {
        "type": "response.output_text.delta",
        "item_id": "msg_" + n(1),
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 4,
    }
    assert events[0]["response"]["usage"] is None
    assert encoder.response["usage"] == USAGE
    assert sdk_state(events)._completed_response.output_text == "Hello"
    with over_http(events) as sdk_stream:
        assert [e.type for e in sdk_stream][-1] == "response.completed"
        assert sdk_stream.get_final_response().output_text == "Hello"


def test_a_stream_ends_with_what_from_chat_makes_of_the_same_answer(monkeypatch):
    _, encoder = stream(TEXT)
    monkeypatch.setattr(responses, "new_id", lambda prefix: prefix + n(1))

    assert (
        responses.from_chat(
            answer({"content": "Hello"}), {"model": "pub", "input": "hi"}, used=USED, **IDS
        )
        == encoder.response
    )


def test_it_streams_reasoning_then_text():
    events, encoder = stream(
        [
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning": "think."}),
            chunk({"content": "42"}),
            chunk(finish_reason="stop"),
        ]
    )

    assert kinds(events)[2:] == [
        "output_item.added",
        "content_part.added",
        "reasoning_text.delta",
        "reasoning_text.delta",
        "reasoning_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert encoder.response["output"][0] == {
        "id": "rs_" + n(1),
        "type": "reasoning",
        "status": "completed",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Let me think."}],
    }
    assert sdk_state(events)._completed_response.output_text == "42"
    with over_http(events) as sdk_stream:
        assert sdk_stream.get_final_response().output[0].content[0].text == "Let me think."


def test_it_streams_two_parallel_tool_calls():
    events, encoder = stream(
        [
            chunk({"role": "assistant"}),
            chunk(call(0, id="call_a", name="weather", arguments="")),
            chunk(call(0, arguments='{"city":')),
            chunk(call(0, arguments='"Paris"}')),
            chunk(call(1, id="call_b", name="weather", arguments='{"city":"Rome"}')),
            chunk(finish_reason="tool_calls"),
        ]
    )

    assert kinds(events)[2:] == [
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    assert events[2]["item"] == {
        "id": "fc_" + n(1),
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_a",
        "name": "weather",
    }
    assert events[5] == {
        "type": "response.function_call_arguments.done",
        "item_id": "fc_" + n(1),
        "output_index": 0,
        "name": "weather",
        "arguments": '{"city":"Paris"}',
        "sequence_number": 5,
    }
    assert [(i["call_id"], i["arguments"]) for i in encoder.response["output"]] == [
        ("call_a", '{"city":"Paris"}'),
        ("call_b", '{"city":"Rome"}'),
    ]
    tools = [
        {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": False}
    ]
    final = sdk_state(events, tools)._completed_response
    assert [o.call_id for o in final.output] == ["call_a", "call_b"]
    with over_http(events) as sdk_stream:
        assert sdk_stream.get_final_response().output[1].arguments == '{"city":"Rome"}'


def test_a_new_call_id_at_the_same_index_is_a_new_call():
    # Some servers number every call 0; their ids still differ.
    _, encoder = stream(
        [
            chunk(call(0, id="call_a", name="f", arguments="{}")),
            chunk(call(0, id="call_b", name="g", arguments="{}")),
            chunk(call(0, id="call_b", arguments="")),
            chunk(finish_reason="tool_calls"),
        ]
    )

    assert [i["name"] for i in encoder.response["output"]] == ["f", "g"]


def test_it_streams_a_tool_call_after_text():
    events, encoder = stream(
        [
            chunk({"content": "Let me check."}),
            chunk(call(0, id="call_a", name="f", arguments='{"q":1}')),
            chunk(finish_reason="tool_calls"),
        ]
    )

    assert [i["type"] for i in encoder.response["output"]] == ["message", "function_call"]
    assert events[8]["output_index"] == 1  # the call is added after the message is done
    final = sdk_state(events)._completed_response
    assert final.output_text == "Let me check."
    with over_http(events) as sdk_stream:
        assert sdk_stream.get_final_response().output[1].name == "f"


def test_it_streams_an_answer_cut_short_as_incomplete():
    events, encoder = stream([chunk({"content": "Once"}), chunk(finish_reason="length")])

    assert events[-1]["type"] == "response.incomplete"
    assert encoder.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert encoder.response["output"][0]["status"] == "incomplete"
    sdk_state(events)


def test_an_empty_stream_completes_without_output():
    events, encoder = stream([])

    assert kinds(events) == ["created", "in_progress", "completed"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert encoder.response["output"] == []
    assert sdk_state(events)._completed_response.output_text == ""
    with over_http(events) as sdk_stream:
        assert sdk_stream.get_final_response().usage.total_tokens == 29


def test_a_failure_after_some_deltas_ends_with_response_failed():
    encoder = responses.ResponsesStream({"model": "pub", "input": "hi"}, **IDS)
    events = encoder.start()
    events += encoder.feed(chunk({"reasoning_content": "hm"}))
    events += encoder.feed(chunk({"content": "Par"}))
    events += encoder.fail(upstream_timeout("pub"))

    response = check_stream(events)

    assert kinds(events)[-4:] == [
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "failed",
    ]  # the open message is left open, as OpenAI leaves it
    assert response["status"] == "failed"
    assert response["error"] == {
        "code": "upstream_timeout",
        "message": "The upstream for model 'pub' did not answer in time.",
    }
    assert [item["type"] for item in response["output"]] == ["reasoning"]
    assert response["usage"] is None
    assert encoder.response == response
    state = sdk_state(events)
    assert state._completed_response is None  # the SDK accumulates it without raising
    with over_http(events) as sdk_stream:
        assert [e.type for e in sdk_stream][-1] == "response.failed"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            sdk_stream.get_final_response()


def test_a_failure_without_a_code_is_a_server_error():
    encoder = responses.ResponsesStream({"model": "pub"}, **IDS)
    events = encoder.start() + encoder.fail(APIError(500, "boom"))

    assert check_stream(events)["error"] == {"code": "server_error", "message": "boom"}


def test_it_raises_value_error_for_a_chunk_not_shaped_as_chat():
    encoder = responses.ResponsesStream({"model": "pub"}, **IDS)
    encoder.start()
    for bad in (
        {},
        {"choices": "x"},
        {"choices": [1]},
        {"choices": [{"delta": []}]},
        chunk({"content": 5}),
        chunk({"tool_calls": "x"}),
        chunk({"tool_calls": [1]}),
    ):
        with pytest.raises(ValueError):
            encoder.feed(bad)


def test_a_call_resumed_after_the_next_began_is_refused():
    encoder = responses.ResponsesStream({"model": "pub"}, **IDS)
    encoder.start()
    encoder.feed(chunk(call(0, id="call_a", name="f", arguments="{")))
    encoder.feed(chunk(call(1, id="call_b", name="g", arguments="{")))

    with pytest.raises(ValueError):
        encoder.feed(chunk(call(0, arguments="}")))


# --------------------------------------------------------------------------- the checker


def good_events() -> list[dict]:
    return stream(TEXT)[0]


def renumbered(events: list[dict]) -> list[dict]:
    return [{**event, "sequence_number": i} for i, event in enumerate(events)]


def test_the_checker_accepts_a_good_stream():
    assert check_stream(good_events())["status"] == "completed"


def test_the_checker_rejects_a_stream_missing_output_item_added():
    events = renumbered([e for e in good_events() if e["type"] != "response.output_item.added"])

    with pytest.raises(AssertionError, match=r"output_item\.added missing"):
        check_stream(events)


def test_the_checker_rejects_a_skipped_sequence_number():
    events = good_events()
    del events[4]

    with pytest.raises(AssertionError, match="sequence_number"):
        check_stream(events)


def test_the_checker_rejects_a_wrong_prefix():
    events = good_events()
    for event in events:
        if "item" in event:
            event["item"]["id"] = "item_1"
        if "item_id" in event:
            event["item_id"] = "item_1"

    with pytest.raises(AssertionError, match="msg_ prefix"):
        check_stream(events)


def test_the_checker_rejects_a_wrong_response_prefix():
    events = good_events()
    for event in events:
        event.get("response", {})["id"] = "chatcmpl-1"

    with pytest.raises(AssertionError, match="resp_ prefix"):
        check_stream(events)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ev: ev.pop(1), "in_progress"),
        (lambda ev: ev.pop(0), "response.created"),
        (lambda ev: ev.pop(), "terminal"),
        (lambda ev: ev.append(dict(ev[-1])), "exactly one terminal"),
        (lambda ev: ev[6].update(text="Hellx"), "!= deltas"),
        (lambda ev: ev[8]["item"]["content"][0].update(text="x"), "content_part.done|differs"),
        (lambda ev: ev[4].update(content_index=1), "content_index"),
        (lambda ev: ev[4].update(item_id="msg_other"), "item_id"),
        (lambda ev: ev[2].update(output_index=1), "output_index"),
        (lambda ev: ev.pop(8), "open"),
        (lambda ev: ev[-1]["response"].update(output=[]), "differs from the items done"),
        (lambda ev: ev[-1]["response"]["usage"].update(total_tokens=1), "total_tokens"),
        (lambda ev: ev[-1]["response"].pop("tools"), "required fields"),
        (lambda ev: ev.insert(5, {"type": "response.audio.delta", "delta": ""}), "does not send"),
    ],
)
def test_the_checker_rejects_a_broken_stream(change, message):
    events = good_events()
    change(events)

    with pytest.raises(AssertionError, match=message):
        check_stream(renumbered(events))


def test_the_checker_rejects_call_arguments_that_differ_from_their_deltas():
    events, _ = stream(
        [chunk(call(0, id="call_a", name="f", arguments="{}")), chunk(finish_reason="tool_calls")]
    )
    events[4]["arguments"] = "{ }"

    with pytest.raises(AssertionError, match="arguments"):
        check_stream(events)


def test_the_checker_rejects_a_response_without_usage():
    made = from_chat({"content": "x"})
    made["usage"] = None

    with pytest.raises(AssertionError, match="usage"):
        check_response(made)

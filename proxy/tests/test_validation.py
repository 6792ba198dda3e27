"""What a client's body must be before anything is spent on it (`proxy.pipeline.parse`,
`proxy.validation.check_body`): pure, and through the pipeline in process.

A refused body is a 400 that reaches no upstream and takes no rate-limit
hit; its record names the key, and no model when none could be read.
"""

import pytest

from proxy.errors import APIError
from proxy.tests import fakes
from proxy.tests.fakes import call, error_of
from proxy.validation import CHAT, COMPLETIONS, EMBEDDINGS, check_body

CHAT_PATH = "/v1/chat/completions"
PATHS = (CHAT_PATH, "/v1/completions", "/v1/embeddings")
MESSAGES = [{"role": "user", "content": "hi there"}]


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def without_usage(_call) -> fakes.FakeResponse:
    # An upstream that reports no usage: estimating it used to read `messages` and fail.
    return fakes.FakeResponse(200, [fakes.chat_answer()])


def limited_runtime():
    """A runtime whose model allows one request a minute, on an upstream without usage."""
    model = fakes.model_info(rate_limit="1/m")
    upstream = fakes.FakeUpstream(default=without_usage)
    return fakes.runtime(fakes.snapshot(models=[model]), upstream=upstream)


def assert_refused_before_the_model(rt, answers, paths):
    key = fakes.key_info()
    assert rt.upstream.calls == []
    assert len(rt.writer.records) == len(answers)
    for record, answer, path in zip(rt.writer.records, answers, paths, strict=True):
        assert record.request_id == answer.headers["x-request-id"]
        assert (record.status, record.outcome, record.path) == (400, "invalid_request", path)
        assert (record.api_key_id, record.key_prefix, record.user_id) == (
            key.id,
            key.prefix,
            key.user_id,
        )
        assert (record.model, record.cost, record.input_units, record.output_units) == (
            "",
            0,
            0,
            0,
        )


HI = '"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]'
HOSTILE_BODIES = {
    "array 100,000 deep": (nested(100_000), "invalid_json"),
    "object 1,000 deep": (
        '{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "metadata": '
        + '{"a": ' * 1000
        + "1"
        + "}" * 1000
        + "}",
        "invalid_json",
    ),
    "1,000 deep inside messages": (
        '{"model": "gpt-test", "messages": [{"role": "user", "content": ' + nested(1000) + "}]}",
        "invalid_json",
    ),
    "lone surrogate": (
        '{"model": "gpt-test", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "invalid_json",
    ),
    "NaN": (
        "{" + HI + ', "temperature": NaN}',
        "invalid_json",
    ),
    "Infinity": (
        "{" + HI + ', "top_p": 1e999}',
        "invalid_json",
    ),
    "messages a number": ('{"model": "gpt-test", "messages": 5}', "invalid_type"),
    "a message a string": ('{"model": "gpt-test", "messages": ["hi"]}', "invalid_type"),
    "stream a string": (
        "{" + HI + ', "stream": "true"}',
        "invalid_type",
    ),
    "stream_options a list": (
        "{" + HI + ', "stream": true, "stream_options": []}',
        "invalid_type",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_it_refuses_hostile_bodies_with_400_before_anything_is_spent(name, stream):
    rt = limited_runtime()
    body, code = HOSTILE_BODIES[name]
    if stream and body.startswith("{") and '"stream"' not in body:
        body = body[:-1] + ', "stream": true}'

    answer = call(rt, "POST", CHAT_PATH, body.encode())

    error = error_of(answer, 400, code)
    assert "\\ud800" not in error["message"] and "NaN" not in error["message"]
    assert rt.upstream.calls == []
    # Nothing was spent: the model's one request a minute is still there.
    ok = call(rt, "POST", CHAT_PATH, {"model": "gpt-test", "messages": MESSAGES})
    assert ok.status == 200, ok.body
    assert [r.status for r in rt.writer.records] == [400, 200]


def test_it_refuses_a_body_that_is_not_a_json_object_with_400_invalid_json():
    rt = fakes.runtime()
    bodies = [b"{not json", b"", b"[]", b'"gpt-test"', b"null", b'{"model": "gpt-test",}']

    answers, paths = [], []
    for path in PATHS:
        for body in bodies:
            answer = call(rt, "POST", path, body, headers=[(b"content-type", b"application/json")])
            error_of(answer, 400, "invalid_json")
            answers.append(answer)
            paths.append(path)

    assert_refused_before_the_model(rt, answers, paths)


def test_it_refuses_a_request_without_a_model_with_400_missing_model():
    rt = fakes.runtime()

    answers = [
        call(rt, "POST", CHAT_PATH, {"messages": MESSAGES}),
        call(rt, "POST", "/v1/completions", {"prompt": "hi"}),
        call(rt, "POST", "/v1/embeddings", {"input": "hi"}),
    ]

    for answer in answers:
        assert error_of(answer, 400, "missing_model")["param"] == "model"
    assert_refused_before_the_model(rt, answers, PATHS)


CHAT_BODY = {"model": "m", "messages": MESSAGES}
SCHEMAS = {"chat": CHAT, "completions": COMPLETIONS, "embeddings": EMBEDDINGS}
BASE = {
    "chat": CHAT_BODY,
    "completions": {"model": "m", "prompt": "hi"},
    "embeddings": {"model": "m", "input": "hi"},
}


def refusal(payload: dict, schema=CHAT) -> APIError:
    with pytest.raises(APIError) as refused:
        check_body(payload, schema)
    assert refused.value.status == 400
    return refused.value


def test_it_names_the_field_and_both_types_when_a_type_is_wrong():
    cases = {
        "model": (
            {"model": 5, "messages": MESSAGES},
            CHAT,
            "expected a string, but got an integer",
        ),
        "stream_options.include_usage": (
            {**CHAT_BODY, "stream_options": {"include_usage": "yes"}},
            CHAT,
            "expected a boolean, but got a string",
        ),
        "messages[1]": (
            {"model": "m", "messages": [*MESSAGES, None]},
            CHAT,
            "expected an object, but got null",
        ),
        "prompt": (
            {"model": "m", "prompt": 3.5},
            COMPLETIONS,
            "expected a string or an array, but got a number",
        ),
        "input": ({"model": "m", "input": {"a": 1}}, EMBEDDINGS, "expected a string or an array"),
        "temperature": ({**CHAT_BODY, "temperature": "hot"}, CHAT, "expected a number"),
        "n": ({**CHAT_BODY, "n": 1.5}, CHAT, "expected an integer, but got a number"),
        "logprobs": ({**CHAT_BODY, "logprobs": 1}, CHAT, "expected a boolean, but got an integer"),
        "max_tokens": (
            {**CHAT_BODY, "max_tokens": True},
            CHAT,
            "expected an integer, but got a boolean",
        ),
        "stop[1]": ({**CHAT_BODY, "stop": ["a", 2]}, CHAT, "expected a string"),
        "messages[0].content[0]": (
            {"model": "m", "messages": [{"role": "user", "content": ["hi"]}]},
            CHAT,
            "expected an object, but got a string",
        ),
        "prompt[1]": ({"model": "m", "prompt": ["a", 1]}, COMPLETIONS, "expected a string"),
        "input[0][1]": ({"model": "m", "input": [[1, "x"]]}, EMBEDDINGS, "expected an integer"),
    }

    for param, (payload, schema, said) in cases.items():
        error = refusal(payload, schema)
        assert (error.code, error.param) == ("invalid_type", param), param
        assert said in error.message, (param, error.message)


@pytest.mark.parametrize(
    ("operation", "payload", "param"),
    [
        ("chat", {"model": "m"}, "messages"),
        ("chat", {"model": "m", "messages": None}, "messages"),
        ("completions", {"model": "m"}, "prompt"),
        ("embeddings", {"model": "m"}, "input"),
        ("chat", {"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ("chat", {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            "chat",
            {"model": "m", "messages": [{"role": "system", "content": None}]},
            "messages[0].content",
        ),
        (
            "chat",
            {"model": "m", "messages": [{"role": "tool", "content": "42"}]},
            "messages[0].tool_call_id",
        ),
        (
            "chat",
            {"model": "m", "messages": [{"role": "function", "content": None}]},
            "messages[0].name",
        ),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "hi"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_it_names_a_missing_required_field(operation, payload, param):
    error = refusal(payload, SCHEMAS[operation])

    assert (error.code, error.param) == ("missing_required_parameter", param)
    assert error.message == f"Missing required parameter: '{param}'."


def test_it_accepts_every_role_and_content_form_the_spec_gives():
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "be kind"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "function", "name": "f", "content": None},
        {"role": "assistant", "content": "done", "name": "bot", "refusal": None},
    ]

    check_body({"model": "m", "messages": messages}, CHAT)


def test_it_refuses_a_role_the_spec_does_not_know():
    error = refusal({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]})

    assert (error.code, error.param) == ("invalid_value", "messages[0].role")
    assert "'wizard'" in error.message and "'developer'" in error.message


@pytest.mark.parametrize(
    ("operation", "field", "value", "code"),
    [
        ("chat", "messages", [], "empty_array"),
        ("chat", "safety_identifier", "x" * 65, "string_above_max_length"),
        ("chat", "temperature", 2.5, "decimal_above_max_value"),
        ("chat", "temperature", -0.1, "decimal_below_min_value"),
        ("chat", "top_p", 1.01, "decimal_above_max_value"),
        ("chat", "frequency_penalty", -3, "integer_below_min_value"),
        ("chat", "presence_penalty", 2.01, "decimal_above_max_value"),
        ("chat", "n", 0, "integer_below_min_value"),
        ("chat", "n", 129, "integer_above_max_value"),
        ("chat", "top_logprobs", 21, "integer_above_max_value"),
        ("chat", "stop", ["a", "b", "c", "d", "e"], "array_above_max_length"),
        ("chat", "stop", [], "empty_array"),
        ("completions", "best_of", 21, "integer_above_max_value"),
        ("completions", "logprobs", 6, "integer_above_max_value"),
        ("completions", "max_tokens", -1, "integer_below_min_value"),
        ("embeddings", "input", [], "empty_array"),
        ("embeddings", "input", ["x"] * 2049, "array_above_max_length"),
        ("embeddings", "dimensions", 0, "integer_below_min_value"),
    ],
)
def test_it_refuses_a_value_outside_the_specs_range(operation, field, value, code):
    error = refusal({**BASE[operation], field: value}, SCHEMAS[operation])

    assert (error.code, error.param) == (code, field)
    assert error.message.startswith(f"Invalid '{field}': ")


def test_it_names_the_bound_and_the_value_out_of_range():
    error = refusal({**CHAT_BODY, "temperature": 2.5})

    assert error.message == (
        "Invalid 'temperature': decimal above maximum value. "
        "Expected a value <= 2, but got 2.5 instead."
    )


def test_values_at_the_specs_bounds_pass():
    check_body(
        {**CHAT_BODY, "temperature": 2, "top_p": 0, "n": 128, "top_logprobs": 20, "stop": "x"},
        CHAT,
    )
    check_body({"model": "m", "prompt": [[1, 2], [3]], "best_of": 0, "max_tokens": 0}, COMPLETIONS)
    check_body({"model": "m", "input": ["x"] * 2048, "dimensions": 1}, EMBEDDINGS)
    check_body({"model": "m", "input": [1, 2, 3]}, EMBEDDINGS)


def test_a_completion_prompt_may_be_null_as_the_spec_allows():
    check_body({"model": "m", "prompt": None}, COMPLETIONS)


def test_fields_the_spec_does_not_name_pass_through_unchanged():
    payload = {**CHAT_BODY, "top_k": 40, "repetition_penalty": "any", "chat_template_kwargs": {}}

    check_body(payload, CHAT)

    assert payload["top_k"] == 40 and payload["repetition_penalty"] == "any"


def test_null_stands_for_an_absent_optional_field():
    check_body({**CHAT_BODY, "stream": None, "stream_options": None, "temperature": None}, CHAT)


def test_an_operation_without_streaming_ignores_stream_as_it_always_has():
    payload = {"model": "m", "input": "hi", "stream": "yes", "stream_options": 3}

    check_body(payload, EMBEDDINGS)

    assert refusal({**CHAT_BODY, "stream": "yes"}).param == "stream"


def test_it_accepts_only_the_documented_encoding_formats():
    for encoding in ("float", "base64"):
        check_body({"model": "m", "input": "hi", "encoding_format": encoding}, EMBEDDINGS)

    error = refusal({"model": "m", "input": "hi", "encoding_format": "x" * 100}, EMBEDDINGS)

    assert (error.code, error.param) == ("invalid_value", "encoding_format")
    assert "x" * 40 in error.message and "x" * 41 not in error.message


def test_a_chat_body_without_messages_reaches_no_upstream():
    rt = fakes.runtime()

    answer = call(rt, "POST", CHAT_PATH, {"model": "gpt-test"})

    assert error_of(answer, 400, "missing_required_parameter")["param"] == "messages"
    assert rt.upstream.calls == []


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        (
            {"tools": [{"type": "function", "function": {"name": 5}}]},
            "tools[0].function.name",
            "invalid_type",
        ),
        ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type", "missing_required_parameter"),
        (
            {"tool_choice": {"type": "function"}},
            "tool_choice.function",
            "missing_required_parameter",
        ),
        ({"response_format": {}}, "response_format.type", "missing_required_parameter"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        ({"functions": [{"description": "x"}]}, "functions[0].name", "missing_required_parameter"),
        ({"logit_bias": {"50256": "x"}}, "logit_bias.50256", "invalid_type"),
        ({"logit_bias": {"50256": 1.5}}, "logit_bias.50256", "invalid_type"),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
            "tool_choice.allowed_tools.tools",
            "missing_required_parameter",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "magic"}}, "tool_choice.type", "invalid_value"),
        (
            {"stream_options": {"include_obfuscation": 1}},
            "stream_options.include_obfuscation",
            "invalid_type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "missing_required_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
            "missing_required_parameter",
        ),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "empty_array"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages[0].tool_calls[0].function",
            "missing_required_parameter",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "refusal": 1}]},
            "messages[0].refusal",
            "invalid_type",
        ),
    ],
)
def test_it_checks_inside_the_objects_the_spec_defines(fields, param, code):
    error = refusal({**CHAT_BODY, **fields})

    assert (error.code, error.param) == (code, param)


def test_a_type_the_gateway_does_not_know_is_left_to_the_upstream():
    parts = [{"type": "video_url", "video_url": {"url": "x"}}, {"type": "text", "text": "hi"}]

    check_body({"model": "m", "messages": [{"role": "user", "content": parts}]}, CHAT)
    with pytest.raises(APIError):  # but for tools: chat tools are functions or custom ones
        check_body({**CHAT_BODY, "tools": [{"type": "mcp", "server": "x"}]}, CHAT)


def test_an_integral_number_is_an_integer_as_json_schema_has_it():
    check_body({**CHAT_BODY, "n": 3.0, "max_tokens": 10.0, "seed": 7.0}, CHAT)
    check_body({"model": "m", "input": [[1.0, 2.0]], "dimensions": 8.0}, EMBEDDINGS)

    assert refusal({**CHAT_BODY, "n": 2.5}).code == "invalid_type"


def test_an_integer_past_64_bits_is_an_integer_and_past_int64s_bounds():
    # orjson reads an integer past 64 bits as a float, rounded: -(2**63) - 1 becomes -(2**63).
    check_body({**CHAT_BODY, "logit_bias": {"1": 2**70}}, CHAT)

    error = refusal({**CHAT_BODY, "seed": float(-(2**63) - 1)})

    assert (error.code, error.param) == ("integer_below_min_value", "seed")

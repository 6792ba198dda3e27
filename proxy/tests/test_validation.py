"""What a client's body must be before anything is spent on it (`proxy.pipeline.parse`,
`proxy.validation.check_body`): pure, and through the pipeline in process.

A refused body is a 400 that reaches no upstream and takes no rate-limit
hit; its record names the key, and no model when none could be read.
"""

import pytest

from proxy.errors import APIError
from proxy.tests import fakes
from proxy.tests.fakes import call, error_of
from proxy.validation import check_body

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


HOSTILE_BODIES = {
    "array 100,000 deep": (nested(100_000), "invalid_json"),
    "object 1,000 deep": (
        '{"model": "gpt-test", "messages": [], "metadata": '
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
    "NaN": ('{"model": "gpt-test", "messages": [], "temperature": NaN}', "invalid_json"),
    "Infinity": ('{"model": "gpt-test", "messages": [], "top_p": 1e999}', "invalid_json"),
    "messages a number": ('{"model": "gpt-test", "messages": 5}', "invalid_type"),
    "a message a string": ('{"model": "gpt-test", "messages": ["hi"]}', "invalid_type"),
    "stream a string": (
        '{"model": "gpt-test", "messages": [], "stream": "true"}',
        "invalid_type",
    ),
    "stream_options a list": (
        '{"model": "gpt-test", "messages": [], "stream": true, "stream_options": []}',
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


def refusal(payload: dict, *, stream_allowed: bool = True) -> APIError:
    with pytest.raises(APIError) as refused:
        check_body(payload, stream_allowed=stream_allowed)
    assert refused.value.status == 400
    return refused.value


def test_it_names_the_field_and_both_types_when_a_type_is_wrong():
    cases = {
        "model": ({"model": 5}, "expected a string, but got an integer"),
        "stream_options.include_usage": (
            {"model": "m", "stream_options": {"include_usage": "yes"}},
            "expected a boolean, but got a string",
        ),
        "messages[1]": (
            {"model": "m", "messages": [{"role": "user"}, None]},
            "expected an object, but got null",
        ),
        "prompt": (
            {"model": "m", "prompt": 3.5},
            "expected a string or an array, but got a number",
        ),
        "input": ({"model": "m", "input": {"a": 1}}, "expected a string or an array"),
    }

    for param, (payload, said) in cases.items():
        error = refusal(payload)
        assert (error.code, error.param) == ("invalid_type", param)
        assert said in error.message


def test_null_stands_for_an_absent_field():
    check_body(
        {"model": "m", "messages": None, "stream": None, "stream_options": None},
        stream_allowed=True,
    )


def test_an_operation_without_streaming_ignores_stream_as_it_always_has():
    payload = {"model": "m", "input": "hi", "stream": "yes", "stream_options": 3}

    check_body(payload, stream_allowed=False)

    assert refusal(dict(payload)).param == "stream"


def test_it_accepts_only_the_documented_encoding_formats():
    for encoding in ("float", "base64"):
        check_body({"model": "m", "input": "hi", "encoding_format": encoding}, stream_allowed=False)

    error = refusal({"model": "m", "encoding_format": "x" * 100}, stream_allowed=False)

    assert (error.code, error.param) == ("invalid_value", "encoding_format")
    assert "x" * 40 in error.message and "x" * 41 not in error.message

"""Per-server adjustments (`proxy.dialects`): what each kind of upstream gets instead of OpenAI's
request, and what it is refused; through `prepare_*` as the pipeline calls them."""

import json

import pytest

from proxy import dialects
from proxy.errors import APIError
from proxy.formats import openai
from proxy.tests import fakes
from proxy.tests.fakes import HELLO, endpoint_info, model_info

KINDS = [
    "openai",
    "generic",
    "vllm",
    "ollama",
    "llama_cpp",
    "llama_cpp_python",
    "lmstudio",
    "anthropic",
]


def sent(kind: str, stream: bool = False, **fields) -> dict:
    """The chat body an upstream of `kind` is sent for a client's body with `fields`."""
    model = model_info("gpt-public", upstream_name="up", endpoint=endpoint_info(kind=kind))
    payload = {"model": "gpt-public", "messages": HELLO, **fields}
    return json.loads(openai.prepare_generation(payload, model, model.deployments[0], stream))


def embedded(kind: str, **fields) -> dict:
    model = model_info("embed", upstream_name="up", endpoint=endpoint_info(kind=kind))
    return json.loads(
        openai.prepare_embeddings({"model": "embed", **fields}, model, model.deployments[0], False)
    )


def test_every_endpoint_kind_has_a_dialect():
    from endpoints.models import Endpoint

    assert sorted(dialects.DIALECTS) == sorted(Endpoint.Kind.values) == sorted(KINDS)


def test_a_kind_this_version_does_not_know_is_served_as_generic():
    assert dialects.of(endpoint_info(kind="triton")) is dialects.GENERIC


def test_openai_gets_the_clients_body_unchanged():
    fields = {
        "messages": [{"role": "developer", "content": "be brief"}, *HELLO],
        "max_completion_tokens": 5,
        "n": 3,
        "response_format": {"type": "json_object"},
    }

    assert sent("openai", **fields) == {"model": "up", **fields}


@pytest.mark.parametrize("kind", ["generic", "ollama", "llama_cpp_python", "lmstudio"])
def test_max_completion_tokens_becomes_max_tokens_where_it_is_ignored(kind):
    body = sent(kind, max_completion_tokens=5)

    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body


def test_an_explicit_max_tokens_wins():
    assert sent("generic", max_tokens=9, max_completion_tokens=5)["max_tokens"] == 9


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp"])
def test_servers_that_know_max_completion_tokens_get_it(kind):
    assert sent(kind, max_completion_tokens=5)["max_completion_tokens"] == 5


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "openai"])
def test_the_developer_role_becomes_system_except_at_openai(kind):
    messages = [{"role": "developer", "content": "be brief", "name": "d"}, *HELLO]

    body = sent(kind, messages=messages)

    assert body["messages"] == [{"role": "system", "content": "be brief", "name": "d"}, *HELLO]


def test_llama_cpp_python_gets_empty_text_for_an_assistants_null_content():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]

    body = sent("llama_cpp_python", messages=messages)

    assert body["messages"][-1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert messages[-1]["content"] is None  # the client's body is left as it came
    assert sent("vllm", messages=messages)["messages"][-1]["content"] is None


def test_llama_cpp_python_gets_text_parts_as_plain_text_and_other_parts_as_they_are():
    text = [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]
    image = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {}}]
    messages = [{"role": "system", "content": text}, {"role": "user", "content": image}]

    body = sent("llama_cpp_python", messages=messages)

    assert body["messages"] == [{"role": "system", "content": "hi there"}, messages[1]]
    assert sent("generic", messages=messages)["messages"] == messages


@pytest.mark.parametrize("kind", ["ollama", "llama_cpp_python", "lmstudio"])
def test_more_than_one_choice_is_refused_where_the_server_would_answer_one(kind):
    with pytest.raises(APIError) as refused:
        sent(kind, n=2)

    error = refused.value
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", "n")
    assert error.message == (
        f"This model's upstream server ({kind}) does not support more than one choice (n > 1)."
    )
    assert sent(kind, n=1)["n"] == 1


def test_json_schema_output_is_refused_by_llama_cpp_python_which_would_fail_with_500():
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}

    with pytest.raises(APIError) as refused:
        sent("llama_cpp_python", response_format=schema)

    assert refused.value.param == "response_format"
    assert sent("llama_cpp", response_format=schema)["response_format"] == schema


def test_lm_studio_gets_a_json_schema_for_json_object():
    body = sent("lmstudio", response_format={"type": "json_object"})

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "json_object", "schema": {"type": "object"}},
    }


def test_llama_cpp_is_told_parallel_tool_calls_as_openai_means_it():
    tools = [{"type": "function", "function": {"name": "f"}}]

    assert sent("llama_cpp", tools=tools)["parallel_tool_calls"] is True
    assert sent("llama_cpp", tools=tools, parallel_tool_calls=False)["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in sent("generic", tools=tools)


@pytest.mark.parametrize("kind", ["llama_cpp", "llama_cpp_python"])
def test_dimensions_are_refused_where_the_server_would_ignore_them(kind):
    with pytest.raises(APIError) as refused:
        embedded(kind, input="hi", dimensions=8)

    assert refused.value.param == "dimensions"
    assert embedded("vllm", input="hi", dimensions=8)["dimensions"] == 8


@pytest.mark.parametrize("kind", ["ollama", "llama_cpp_python"])
def test_token_input_is_refused_where_the_server_cannot_embed_it(kind):
    with pytest.raises(APIError) as refused:
        embedded(kind, input=[[1, 2]])

    assert refused.value.param == "input"
    assert embedded(kind, input=["a"])["input"] == ["a"]


def test_a_refusal_reaches_the_client_as_a_400_and_the_upstream_sees_nothing():
    model = model_info("gpt-test", endpoint=endpoint_info(kind="ollama"))
    rt = fakes.runtime(fakes.snapshot(models=[model]))

    answer = fakes.chat(rt, n=2)

    assert fakes.error_of(answer, 400, "unsupported_parameter")["param"] == "n"
    assert rt.upstream.calls == []
    (record,) = rt.writer.records
    assert (record.status, record.outcome) == (400, "invalid_request")

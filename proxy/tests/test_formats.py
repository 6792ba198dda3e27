"""OpenAI's own formats (`proxy.formats.openai`): upstream bodies, finished answers, logged text."""

import base64
import json
import struct

import pytest

from proxy.accounting import Exchange
from proxy.formats import openai
from proxy.tests.fakes import HELLO, endpoint_info, model_info

MODEL = model_info("gpt-public", upstream_name="llama3:8b")


def sent(body: bytes) -> dict:
    return json.loads(body)


# --------------------------------------------------------------------------- prepare


def test_it_names_the_upstream_model_and_passes_every_other_field_through():
    payload = {"model": "gpt-public", "messages": HELLO, "temperature": 0.2, "my_extension": [1]}

    body = sent(openai.prepare_generation(payload, MODEL, MODEL.deployments[0], stream=False))

    assert body == {**payload, "model": "llama3:8b"}
    assert payload["model"] == "gpt-public"  # the client's payload is left as it came


@pytest.mark.parametrize(
    "fields",
    [{}, {"stream_options": None}, {"stream_options": {"include_usage": True}}],
    ids=["absent", "null", "set"],
)
def test_a_plain_request_goes_without_stream_options(fields):
    # vLLM refuses stream_options without a stream (400).
    payload = {"model": "gpt-public", "prompt": "say hi", **fields}

    body = sent(openai.prepare_generation(payload, MODEL, MODEL.deployments[0], stream=False))

    assert body == {"model": "llama3:8b", "prompt": "say hi"}


@pytest.mark.parametrize(
    "options, upstream_options",
    [
        (None, {"include_usage": True}),
        ({"include_usage": False}, {"include_usage": True}),
        (
            {"include_usage": False, "include_obfuscation": False},
            {"include_usage": True, "include_obfuscation": False},
        ),
    ],
    ids=["none sent", "usage refused", "other options"],
)
def test_it_always_asks_a_stream_for_usage_and_keeps_the_other_stream_options(
    options, upstream_options
):
    payload = {"model": "gpt-public", "messages": HELLO, "stream": True}
    if options is not None:
        payload["stream_options"] = options

    body = sent(openai.prepare_generation(payload, MODEL, MODEL.deployments[0], stream=True))

    assert body["stream_options"] == upstream_options
    assert payload.get("stream_options") == options


@pytest.mark.parametrize("asked", [None, "float", "base64"])
def test_it_always_asks_the_upstream_for_float_embeddings(asked):
    payload = {"model": "embed-public", "input": ["a", "b"]}
    if asked:
        payload["encoding_format"] = asked

    body = sent(openai.prepare_embeddings(payload, MODEL, MODEL.deployments[0], stream=False))

    assert body == {"model": "llama3:8b", "input": ["a", "b"], "encoding_format": "float"}
    assert payload.get("encoding_format") == asked


# --------------------------------------------------------------------------- finish


def embeddings(*vectors) -> dict:
    return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}


def listed(*vectors) -> dict:
    """`embeddings(*vectors)` as the spec has it, with usage."""
    items = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {"object": "list", "data": items, "usage": {"prompt_tokens": 3, "total_tokens": 3}}


def exchange(units=(3, 0), estimated=False, kind="generic", request_id="req_00ab"):
    """The request's Exchange as a finish step sees it: its model and usage counted."""
    ex = Exchange(path="/v1/test", request_id=request_id)
    ex.model = model_info("gpt-public", endpoint=endpoint_info(kind=kind))
    ex.deployment = ex.model.deployments[0]
    ex.model_name = "gpt-public"
    ex.input_units, ex.output_units = units
    ex.estimated = estimated
    return ex


@pytest.mark.parametrize("asked", [None, "float"])
def test_it_returns_float_embeddings_as_they_came(asked):
    data = embeddings([0.5, -1.0], [1, 2, 3])
    data["usage"] = {"prompt_tokens": 3, "total_tokens": 3}
    payload = {"input": ["a", "b"]} if asked is None else {"encoding_format": asked}

    openai.finish_embeddings(data, payload, exchange())

    assert data == listed([0.5, -1.0], [1, 2, 3])


def test_it_encodes_base64_embeddings_as_little_endian_float32():
    vector = [0.1, -0.25, 1.0, 3.5]
    data = embeddings(vector, [])

    openai.finish_embeddings(data, {"encoding_format": "base64"}, exchange())

    first, empty = (base64.b64decode(item["embedding"]) for item in data["data"])
    assert first == struct.pack("<4f", *vector)
    assert struct.unpack("<4f", first) == pytest.approx(vector)
    assert empty == b""


def test_it_leaves_an_item_without_a_vector_for_the_client_to_see():
    data = {"data": [{"index": 0}, {"index": 1, "embedding": "already text"}]}

    openai.finish_embeddings(data, {"encoding_format": "base64"}, exchange())

    assert [item.get("embedding") for item in data["data"]] == [None, "already text"]


def test_it_drops_the_fields_llama_cpp_adds_to_each_embedding_and_fills_the_specs():
    data = {"data": [{"embedding": [0.5], "encoding_format": "float", "extra": 1}]}

    openai.finish_embeddings(data, {}, exchange(units=(2, 0), estimated=True))

    assert data == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }


@pytest.mark.parametrize("vector", [["0.5"], [None], [[1.0]]], ids=["text", "null", "nested"])
def test_it_raises_for_a_vector_that_is_not_numbers(vector):
    with pytest.raises((struct.error, TypeError)):
        openai.finish_embeddings(embeddings(vector), {"encoding_format": "base64"}, exchange())


def test_a_bare_chat_answer_gets_every_field_the_spec_requires():
    data = {"choices": [{"message": {"content": "Hi"}}]}

    openai.finish_chat(data, {}, exchange(units=(4, 1), estimated=True))

    assert data == {
        "id": "chatcmpl-00ab",
        "object": "chat.completion",
        "created": data["created"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }
    assert isinstance(data["created"], int)


def test_a_complete_chat_answer_keeps_the_upstreams_values():
    usage = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "extra": {}}
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": []},
        "logprobs": {"content": []},
        "finish_reason": "tool_calls",
    }
    data = {"id": "chatcmpl-up", "created": 7, "choices": [dict(choice)], "usage": dict(usage)}

    openai.finish_chat(data, {}, exchange(units=(4, 1)))

    assert (data["id"], data["created"], data["usage"]) == ("chatcmpl-up", 7, usage)
    assert data["choices"] == [choice]


def test_ollamas_colliding_ids_are_replaced_by_the_gateways():
    data = {"id": "chatcmpl-42", "choices": [{"message": {"content": "Hi"}}]}

    openai.finish_chat(data, {}, exchange(kind="ollama"))

    assert data["id"] == "chatcmpl-00ab"


def test_a_choice_without_a_message_is_not_an_answer():
    with pytest.raises(ValueError):
        openai.finish_chat({"choices": [{"text": "Hi"}]}, {}, exchange())
    with pytest.raises(ValueError):
        openai.finish_completion({"choices": [{"message": {}}]}, {}, exchange())


def test_a_completion_answer_gets_the_specs_fields():
    data = {"choices": [{"text": "Hi", "finish_reason": "length"}], "usage": {"prompt_tokens": 1}}

    openai.finish_completion(data, {}, exchange(units=(1, 1), estimated=True))

    assert (data["id"], data["object"]) == ("cmpl-00ab", "text_completion")
    assert data["choices"] == [
        {"text": "Hi", "finish_reason": "length", "index": 0, "logprobs": None}
    ]
    # The upstream's usage was not sane (no completion count): the gateway's is sent.
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_a_stream_chunk_gets_the_specs_fields_and_says_whether_it_finishes():
    ex = exchange()
    first = {"id": "chatcmpl-up", "choices": [{"delta": {"content": "Hi"}}]}
    last = {"id": "chatcmpl-up", "created": 9, "choices": [{"delta": {}, "finish_reason": "stop"}]}

    shape = openai.chat_chunks(ex)
    assert shape(first) is False
    assert shape(last) is True

    assert first["object"] == last["object"] == "chat.completion.chunk"
    assert first["choices"] == [{"delta": {"content": "Hi"}, "index": 0, "finish_reason": None}]
    assert isinstance(first["created"], int) and last["created"] == 9
    assert openai.usage_chunk(last, ex) == {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 9,
        "model": "gpt-public",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
    }


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    "answer, text",
    [
        ({"choices": [{"message": {"role": "assistant", "content": "Hi!"}}]}, "Hi!"),
        ({"choices": [{"text": "Hello"}, {"text": " again"}]}, "Hello again"),
        ({"choices": [{"message": {"content": None, "tool_calls": []}}]}, ""),
        ({"choices": [{"message": {"content": [{"type": "text", "text": "x"}]}}]}, ""),
        ({"choices": ["not a choice", {"text": "kept"}]}, "kept"),
        ({"choices": None}, ""),
        ({}, ""),
    ],
    ids=["chat", "completions", "tool call", "content parts", "odd choice", "null", "none"],
)
def test_it_reads_the_generated_text_of_a_whole_answer(answer, text):
    assert openai.answer_text(answer) == text


@pytest.mark.parametrize(
    "chunk, text",
    [
        ({"choices": [{"delta": {"content": "Hel"}}, {"delta": {"content": "lo"}}]}, "Hello"),
        ({"choices": [{"text": "say"}]}, "say"),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, ""),
        ({"choices": [{"delta": {}, "finish_reason": "stop"}]}, ""),
        ({"choices": [{"delta": {"content": ["a"]}}]}, ""),
        ({"choices": [], "usage": {"prompt_tokens": 1}}, ""),
    ],
    ids=["chat", "completions", "empty", "finish", "not text", "usage only"],
)
def test_it_reads_the_text_a_stream_chunk_carries(chunk, text):
    assert openai.chunk_text(chunk) == text

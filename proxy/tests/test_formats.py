"""OpenAI's own formats (`proxy.formats.openai`): upstream bodies, finished answers, logged text."""

import base64
import json
import struct

import pytest

from proxy.formats import openai
from proxy.tests.fakes import HELLO, model_info

MODEL = model_info("gpt-public", upstream_name="llama3:8b")


def sent(body: bytes) -> dict:
    return json.loads(body)


# --------------------------------------------------------------------------- prepare


def test_it_names_the_upstream_model_and_passes_every_other_field_through():
    payload = {"model": "gpt-public", "messages": HELLO, "temperature": 0.2, "my_extension": [1]}

    body = sent(openai.prepare_generation(payload, MODEL, stream=False))

    assert body == {**payload, "model": "llama3:8b"}
    assert payload["model"] == "gpt-public"  # the client's payload is left as it came


@pytest.mark.parametrize("fields", [{}, {"stream_options": None}], ids=["absent", "null"])
def test_it_adds_no_stream_options_to_a_plain_request(fields):
    payload = {"model": "gpt-public", "prompt": "say hi", **fields}

    body = sent(openai.prepare_generation(payload, MODEL, stream=False))

    assert body == {**payload, "model": "llama3:8b"}


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

    body = sent(openai.prepare_generation(payload, MODEL, stream=True))

    assert body["stream_options"] == upstream_options
    assert payload.get("stream_options") == options


@pytest.mark.parametrize("asked", [None, "float", "base64"])
def test_it_always_asks_the_upstream_for_float_embeddings(asked):
    payload = {"model": "embed-public", "input": ["a", "b"]}
    if asked:
        payload["encoding_format"] = asked

    body = sent(openai.prepare_embeddings(payload, MODEL, stream=False))

    assert body == {"model": "llama3:8b", "input": ["a", "b"], "encoding_format": "float"}
    assert payload.get("encoding_format") == asked


# --------------------------------------------------------------------------- finish


def embeddings(*vectors) -> dict:
    return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}


@pytest.mark.parametrize("asked", [None, "float"])
def test_it_returns_float_embeddings_as_they_came(asked):
    data = embeddings([0.5, -1.0], [1, 2, 3])
    payload = {"input": ["a", "b"]} if asked is None else {"encoding_format": asked}

    openai.finish_embeddings(data, payload)

    assert data == embeddings([0.5, -1.0], [1, 2, 3])


def test_it_encodes_base64_embeddings_as_little_endian_float32():
    vector = [0.1, -0.25, 1.0, 3.5]
    data = embeddings(vector, [])

    openai.finish_embeddings(data, {"encoding_format": "base64"})

    first, empty = (base64.b64decode(item["embedding"]) for item in data["data"])
    assert first == struct.pack("<4f", *vector)
    assert struct.unpack("<4f", first) == pytest.approx(vector)
    assert empty == b""


def test_it_leaves_items_without_a_vector_alone_when_encoding_base64():
    data = {"data": ["not an item", {"index": 1}, {"index": 2, "embedding": "already text"}]}

    openai.finish_embeddings(data, {"encoding_format": "base64"})

    assert data == {
        "data": ["not an item", {"index": 1}, {"index": 2, "embedding": "already text"}]
    }


@pytest.mark.parametrize("vector", [["0.5"], [None], [[1.0]]], ids=["text", "null", "nested"])
def test_it_raises_for_a_vector_that_is_not_numbers(vector):
    with pytest.raises((struct.error, TypeError)):
        openai.finish_embeddings(embeddings(vector), {"encoding_format": "base64"})


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

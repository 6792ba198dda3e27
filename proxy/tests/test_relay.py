"""Relaying an upstream's answer (`proxy.relay`): one checked JSON body, or an SSE stream.

Each test drives the whole pipeline in process (`fakes.call`) against a
scripted upstream answer and asserts what the client received and the
request record. The stream timings (keep-alive, idle) are real loop time,
set to a few hundredths of a second.
"""

import base64
import json
import struct
from decimal import Decimal

import aiohttp
import pytest

from proxy import usage
from proxy.tests import fakes
from proxy.tests.fakes import (
    FakeResponse,
    Pause,
    chunk,
    endpoint_info,
    model_info,
    sse,
    without_upstream_ids,
)

EMBED = model_info("embed-test", upstream_name="echo-embed", capability="EMBEDDING")


def answering(response, *models, balances=None, log_content=False):
    """A runtime whose upstream answers every call with `response` (an entry of FakeUpstream)."""
    keys = {fakes.SECRET: fakes.key_info(log_content=log_content)}
    snap = fakes.snapshot(keys=keys, models=list(models) or None, balances=balances)
    return fakes.runtime(snap, upstream=fakes.FakeUpstream(default=response))


def openai_stream(*texts: str, usage: dict) -> FakeResponse:
    """A stream as OpenAI sends it when asked for usage: `usage: null` on every chunk but the
    last, which has no choices."""
    events = [{**chunk(t), "usage": None} for t in texts]
    events += [{**chunk(finish="stop"), "usage": None}, chunk(usage=usage)]
    return FakeResponse(200, sse(*events))


# --------------------------------------------------------------------------- JSON answers


def test_it_names_the_public_model_in_non_stream_answers_for_every_endpoint():
    rt = answering(
        lambda call: FakeResponse(
            200,
            [
                {
                    "/chat/completions": fakes.chat_answer(),
                    "/completions": fakes.completion_answer(),
                    "/embeddings": fakes.embedding_answer([0.5]),
                }[call.path]
            ],
        ),
        model_info("chat-pub"),
        EMBED,
    )

    chat = fakes.chat(rt, model="chat-pub")
    completion = fakes.call(
        rt, "POST", "/v1/completions", {"model": "chat-pub", "prompt": "say hi"}
    )
    embedding = fakes.call(rt, "POST", "/v1/embeddings", {"model": "embed-test", "input": "x"})

    assert [a.status for a in (chat, completion, embedding)] == [200, 200, 200]
    assert [a.json()["model"] for a in (chat, completion, embedding)] == [
        "chat-pub",
        "chat-pub",
        "embed-test",
    ]
    assert [c.path for c in rt.upstream.calls] == [
        "/chat/completions",
        "/completions",
        "/embeddings",
    ]
    assert chat.headers["content-type"] == "application/json"
    assert int(chat.headers["content-length"]) == len(chat.body)


def test_it_logs_one_record_with_the_upstreams_usage_and_cost():
    rt = answering(fakes.answer_ok)

    answer = fakes.chat(rt)

    assert answer.status == 200
    (record,) = rt.writer.records
    assert (record.model, record.endpoint, record.path) == (
        "gpt-test",
        "stand-in",
        "/v1/chat/completions",
    )
    assert (record.status, record.outcome, record.stream) == (200, "ok", False)
    assert (record.input_units, record.output_units, record.usage_estimated) == (3, 2, False)
    assert record.cost == 3 * Decimal("0.001") + 2 * Decimal("0.002")
    assert without_upstream_ids(record.attempts) == [
        {"model": "gpt-test", "endpoint": "stand-in", "deployment": "stand-in/echo", "status": 200}
    ]
    assert (record.prompt_text, record.completion_text) == ("", "")
    assert record.request_id == answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "reported",
    [None, {"prompt_tokens": -1, "completion_tokens": 2}, {"prompt_tokens": 3.0}],
    ids=["none", "negative", "float"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_it_estimates_usage_when_the_upstream_reports_none_it_can_trust(reported, stream):
    messages = [{"role": "user", "content": "please estimate the tokens of this message"}]
    said = "Hello from upstream: please estimate"
    if stream:
        response = fakes.streamed(*said.split(" "), usage=reported)
    else:
        response = FakeResponse(200, [fakes.chat_answer(said, usage=reported)])
    rt = answering(response, model_info(price_in=Decimal("1"), price_out=Decimal("2")))

    answer = fakes.chat(rt, messages=messages, stream=stream)

    assert answer.status == 200
    (record,) = rt.writer.records
    assert record.usage_estimated is True
    received = "".join(said.split(" ")) if stream else said
    assert record.input_units == usage.estimate_tokens(messages[0]["content"]) == 11
    assert record.output_units == usage.estimate_tokens(received)
    assert record.cost == record.input_units * Decimal("1") + record.output_units * Decimal("2")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_it_logs_prompt_and_completion_text_only_for_keys_that_log_content(stream):
    messages = [{"role": "user", "content": "remember this sentence"}]

    def response(call):
        return fakes.streamed("Re", "membered") if stream else fakes.answer_ok(call)

    logged, unlogged = answering(response, log_content=True), answering(response)

    for rt in (logged, unlogged):
        assert fakes.chat(rt, messages=messages, stream=stream).status == 200

    (row,) = logged.writer.records
    assert "remember this sentence" in row.prompt_text
    assert row.completion_text == ("Remembered" if stream else "Hello!")
    (quiet,) = unlogged.writer.records
    assert (quiet.prompt_text, quiet.completion_text) == ("", "")


def test_it_logs_the_completion_text_of_a_text_completion_stream():
    response = FakeResponse(
        200,
        sse(
            {"object": "text_completion", "choices": [{"index": 0, "text": "Hello"}]},
            {"object": "text_completion", "choices": [{"index": 0, "text": " there"}]},
        ),
    )
    rt = answering(response, log_content=True)

    answer = fakes.call(
        rt, "POST", "/v1/completions", {"model": "gpt-test", "prompt": "say hi", "stream": True}
    )

    assert answer.text == "Hello there"
    (record,) = rt.writer.records
    assert "say hi" in record.prompt_text
    assert record.completion_text == "Hello there"


BAD_ANSWERS = {
    "a list": (200, [b"[1, 2]"]),
    "a string": (200, [b'"just a string"']),
    "not json": (200, [b'{"not json']),
    "empty": (200, []),
    "no choices": (200, [b'{"unexpected": true}']),
    "choices a string": (200, [b'{"choices": "all of them"}']),
    "a choice a string": (200, [b'{"choices": ["text"]}']),
    "a message a string": (200, [b'{"choices": [{"message": "not an object"}]}']),
    "204": (204, []),
    "302 redirect": (302, [b'{"choices": []}']),
}


@pytest.mark.parametrize("status, pieces", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_it_answers_502_to_an_answer_that_is_not_an_openai_answer_and_bills_nothing(status, pieces):
    rt = answering(
        FakeResponse(status, pieces),
        model_info(price_in=Decimal("1"), price_out=Decimal("1")),
        balances={3: Decimal("100")},
    )

    answer = fakes.chat(rt)

    fakes.error_of(answer, 502, "upstream_error")
    (record,) = rt.writer.records
    assert (record.status, record.outcome, record.cost) == (502, "upstream_error", 0)
    assert record.attempts[0]["error"] == ("HTTP 302" if status == 302 else "invalid response")
    assert rt.catalog.balance(3) == Decimal("100")
    assert len(rt.upstream.calls) == 1  # nothing followed, nothing retried


def test_an_embeddings_answer_must_hold_a_list_of_data():
    rt = answering(FakeResponse(200, [fakes.chat_answer()]), EMBED)

    answer = fakes.call(rt, "POST", "/v1/embeddings", {"model": "embed-test", "input": "x"})

    fakes.error_of(answer, 502, "upstream_error")


def test_an_answer_larger_than_the_gateway_reads_is_an_upstream_error(settings):
    settings.AETHERGATE_MAX_RESPONSE_BYTES = 1024
    rt = answering(FakeResponse(200, [fakes.chat_answer("x" * 600), b" " * 600]))

    fakes.error_of(fakes.chat(rt), 502, "upstream_error")


def test_an_answer_that_does_not_arrive_in_time_is_a_504_and_the_upstream_is_hung_up():
    response = FakeResponse(200, [b'{"choices": ', Pause(None)])
    rt = answering(response, model_info(endpoint=endpoint_info(first_byte_timeout=0.05)))

    answer = fakes.chat(rt)

    fakes.error_of(answer, 504, "upstream_timeout")
    assert response.closed
    assert rt.writer.records[0].outcome == "upstream_timeout"


def embed(rt, **fields):
    body = {"model": "embed-test", "input": "alpha", **fields}
    return fakes.call(rt, "POST", "/v1/embeddings", body)


VECTOR = [0.125, -0.5, 0.3, 1.0]


def test_it_encodes_base64_embeddings_as_little_endian_float32():
    rt = answering(FakeResponse(200, [fakes.embedding_answer(VECTOR)]), EMBED)

    answer = embed(rt, encoding_format="base64")

    assert answer.status == 200
    encoded = answer.json()["data"][0]["embedding"]
    assert base64.b64decode(encoded) == struct.pack("<4f", *VECTOR)
    assert rt.upstream.calls[0].body["encoding_format"] == "float"


@pytest.mark.parametrize("fields", [{}, {"encoding_format": "float"}], ids=["default", "float"])
def test_it_returns_float_embeddings_as_they_came(fields):
    rt = answering(FakeResponse(200, [fakes.embedding_answer(VECTOR, [1, 2])]), EMBED)

    answer = embed(rt, input=["alpha", "beta"], **fields)

    assert [d["embedding"] for d in answer.json()["data"]] == [VECTOR, [1, 2]]
    assert rt.upstream.calls[0].body == {
        "model": "echo-embed",
        "input": ["alpha", "beta"],
        "encoding_format": "float",
    }


def test_it_answers_502_to_a_vector_it_cannot_encode_as_base64():
    rt = answering(FakeResponse(200, [fakes.embedding_answer(["0.5", None])]), EMBED)

    fakes.error_of(embed(rt, encoding_format="base64"), 502, "upstream_error")


def test_it_logs_embedding_usage_with_no_output():
    answer = fakes.embedding_answer([0.1], [0.2], usage={"prompt_tokens": 3, "total_tokens": 3})
    rt = answering(FakeResponse(200, [answer]), EMBED)

    assert embed(rt, input=["one two", "three"]).status == 200

    (record,) = rt.writer.records
    assert (record.model, record.path, record.outcome) == ("embed-test", "/v1/embeddings", "ok")
    assert (record.input_units, record.output_units, record.usage_estimated) == (3, 0, False)


# --------------------------------------------------------------------------- streams


def test_it_relays_a_stream_as_server_sent_events_ending_with_done():
    rt = answering(fakes.streamed(*(f" w{n}" for n in range(20)), usage=fakes.OK_USAGE))

    answer = fakes.chat(rt, stream=True)

    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-accel-buffering"] == "no"
    assert answer.events[-1] == "[DONE]"
    chunks = answer.events[:-1]
    assert len(chunks) == 21  # content and finish; the usage chunk was not asked for
    assert answer.text == "".join(f" w{n}" for n in range(20))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert answer.messages[-1] == {
        "type": "http.response.body",
        "body": b"data: [DONE]\n\n",
        "more_body": False,
    }


def test_it_answers_a_short_stream_as_event_stream_too():
    rt = answering(fakes.streamed("hi"))

    answer = fakes.chat(rt, stream=True)

    assert answer.headers["content-type"].startswith("text/event-stream")
    assert len(answer.events) == 3  # one content chunk, the finish chunk, [DONE]


def test_it_names_the_public_model_in_every_stream_chunk():
    rt = answering(openai_stream(*(f" w{n}" for n in range(20)), usage=fakes.OK_USAGE))

    answer = fakes.chat(rt, stream=True, stream_options={"include_usage": True})

    chunks = answer.events[:-1]
    assert len(chunks) == 20 + 2  # content, finish, usage
    assert {c["model"] for c in chunks} == {"gpt-test"}
    assert rt.upstream.calls[0].body["model"] == "echo"


@pytest.mark.parametrize(
    "fields", [{}, {"stream_options": {"include_usage": False}}], ids=["not asked", "refused"]
)
def test_it_drops_usage_from_a_stream_that_did_not_ask_for_it_but_counts_it(fields):
    rt = answering(openai_stream("Hel", "lo", usage={"prompt_tokens": 7, "completion_tokens": 2}))

    answer = fakes.chat(rt, stream=True, **fields)

    chunks = answer.events[:-1]
    assert len(chunks) == 3
    assert all(c["choices"] for c in chunks)
    assert not [c for c in chunks if "usage" in c]
    (record,) = rt.writer.records
    assert (record.input_units, record.output_units, record.usage_estimated) == (7, 2, False)


def test_it_forwards_the_usage_chunk_when_the_client_asked():
    rt = answering(openai_stream("Hel", "lo", usage={"prompt_tokens": 7, "completion_tokens": 2}))

    answer = fakes.chat(rt, stream=True, stream_options={"include_usage": True})

    *chunks, last, done = answer.events
    assert done == "[DONE]"
    assert last["choices"] == []
    assert (last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]) == (7, 2)
    assert last["model"] == "gpt-test"
    assert all(c["usage"] is None for c in chunks)


def test_it_logs_a_streams_reported_usage_and_time_to_first_token():
    rt = answering(
        fakes.streamed("a", "b", usage={"prompt_tokens": 7, "completion_tokens": 20}),
        model_info(price_in=Decimal("0.5"), price_out=Decimal("0.25")),
    )

    fakes.chat(rt, stream=True)

    (record,) = rt.writer.records
    assert (record.status, record.outcome, record.stream) == (200, "ok", True)
    assert (record.input_units, record.output_units, record.usage_estimated) == (7, 20, False)
    assert record.cost == 7 * Decimal("0.5") + 20 * Decimal("0.25")
    assert record.ttft_ms is not None
    assert 0 <= record.ttft_ms <= record.latency_ms


def test_it_sends_keep_alive_comments_while_the_upstream_is_silent(settings):
    settings.AETHERGATE_SSE_KEEPALIVE_SECONDS = 0.02
    events = sse(Pause(0.1), chunk("Hel"), Pause(0.1), chunk("lo"), chunk(finish="stop"))
    rt = answering(FakeResponse(200, events))

    answer = fakes.chat(rt, stream=True)

    frames = answer.frames
    assert frames[0] == ": keep-alive"  # the stream starts before the first chunk
    data_at = [i for i, frame in enumerate(frames) if frame.startswith("data: ")]
    assert frames[data_at[0] + 1 : data_at[1]], "no keep-alive while the upstream was silent"
    assert set(frames) - {f for f in frames if f.startswith("data: ")} == {": keep-alive"}
    assert frames[-1] == "data: [DONE]"
    assert answer.text == "Hello"


def test_it_sends_no_keep_alive_when_the_upstream_keeps_talking(settings):
    settings.AETHERGATE_SSE_KEEPALIVE_SECONDS = 0.05
    rt = answering(fakes.streamed(*"keep talking"))

    answer = fakes.chat(rt, stream=True)

    assert all(frame.startswith("data: ") for frame in answer.frames)


def test_it_keeps_an_event_intact_when_a_keep_alive_fires_mid_line(settings):
    settings.AETHERGATE_SSE_KEEPALIVE_SECONDS = 0.02
    first, second, finish, done = sse(chunk("first"), chunk(" second"), chunk(finish="stop"))
    rt = answering(FakeResponse(200, [first, second[:20], Pause(0.1), second[20:], finish, done]))

    answer = fakes.chat(rt, stream=True)

    assert ": keep-alive" in answer.frames
    assert answer.events[-1] == "[DONE]"
    assert answer.text == "first second"


RESET = aiohttp.ClientPayloadError("Response payload is not completed")


@pytest.mark.parametrize("end", [[RESET], []], ids=["reset", "no-done"])
def test_it_ends_a_stream_that_breaks_midway_with_an_error_event_and_no_done(end):
    events = sse(*(chunk(f" w{n}") for n in range(5)), done=False) + end
    rt = answering(FakeResponse(200, events))

    answer = fakes.chat(rt, stream=True)

    assert answer.status == 200
    assert "[DONE]" not in answer.events
    *chunks, last = answer.events
    assert len(chunks) == 5 and {c["model"] for c in chunks} == {"gpt-test"}
    assert set(last) == {"error"}
    assert (last["error"]["code"], last["error"]["type"]) == ("upstream_error", "upstream_error")
    assert last["error"]["message"] == "The upstream for model 'gpt-test' broke off mid-stream."
    fakes.assert_no_internals(answer.body)
    (record,) = rt.writer.records
    assert (record.status, record.outcome, record.stream) == (502, "upstream_error", True)
    # Billed for what reached the client, estimated: the upstream never said.
    assert record.output_units == usage.estimate_tokens("".join(f" w{n}" for n in range(5)))
    assert record.usage_estimated is True


def test_it_ends_a_stream_that_goes_idle_with_an_error_event_and_hangs_up_upstream():
    response = FakeResponse(200, sse(chunk("first"), Pause(None), done=False))
    rt = answering(response, model_info(endpoint=endpoint_info(idle_timeout=0.05)))

    answer = fakes.chat(rt, stream=True)

    assert answer.status == 200
    first, last = answer.events
    assert first["choices"][0]["delta"]["content"] == "first"
    assert last["error"]["code"] == "upstream_timeout"
    assert response.closed
    (record,) = rt.writer.records
    assert (record.status, record.outcome) == (504, "upstream_timeout")


BAD_CHUNKS = {
    "not json": b"{not json",
    "a list": b"[1]",
    "choices a string": b'{"choices": "x"}',
    "a delta a string": b'{"object": "chat.completion.chunk", "choices": [{"delta": "oops"}]}',
    "an error": b'{"error": {"message": "overloaded at 10.0.0.7"}}',
}


@pytest.mark.parametrize("bad", list(BAD_CHUNKS.values()), ids=list(BAD_CHUNKS))
def test_it_ends_a_stream_whose_chunk_is_not_shaped_like_openais_with_an_error_event(bad):
    rt = answering(FakeResponse(200, sse(chunk("hi"), bad)))

    answer = fakes.chat(rt, stream=True)

    assert answer.status == 200
    assert answer.events[0]["choices"][0]["delta"]["content"] == "hi"
    assert answer.events[-1]["error"]["code"] == "upstream_error"
    assert "[DONE]" not in answer.events
    fakes.assert_no_internals(answer.body)
    assert rt.writer.records[0].outcome == "upstream_error"


@pytest.mark.parametrize(
    "pieces",
    [[b"data: {not json\n\n"], sse(done=False), [RESET], [b'{"not json']],
    ids=["bad chunk", "empty", "reset", "not sse"],
)
def test_a_stream_that_fails_before_its_first_chunk_is_a_502_answer_and_not_billed(pieces):
    rt = answering(FakeResponse(200, pieces), balances={3: Decimal("100")})

    answer = fakes.chat(rt, stream=True)

    fakes.error_of(answer, 502, "upstream_error")
    (record,) = rt.writer.records
    assert (record.status, record.cost, record.output_units) == (502, 0, 0)
    assert record.attempts[0]["error"] == "stream failed"
    assert rt.catalog.balance(3) == Decimal("100")


def test_a_stream_that_does_not_start_in_time_is_a_504_answer():
    rt = answering(
        FakeResponse(200, [Pause(None)]),
        model_info(endpoint=endpoint_info(first_byte_timeout=0.05)),
    )

    fakes.error_of(fakes.chat(rt, stream=True), 504, "upstream_timeout")


def test_a_stream_line_longer_than_the_limit_is_an_upstream_error(settings):
    settings.AETHERGATE_MAX_SSE_LINE_BYTES = 64 * 1024
    rt = answering(FakeResponse(200, [b"data: " + b"x" * 40 * 1024, b"x" * 40 * 1024]))

    answer = fakes.chat(rt, stream=True)

    fakes.error_of(answer, 502, "upstream_error")
    (record,) = rt.writer.records
    assert (record.status, record.cost) == (502, 0)


def test_it_relays_a_chunk_for_each_upstream_chunk_as_it_arrives():
    rt = answering(fakes.streamed("one", " two"))

    answer = fakes.chat(rt, stream=True)

    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body"]
    assert [json.loads(b[6:])["choices"] for b in bodies[:2]] == [
        [{"index": 0, "delta": {"content": "one"}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " two"}, "finish_reason": None}],
    ]
    assert all(m.get("more_body") for m in answer.messages[1:-1])


# --------------------------------------------------------------------------- normalised answers


def test_it_sends_its_own_usage_chunk_when_the_upstream_ignores_include_usage():
    # llama-cpp-python and LM Studio drop stream_options: no usage ever comes.
    rt = answering(fakes.streamed("Hel", "lo"))

    answer = fakes.chat(rt, stream=True, stream_options={"include_usage": True})

    *chunks, last, done = answer.events
    assert done == "[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hel", "lo", None]
    (record,) = rt.writer.records
    assert record.usage_estimated is True
    assert last == {
        "id": chunks[-1]["id"],
        "object": "chat.completion.chunk",
        "created": chunks[-1]["created"],
        "model": "gpt-test",
        "choices": [],
        "usage": {
            "prompt_tokens": record.input_units,
            "completion_tokens": record.output_units,
            "total_tokens": record.input_units + record.output_units,
        },
    }
    assert record.output_units == usage.estimate_tokens("Hello") > 0


def test_it_sends_no_usage_chunk_of_its_own_to_a_client_that_did_not_ask():
    rt = answering(fakes.streamed("Hel", "lo"))

    answer = fakes.chat(rt, stream=True)

    assert [c for c in answer.events[:-1] if not c["choices"] or "usage" in c] == []


def test_a_stream_ended_without_a_finish_reason_is_an_error_event_not_done():
    # llama-cpp-python ends a stream another request interrupted with a bare [DONE].
    rt = answering(FakeResponse(200, sse(chunk("Hel"), chunk("lo"))))

    answer = fakes.chat(rt, stream=True)

    assert "[DONE]" not in answer.events
    assert answer.events[-1]["error"]["code"] == "upstream_error"
    (record,) = rt.writer.records
    assert (record.status, record.outcome) == (502, "upstream_error")


def test_a_json_answer_without_usage_gets_the_gateways_count():
    rt = answering(FakeResponse(200, [fakes.chat_answer("Hi there")]))

    answer = fakes.chat(rt)

    (record,) = rt.writer.records
    assert record.usage_estimated is True
    assert answer.json()["usage"] == {
        "prompt_tokens": record.input_units,
        "completion_tokens": record.output_units,
        "total_tokens": record.input_units + record.output_units,
    }
    assert answer.json()["choices"][0]["message"]["refusal"] is None

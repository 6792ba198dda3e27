"""The upstream stand-in answers like an OpenAI server, and as each model-name flag says."""

import json
import time

import httpx
import openai
import pytest

from proxy.tests.upstream import (
    DEFAULT_CHUNKS,
    EMBEDDING_DIMENSIONS,
    Flags,
    chat_answer,
    completion_answer,
    embedding_vector,
    parse_flags,
    stream_text,
)

HELLO = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def sdk(upstream):
    client = openai.OpenAI(base_url=upstream.base_url, api_key="x", max_retries=0, timeout=10)
    yield client
    client.close()


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- flag grammar


def test_it_reads_flags_after_a_base_name_or_alone():
    assert parse_flags("echo") == Flags()
    assert parse_flags("fail=503").fail == 503
    flags = parse_flags("echo+nousage+slow=0.3+chunks=4+gap=0.1+noDone+reset=2")
    assert flags == Flags(nousage=True, slow=0.3, chunks=4, gap=0.1, nodone=True, reset=2)


def test_it_ignores_parts_that_are_not_well_formed_flags():
    assert parse_flags("llama3:8b+q4+slow=soon+fail") == Flags()


# --------------------------------------------------------------------------- normal answers


def test_it_answers_a_chat_completion_deterministically(sdk):
    answer = sdk.chat.completions.create(model="echo", messages=HELLO)

    assert answer.object == "chat.completion"
    assert answer.model == "echo"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Hello from upstream: hi there"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 5)
    assert answer.usage.total_tokens == 10
    assert chat_answer(HELLO) == ("Hello from upstream: hi there", 5, 5)


def test_it_answers_the_last_user_message_joining_text_parts(sdk):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "text", "text": "here"}],
        },
    ]

    answer = sdk.chat.completions.create(model="echo", messages=messages)

    assert answer.choices[0].message.content == "Hello from upstream: look here"
    assert answer.usage.prompt_tokens == 2 + 1 + 1 + 2 + 3


def test_it_answers_a_text_completion(sdk):
    answer = sdk.completions.create(model="echo", prompt="say something")

    assert answer.object == "text_completion"
    assert answer.choices[0].text == "Hello from upstream: say something"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == completion_answer("say something")[1] == 5


def test_it_embeds_each_input_as_eight_floats(sdk):
    answer = sdk.embeddings.create(model="embed", input=["a", "b c"], encoding_format="float")

    assert [d.index for d in answer.data] == [0, 1]
    for item, text in zip(answer.data, ["a", "b c"], strict=True):
        assert len(item.embedding) == EMBEDDING_DIMENSIONS
        assert all(isinstance(v, float) and -1 <= v <= 1 for v in item.embedding)
        assert item.embedding == embedding_vector(text)
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3


def test_it_sends_floats_even_when_base64_is_asked(upstream):
    response = httpx.post(
        f"{upstream.base_url}/embeddings",
        json={"model": "embed", "input": [[1, 2, 3]], "encoding_format": "base64"},
    )

    vector = response.json()["data"][0]["embedding"]
    assert vector == embedding_vector([1, 2, 3])
    assert response.json()["usage"]["prompt_tokens"] == 3


def test_it_lists_models(sdk, upstream):
    assert [m.id for m in sdk.models.list()] == ["echo", "echo-embed"]
    upstream.model_ids = ["only"]
    assert [m.id for m in sdk.models.list()] == ["only"]


def test_it_answers_unknown_paths_with_an_openai_shaped_404(upstream):
    response = httpx.get(f"{upstream.base_url}/nowhere")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert upstream.received[0].path == "/v1/nowhere"


# --------------------------------------------------------------------------- streams


def test_it_streams_twenty_word_chunks_then_stop_without_usage_unless_asked(sdk):
    chunks = list(sdk.chat.completions.create(model="echo", messages=HELLO, stream=True))

    content = chunks[:-1]
    assert len(content) == DEFAULT_CHUNKS
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content for c in content)
    assert text == stream_text("Hello from upstream: hi there")
    assert text.startswith("Hello from upstream: hi there Hello from")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_it_ends_a_stream_with_a_usage_chunk_when_asked(sdk):
    chunks = list(
        sdk.chat.completions.create(
            model="echo+chunks=3",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert len(chunks) == 3 + 2
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 3)


def test_it_streams_text_completions_with_usage_when_asked(sdk):
    chunks = list(
        sdk.completions.create(
            model="echo+chunks=4",
            prompt="go",
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "".join(c.choices[0].text for c in chunks[:4]) == "Hello from upstream: go"
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[5].usage.completion_tokens == 4


def test_it_flushes_each_chunk_and_ends_with_done(upstream):
    body = {"model": "echo+chunks=2", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)

    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]] == [
        "Hello",
        " from",
        None,
    ]
    # The client can read [DONE] before the handler records that it finished.
    assert upstream.received[0].wait_done(5)
    assert upstream.received[0].finished_at is not None
    assert not upstream.received[0].closed_early


# --------------------------------------------------------------------------- flags


def test_nousage_drops_usage_everywhere(sdk):
    answer = sdk.chat.completions.create(model="echo+nousage", messages=HELLO)
    chunks = list(
        sdk.chat.completions.create(
            model="echo+nousage",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert answer.usage is None
    assert all(c.usage is None and c.choices for c in chunks)


def test_nousage_omits_the_usage_key(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "echo+nousage", "messages": HELLO}
    )

    assert "usage" not in response.json()


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_usage_flag_reports_absurd_counts(upstream, stream):
    payload = {"model": "echo+usage=huge", "messages": HELLO, "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    response = httpx.post(f"{upstream.base_url}/chat/completions", json=payload)

    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
        usage = json.loads(events[-1])["usage"]
    else:
        usage = response.json()["usage"]
    assert usage == dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), 2**63)
    assert parse_flags("echo+usage=exponent").usage == "exponent"
    assert parse_flags("echo+usage=nonsense").usage == ""


def test_fail_answers_the_status_with_an_openai_error_carrying_internals(sdk):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="fail=503", messages=HELLO)

    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "upstream_test"
    assert "10.0.0.7" in caught.value.body["message"]
    assert "sk-upstream-secret" in caught.value.body["message"]


def test_fail_429_asks_to_retry_after_a_second(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={"model": "echo+fail=429", "messages": HELLO, "stream": True},
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "x"


def test_malformed_answers_broken_json(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "malformed", "messages": HELLO}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == b'{"not json'


def test_malformed_breaks_the_sdk(sdk):
    with pytest.raises((openai.APIError, json.JSONDecodeError, ValueError)):
        sdk.chat.completions.create(model="malformed", messages=HELLO)


def test_reset_drops_a_stream_after_k_chunks(sdk, upstream):
    received = []
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):
        for chunk in sdk.chat.completions.create(model="echo+reset=3", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content)

    assert received == ["Hello", " from", " upstream:"]
    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.aborted
    assert not record.closed_early


def test_reset_drops_a_plain_request_before_answering(sdk, upstream):
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="echo+reset=0", messages=HELLO)

    assert upstream.received[0].aborted


def test_nodone_ends_a_stream_cleanly_without_done(upstream):
    body = {"model": "echo+chunks=1+noDone", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        events = sse_events(response)

    assert len(events) == 2
    assert "[DONE]" not in events


def test_slow_waits_before_the_headers(upstream):
    started = time.monotonic()
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "echo+slow=0.2", "messages": HELLO}
    )

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_gap_spaces_stream_chunks(upstream):
    body = {"model": "echo+chunks=3+gap=0.1", "messages": HELLO, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        events = sse_events(response)

    assert len(events) == 5
    assert time.monotonic() - started >= 0.3


def test_silent_never_answers_and_notices_the_client_leaving_at_once(upstream):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{upstream.base_url}/chat/completions",
            json={"model": "silent", "messages": HELLO},
            timeout=0.2,
        )
    left = time.monotonic()

    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.finished_at is None
    assert record.closed_at - left < 1


def test_it_notices_a_client_leaving_mid_stream(upstream):
    # With 2 s between chunks, only noticing the disconnect itself (not a failed write) is fast.
    body = {"model": "echo+gap=2", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        first = next(response.iter_lines())
    left = time.monotonic()

    assert first.startswith("data: ")
    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.closed_at - left < 1


# --------------------------------------------------------------------------- records


def test_it_records_method_path_headers_and_body_in_order(sdk, upstream):
    sdk.chat.completions.create(model="echo", messages=HELLO, extra_headers={"X-Trace": "t1"})
    sdk.embeddings.create(model="embed", input="x", encoding_format="float")

    first, second = upstream.received
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer x"
    assert first.headers["x-trace"] == "t1"
    assert first.json == {"model": "echo", "messages": HELLO}
    assert first.model == "echo"
    assert first.wait_done(5)
    assert first.finished_at is not None
    assert second.path == "/v1/embeddings"


def test_it_records_a_request_before_its_flags_act(upstream):
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"{upstream.base_url}/chat/completions", json={"model": "reset=0", "messages": HELLO}
        )

    assert [r.model for r in upstream.received] == ["reset=0"]


def test_it_refuses_a_wrong_key_only_when_one_is_required(upstream):
    upstream.require_api_key = "sk-right"
    url = f"{upstream.base_url}/chat/completions"
    body = {"model": "echo", "messages": HELLO}

    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"})
    right = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-right"})

    assert (wrong.status_code, right.status_code) == (401, 200)


def test_reset_forgets_requests_and_overrides(upstream):
    httpx.get(f"{upstream.base_url}/models")
    upstream.model_ids = []
    upstream.require_api_key = "k"

    upstream.reset()

    assert upstream.received == []
    assert upstream.model_ids == ["echo", "echo-embed"]
    assert upstream.require_api_key is None

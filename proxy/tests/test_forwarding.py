"""The /v1 proxy forwards to the configured upstream, relays its answer and logs each request.

Every test drives the real gateway (uvicorn in a thread) against the upstream stand-in on
loopback, and checks effects: what the client got, what reached the upstream, the log row.
"""

import asyncio
import base64
import json
import socket
import struct
import subprocess
import threading
import time
from decimal import Decimal

import httpx
import openai
import pytest

from aethergate.testing import wait_for_logs
from proxy.tests.conftest import UPSTREAM_API_KEY
from proxy.tests.upstream import (
    chat_answer,
    completion_answer,
    embedding_vector,
    stream_text,
)

HELLO = [{"role": "user", "content": "hi there"}]
HELLO_TEXT, HELLO_PROMPT_TOKENS, HELLO_COMPLETION_TOKENS = chat_answer(HELLO)
INTERNAL_IP = "10.0.0.7"  # the stand-in puts it in its error messages
ERROR_FIELDS = {"message", "type", "param", "code"}


# --------------------------------------------------------------------------- helpers


def only_log():
    """The single request log row (fails if none or several were written)."""
    rows = wait_for_logs(1)
    assert len(rows) == 1, rows
    return rows[0]


def auth(secret, **extra):
    return {"Authorization": f"Bearer {secret}", **extra}


def post(gateway, secret, path, payload, **options):
    """POST `payload` as JSON to the gateway's /v1 `path` with httpx; the response."""
    return httpx.post(
        f"{gateway.v1}{path}", json=payload, headers=auth(secret), timeout=10, **options
    )


def stream_lines(gateway, secret, payload, path="/chat/completions"):
    """(response, every raw line) of a streamed request, read to the end with httpx."""
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{gateway.v1}{path}", json=payload, headers=auth(secret)) as response,
    ):
        lines = list(response.iter_lines())
    return response, lines


def data_events(lines):
    """The `data:` payloads among SSE lines, in order."""
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def closed_port():
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_internals(text, upstream, *urls):
    """An error the client sees says nothing about the upstream's address or credential."""
    assert UPSTREAM_API_KEY not in text
    assert INTERNAL_IP not in text
    assert upstream.base_url not in text
    assert f"127.0.0.1:{upstream.port}" not in text
    for url in urls:
        assert url not in text


def assert_openai_error(body, code):
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_FIELDS
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.fixture
def secret(make_key):
    """A plain key's secret (no model or capability restriction, content not logged)."""
    return make_key()[1]


@pytest.fixture
def content_secret(make_key):
    """A key that logs prompt and completion text."""
    return make_key(name="content", log_content=True)[1]


@pytest.fixture
def model(make_model):
    """`gpt-test` → `echo` on the stand-in."""
    return make_model()


# --------------------------------------------------------------------------- routing


def test_it_routes_the_public_name_to_the_upstream_name_on_the_models_endpoint(
    gateway, upstream, make_model, secret
):
    make_model(name="gpt-public", upstream_name="echo+chunks=3")

    response = post(
        gateway, secret, "/chat/completions", {"model": "gpt-public", "messages": HELLO}
    )

    assert response.status_code == 200
    (received,) = upstream.received
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.model == "echo+chunks=3"
    assert response.json()["model"] == "gpt-public"
    assert response.json()["choices"][0]["message"]["content"] == HELLO_TEXT


def test_it_sends_the_endpoint_credential_and_no_client_header_upstream(
    gateway, upstream, model, secret, client_for
):
    client = client_for(secret)

    client.chat.completions.create(
        model="gpt-test",
        messages=HELLO,
        extra_headers={"X-Custom": "from-client", "X-Forwarded-For": "203.0.113.9"},
    )

    headers = upstream.received[-1].headers
    assert headers["authorization"] == f"Bearer {UPSTREAM_API_KEY}"
    assert "x-custom" not in headers
    assert "x-forwarded-for" not in headers
    assert not [name for name in headers if name.startswith("x-stainless")]
    assert "openai" not in headers.get("user-agent", "").lower()
    assert not [value for value in headers.values() if secret in value]


def test_it_names_the_public_model_in_non_stream_answers_for_every_endpoint(
    gateway, make_model, secret
):
    make_model(name="chat-pub", upstream_name="echo")
    make_model(name="embed-pub", upstream_name="echo-embed", capability="EMBEDDING")

    chat = post(gateway, secret, "/chat/completions", {"model": "chat-pub", "messages": HELLO})
    completion = post(gateway, secret, "/completions", {"model": "chat-pub", "prompt": "say hi"})
    embedding = post(gateway, secret, "/embeddings", {"model": "embed-pub", "input": "x"})

    assert [r.status_code for r in (chat, completion, embedding)] == [200, 200, 200]
    assert chat.json()["model"] == "chat-pub"
    assert completion.json()["model"] == "chat-pub"
    assert embedding.json()["model"] == "embed-pub"


def test_it_names_the_public_model_in_every_stream_chunk(gateway, upstream, model, secret):
    payload = {
        "model": "gpt-test",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    _, lines = stream_lines(gateway, secret, payload)

    chunks = [json.loads(e) for e in data_events(lines)[:-1]]
    assert len(chunks) == 20 + 2  # content, finish, usage
    assert {c["model"] for c in chunks} == {"gpt-test"}
    assert upstream.received[-1].model == "echo"


# --------------------------------------------------------------------------- pass-through


PASSTHROUGH = {
    "messages": [
        {"role": "system", "content": "Réponds brièvement ✓"},
        {"role": "user", "content": "what is the weather"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Look up the weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "response_format": {"type": "json_object"},
    "seed": 1234,
    "stop": ["\n\n", "END"],
    "max_completion_tokens": 77,
    "temperature": 0.25,
    "user": "end-user-42",
    "my_extension": {"a": [1, 2]},
}


def test_it_passes_every_other_field_through_unchanged(gateway, upstream, model, secret):
    payload = {"model": "gpt-test", **PASSTHROUGH}

    response = post(gateway, secret, "/chat/completions", payload)

    assert response.status_code == 200
    assert upstream.received[-1].json == {**PASSTHROUGH, "model": "echo"}


def test_it_passes_the_sdks_fields_and_extra_body_through(
    gateway, upstream, model, secret, client_for
):
    client = client_for(secret)

    client.chat.completions.create(
        model="gpt-test",
        messages=PASSTHROUGH["messages"],
        tools=PASSTHROUGH["tools"],
        tool_choice=PASSTHROUGH["tool_choice"],
        n=2,
        logprobs=True,
        top_logprobs=3,
        response_format={"type": "json_object"},
        seed=1234,
        stop=["\n\n", "END"],
        max_completion_tokens=77,
        extra_body={"my_extension": {"a": [1, 2]}},
    )

    sent = upstream.received[-1].json
    assert sent["model"] == "echo"
    for name in (
        "messages",
        "tools",
        "tool_choice",
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "seed",
        "stop",
        "max_completion_tokens",
        "my_extension",
    ):
        assert sent[name] == PASSTHROUGH[name], name


def test_it_forces_usage_reporting_on_streams_and_passes_other_stream_options(
    gateway, upstream, model, secret
):
    payload = {
        "model": "gpt-test",
        **PASSTHROUGH,
        "stream": True,
        "stream_options": {"include_usage": False, "include_obfuscation": False},
    }

    response, _ = stream_lines(gateway, secret, payload)

    assert response.status_code == 200
    assert upstream.received[-1].json == {
        **payload,
        "model": "echo",
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }


def test_it_asks_for_usage_on_a_stream_that_sent_no_stream_options(
    gateway, upstream, model, secret
):
    stream_lines(gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True})

    assert upstream.received[-1].json["stream_options"] == {"include_usage": True}


def test_it_does_not_add_stream_options_to_a_plain_request(gateway, upstream, model, secret):
    post(gateway, secret, "/chat/completions", {"model": "gpt-test", "messages": HELLO})

    assert "stream_options" not in upstream.received[-1].json


# --------------------------------------------------------------------------- routing fields


def test_it_strips_client_routing_fields_at_any_depth(gateway, upstream, model, secret):
    elsewhere = f"http://127.0.0.1:{closed_port()}/v1"
    payload = {
        "model": "gpt-test",
        "messages": HELLO,
        "api_base": elsewhere,
        "base_url": elsewhere,
        "api_key": "sk-client-chosen",
        "api_version": "2024-01-01",
        "headers": {"Authorization": "Bearer sk-client-chosen"},
        "extra_headers": {"X-Evil": "1"},
        "extra": {"api_key": "x", "keep": 1, "deep": [{"base_url": "y", "keep": 2}]},
        "metadata": {"headers": {"a": "b"}, "tag": "t"},
    }

    response = post(gateway, secret, "/chat/completions", payload)

    assert response.status_code == 200
    (received,) = upstream.received
    assert received.json == {
        "model": "echo",
        "messages": HELLO,
        "extra": {"keep": 1, "deep": [{"keep": 2}]},
        "metadata": {"tag": "t"},
    }
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_API_KEY}"
    assert "x-evil" not in received.headers


def test_it_leaves_routing_like_names_inside_model_data_untouched(gateway, upstream, model, secret):
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi there", "api_key": "part-of-the-message"}],
        }
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "connect",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "api_key": {"type": "string"},
                        "base_url": {"type": "string"},
                        "headers": {"type": "object"},
                    },
                },
            },
        }
    ]
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "conn",
            "schema": {"type": "object", "properties": {"api_base": {"type": "string"}}},
        },
    }
    payload = {
        "model": "gpt-test",
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": response_format,
    }

    response = post(gateway, secret, "/chat/completions", payload)

    assert response.status_code == 200
    assert upstream.received[-1].json == {**payload, "model": "echo"}


# --------------------------------------------------------------------------- embeddings


@pytest.fixture
def embed_model(make_model):
    return make_model(name="embed-test", upstream_name="echo-embed", capability="EMBEDDING")


def test_it_serves_the_sdks_default_base64_embeddings_from_upstream_floats(
    gateway, upstream, embed_model, secret, client_for
):
    client = client_for(secret)

    answer = client.embeddings.create(model="embed-test", input=["alpha", "beta gamma"])

    assert answer.model == "embed-test"
    assert [d.index for d in answer.data] == [0, 1]
    for item, datum in zip(["alpha", "beta gamma"], answer.data, strict=True):
        assert datum.embedding == pytest.approx(embedding_vector(item), abs=1e-6)
    assert upstream.received[-1].json["encoding_format"] == "float"
    assert upstream.received[-1].json["input"] == ["alpha", "beta gamma"]


def test_it_encodes_base64_embeddings_as_little_endian_float32(
    gateway, upstream, embed_model, secret
):
    response = post(
        gateway,
        secret,
        "/embeddings",
        {"model": "embed-test", "input": "alpha", "encoding_format": "base64"},
    )

    assert response.status_code == 200
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 8 * 4
    expected = struct.unpack("<8f", struct.pack("<8f", *embedding_vector("alpha")))
    assert struct.unpack("<8f", raw) == expected
    assert upstream.received[-1].json["encoding_format"] == "float"


def test_it_returns_float_embeddings_as_they_came(
    gateway, upstream, embed_model, secret, client_for
):
    client = client_for(secret)

    answer = client.embeddings.create(model="embed-test", input="alpha", encoding_format="float")
    raw = post(
        gateway,
        secret,
        "/embeddings",
        {"model": "embed-test", "input": [[1, 2, 3]], "encoding_format": "float"},
    )

    assert answer.data[0].embedding == embedding_vector("alpha")
    assert raw.json()["data"][0]["embedding"] == embedding_vector([1, 2, 3])
    assert [r.json["encoding_format"] for r in upstream.received] == ["float", "float"]


# --------------------------------------------------------------------------- streaming


def test_it_relays_a_stream_as_server_sent_events_ending_with_done(
    gateway, upstream, model, secret
):
    payload = {"model": "gpt-test", "messages": HELLO, "stream": True}

    response, lines = stream_lines(gateway, secret, payload)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 21
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == stream_text(HELLO_TEXT)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_it_answers_a_short_stream_as_event_stream_too(gateway, make_model, secret):
    make_model(upstream_name="echo+chunks=1+nousage")

    response, lines = stream_lines(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert data_events(lines)[-1] == "[DONE]"
    assert len(data_events(lines)) == 3  # one content chunk, the finish chunk, [DONE]


def test_it_drops_usage_from_a_stream_that_did_not_ask_for_it(gateway, model, secret):
    for options in ({}, {"stream_options": {"include_usage": False}}):
        payload = {"model": "gpt-test", "messages": HELLO, "stream": True, **options}

        _, lines = stream_lines(gateway, secret, payload)

        chunks = [json.loads(e) for e in data_events(lines)[:-1]]
        assert all(c["choices"] for c in chunks)
        assert not [c for c in chunks if "usage" in c]


def test_it_forwards_the_usage_chunk_when_the_client_asked(gateway, model, secret, client_for):
    client = client_for(secret)

    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (HELLO_PROMPT_TOKENS, 20)
    assert all(c.usage is None for c in chunks[:-1])
    assert last.model == "gpt-test"


def test_it_sends_keep_alive_comments_while_the_upstream_is_silent(
    gateway, make_model, secret, settings
):
    settings.AETHERGATE_SSE_KEEPALIVE_SECONDS = 0.2
    make_model(upstream_name="echo+gap=0.5+chunks=2")

    response, lines = stream_lines(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert response.status_code == 200
    events = [line for line in lines if line]
    assert events[0].startswith("data: ")
    assert events[-1] == "data: [DONE]"
    data_at = [i for i, line in enumerate(events) if line.startswith("data: ")]
    between_first_two = events[data_at[0] + 1 : data_at[1]]
    assert between_first_two, "no keep-alive while the upstream was silent for 0.5 s"
    assert set(between_first_two) == {": keep-alive"}
    assert set(events) - {": keep-alive"} == {f"data: {e}" for e in data_events(lines)}
    chunks = [json.loads(e) for e in data_events(lines)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == stream_text(HELLO_TEXT, 2)


def test_it_sends_no_keep_alive_when_the_upstream_keeps_talking(gateway, model, secret):
    _, lines = stream_lines(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert not [line for line in lines if line.startswith(":")]


class SplitLineUpstream:
    """A one-shot raw HTTP upstream that streams one SSE event in two halves, `pause` apart."""

    def __init__(self, pause):
        self.pause = pause
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(10)
        self.sock.close()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while len(body) < length:
                body += conn.recv(65536)

            def event(content, finish=None):
                delta = {"content": content} if content else {}
                return (
                    "data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-split",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": "split",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        }
                    )
                    + "\n\n"
                ).encode()

            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Connection: close\r\n\r\n" + event("first")
            )
            second = event(" second")
            conn.sendall(second[:20])
            time.sleep(self.pause)
            conn.sendall(second[20:] + event("", "stop") + b"data: [DONE]\n\n")


def test_it_keeps_an_event_intact_when_a_keep_alive_fires_mid_line(
    gateway, make_endpoint, make_model, secret, settings
):
    settings.AETHERGATE_SSE_KEEPALIVE_SECONDS = 0.2
    with SplitLineUpstream(pause=0.5) as split:
        make_model(
            upstream_name="split", endpoint=make_endpoint(name="split", base_url=split.base_url)
        )

        response, lines = stream_lines(
            gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
        )

    assert response.status_code == 200
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "first second"


# --------------------------------------------------------------------------- SDK, LangChain, curl


def test_it_serves_the_sync_sdk_for_chat_stream_and_non_stream(gateway, model, secret, client_for):
    client = client_for(secret)

    answer = client.chat.completions.create(model="gpt-test", messages=HELLO)
    stream = client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
    chunks = list(stream)

    assert answer.model == "gpt-test"
    assert answer.choices[0].message.content == HELLO_TEXT
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        HELLO_PROMPT_TOKENS,
        HELLO_COMPLETION_TOKENS,
    )
    assert {c.model for c in chunks} == {"gpt-test"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stream_text(HELLO_TEXT)


def test_it_serves_the_sync_sdk_for_text_completions(gateway, model, secret, client_for):
    client = client_for(secret)
    expected, prompt_tokens, completion_tokens = completion_answer("say hi")

    answer = client.completions.create(model="gpt-test", prompt="say hi")
    chunks = list(client.completions.create(model="gpt-test", prompt="say hi", stream=True))

    assert answer.model == "gpt-test"
    assert answer.choices[0].text == expected
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        prompt_tokens,
        completion_tokens,
    )
    assert {c.model for c in chunks} == {"gpt-test"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == stream_text(expected)


def test_it_serves_the_async_sdk_for_chat_and_completions(gateway, model, secret, async_client_for):
    async def run():
        async with async_client_for(secret) as client:
            chat = await client.chat.completions.create(model="gpt-test", messages=HELLO)
            chat_stream = await client.chat.completions.create(
                model="gpt-test", messages=HELLO, stream=True
            )
            chat_chunks = [c async for c in chat_stream]
            completion = await client.completions.create(model="gpt-test", prompt="say hi")
            completion_stream = await client.completions.create(
                model="gpt-test", prompt="say hi", stream=True
            )
            completion_chunks = [c async for c in completion_stream]
        return chat, chat_chunks, completion, completion_chunks

    chat, chat_chunks, completion, completion_chunks = asyncio.run(run())

    assert chat.model == "gpt-test"
    assert chat.choices[0].message.content == HELLO_TEXT
    chat_text = "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices)
    assert chat_text == stream_text(HELLO_TEXT)
    expected = completion_answer("say hi")[0]
    assert completion.choices[0].text == expected
    completion_text = "".join(c.choices[0].text for c in completion_chunks if c.choices)
    assert completion_text == stream_text(expected)
    assert {c.model for c in [*chat_chunks, *completion_chunks]} == {"gpt-test"}


def test_it_serves_langchain_invoke_and_stream(gateway, model, secret):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=gateway.v1, api_key=secret, model="gpt-test", max_retries=0, timeout=10
    )

    answer = llm.invoke("hi")
    streamed = "".join(chunk.content for chunk in llm.stream("hi"))

    expected = chat_answer([{"role": "user", "content": "hi"}])[0]
    assert answer.content == expected
    assert streamed == stream_text(expected)


def curl(gateway, secret, payload):
    """(body, status, content type) of a curl POST of `payload` to /v1/chat/completions."""
    result = subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "-N",
            "--max-time",
            "10",
            "-H",
            f"Authorization: Bearer {secret}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(payload),
            "-w",
            "\n%{http_code} %{content_type}",
            f"{gateway.v1}/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, trailer = result.stdout.rpartition("\n")
    status, _, content_type = trailer.partition(" ")
    return body, int(status), content_type


def test_it_serves_curl_non_stream_and_stream(gateway, model, secret):
    body, status, content_type = curl(gateway, secret, {"model": "gpt-test", "messages": HELLO})
    stream_body, stream_status, stream_type = curl(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert (status, content_type.split(";")[0]) == (200, "application/json")
    assert json.loads(body)["choices"][0]["message"]["content"] == HELLO_TEXT
    assert (stream_status, stream_type.split(";")[0]) == (200, "text/event-stream")
    events = data_events(stream_body.splitlines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == stream_text(HELLO_TEXT)


# --------------------------------------------------------------------------- usage and logs


def test_it_writes_one_log_row_with_the_upstreams_usage_and_cost(
    gateway, upstream, make_model, secret
):
    make_model(price_in=Decimal("0.001"), price_out=Decimal("0.002"))

    response = post(gateway, secret, "/chat/completions", {"model": "gpt-test", "messages": HELLO})

    assert response.status_code == 200
    row = only_log()
    # Rows are stored in request order: once a later request's row is in, no second row came.
    assert httpx.get(f"{gateway.v1}/models", headers=auth(secret)).status_code == 200
    assert [r.path for r in wait_for_logs(2)] == ["/v1/chat/completions", "/v1/models"]
    assert (row.model, row.endpoint, row.path) == ("gpt-test", "stand-in", "/v1/chat/completions")
    assert (row.status, row.outcome, row.stream) == (200, "ok", False)
    assert (row.input_units, row.output_units) == (HELLO_PROMPT_TOKENS, HELLO_COMPLETION_TOKENS)
    assert row.usage_estimated is False
    assert row.cost == (
        HELLO_PROMPT_TOKENS * Decimal("0.001") + HELLO_COMPLETION_TOKENS * Decimal("0.002")
    )
    assert row.attempts == [{"model": "gpt-test", "endpoint": "stand-in", "status": 200}]
    assert (row.prompt_text, row.completion_text) == ("", "")
    assert row.request_id == response.headers["x-request-id"]


def test_it_logs_a_streams_reported_usage_and_time_to_first_token(gateway, make_model, secret):
    make_model(price_in=Decimal("0.5"), price_out=Decimal("0.25"))

    stream_lines(gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True})

    row = only_log()
    assert (row.status, row.outcome, row.stream) == (200, "ok", True)
    assert (row.input_units, row.output_units) == (HELLO_PROMPT_TOKENS, 20)
    assert row.usage_estimated is False
    assert row.cost == HELLO_PROMPT_TOKENS * Decimal("0.5") + 20 * Decimal("0.25")
    assert row.ttft_ms is not None
    assert 0 <= row.ttft_ms <= row.latency_ms


def estimate(text):
    return len(text) / 4


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_it_estimates_usage_when_the_upstream_reports_none(gateway, make_model, secret, stream):
    make_model(upstream_name="echo+nousage", price_in=Decimal("1"), price_out=Decimal("2"))
    messages = [{"role": "user", "content": "please estimate the tokens of this message"}]
    payload = {"model": "gpt-test", "messages": messages, "stream": stream}
    answer = chat_answer(messages)[0]
    received = stream_text(answer) if stream else answer

    if stream:
        response, _ = stream_lines(gateway, secret, payload)
    else:
        response = post(gateway, secret, "/chat/completions", payload)

    assert response.status_code == 200
    row = only_log()
    assert row.usage_estimated is True
    assert row.input_units == pytest.approx(estimate(messages[0]["content"]), abs=1)
    assert row.output_units == pytest.approx(estimate(received), abs=1)
    assert row.input_units > 0 and row.output_units > 0
    assert row.cost == row.input_units * Decimal("1") + row.output_units * Decimal("2")


def test_it_logs_prompt_and_completion_text_only_for_keys_that_log_content(
    gateway, model, secret, content_secret, client_for
):
    logged, unlogged = client_for(content_secret), client_for(secret)
    messages = [{"role": "user", "content": "remember this sentence"}]

    plain = logged.chat.completions.create(model="gpt-test", messages=messages)
    row = only_log()
    chunks = list(logged.chat.completions.create(model="gpt-test", messages=messages, stream=True))
    unlogged.chat.completions.create(model="gpt-test", messages=messages)
    list(unlogged.chat.completions.create(model="gpt-test", messages=messages, stream=True))
    rows = wait_for_logs(4)

    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(rows) == 4
    assert rows[0] == row
    assert "remember this sentence" in row.prompt_text
    assert row.completion_text == plain.choices[0].message.content
    assert "remember this sentence" in rows[1].prompt_text
    assert rows[1].completion_text == streamed
    assert [(r.prompt_text, r.completion_text) for r in rows[2:]] == [("", ""), ("", "")]


def test_it_logs_completion_text_of_a_text_completion_stream(
    gateway, model, content_secret, client_for
):
    client = client_for(content_secret)

    chunks = list(client.completions.create(model="gpt-test", prompt="say hi", stream=True))

    row = only_log()
    assert "say hi" in row.prompt_text
    assert row.completion_text == "".join(c.choices[0].text for c in chunks if c.choices)


def test_it_logs_embedding_usage_with_no_output(gateway, embed_model, secret, client_for):
    client_for(secret).embeddings.create(model="embed-test", input=["one two", "three"])

    row = only_log()
    assert (row.model, row.path, row.outcome) == ("embed-test", "/v1/embeddings", "ok")
    assert (row.input_units, row.output_units, row.usage_estimated) == (3, 0, False)


# --------------------------------------------------------------------------- fallback


def dead_endpoint(make_endpoint):
    """An endpoint whose base URL points at a closed loopback port."""
    return make_endpoint(name="dead", base_url=f"http://127.0.0.1:{closed_port()}/v1")


def failing_model(kind, make_model, make_endpoint, name="gpt-test", **fields):
    """A model whose upstream fails in the way `kind` says, before any byte is answered."""
    if kind == "refused":
        return make_model(name=name, endpoint=dead_endpoint(make_endpoint), **fields)
    if kind == "timeout":
        endpoint = make_endpoint(name="sleepy", first_byte_timeout=0.5)
        return make_model(name=name, upstream_name="echo+silent", endpoint=endpoint, **fields)
    upstream_name = {
        "5xx": "fail=503",
        "500": "fail=500",
        "429": "fail=429",
        "malformed": "echo+malformed",
        "reset": "echo+reset=0",
        "400": "fail=400",
    }[kind]
    return make_model(name=name, upstream_name=upstream_name, **fields)


FALLBACK_CASES = ["refused", "timeout", "5xx", "429", "malformed"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("kind", FALLBACK_CASES)
def test_it_falls_back_when_the_upstream_fails_before_answering(
    gateway, upstream, make_model, make_endpoint, secret, client_for, kind, stream
):
    backup = make_model(name="gpt-backup", upstream_name="echo+backup")
    failing_model(kind, make_model, make_endpoint, fallback=backup)
    client = client_for(secret)

    if stream:
        chunks = list(client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))
        assert {c.model for c in chunks} == {"gpt-test"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == stream_text(HELLO_TEXT)
    else:
        answer = client.chat.completions.create(model="gpt-test", messages=HELLO)
        assert answer.model == "gpt-test"
        assert answer.choices[0].message.content == HELLO_TEXT

    assert upstream.received[-1].model == "echo+backup"
    row = only_log()
    assert (row.model, row.status, row.outcome) == ("gpt-test", 200, "ok")
    assert [a["model"] for a in row.attempts] == ["gpt-test", "gpt-backup"]
    first, second = row.attempts
    assert set(first) <= {"model", "endpoint", "status", "error"}
    assert first.get("error")
    assert first["endpoint"] == {"refused": "dead", "timeout": "sleepy"}.get(kind, "stand-in")
    assert second == {"model": "gpt-backup", "endpoint": "stand-in", "status": 200}
    assert row.endpoint == "stand-in"


def test_it_falls_back_when_a_stream_resets_before_its_first_chunk(
    gateway, upstream, make_model, make_endpoint, secret, client_for
):
    backup = make_model(name="gpt-backup", upstream_name="echo+backup")
    failing_model("reset", make_model, make_endpoint, fallback=backup)
    client = client_for(secret)

    chunks = list(client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stream_text(HELLO_TEXT)
    assert [r.model for r in upstream.received] == ["echo+reset=0", "echo+backup"]
    row = only_log()
    assert (row.model, row.status, row.outcome) == ("gpt-test", 200, "ok")
    assert [a["model"] for a in row.attempts] == ["gpt-test", "gpt-backup"]
    assert row.attempts[0].get("error")


def test_it_counts_the_fallbacks_reported_usage_after_a_stream_reset(
    gateway, make_model, make_endpoint, secret, client_for
):
    backup = make_model(name="gpt-backup", upstream_name="echo")
    failing_model("reset", make_model, make_endpoint, fallback=backup)

    list(client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO, stream=True))

    row = only_log()
    assert row.outcome == "ok"
    assert (row.input_units, row.output_units) == (HELLO_PROMPT_TOKENS, 20)
    assert row.usage_estimated is False


def test_it_follows_a_fallback_chain(gateway, upstream, make_model, secret, client_for):
    third = make_model(name="gpt-c", upstream_name="echo+third")
    second = make_model(name="gpt-b", upstream_name="fail=502", fallback=third)
    make_model(name="gpt-a", upstream_name="fail=503", fallback=second)

    answer = client_for(secret).chat.completions.create(model="gpt-a", messages=HELLO)

    assert answer.model == "gpt-a"
    assert answer.choices[0].message.content == HELLO_TEXT
    assert [r.model for r in upstream.received] == ["fail=503", "fail=502", "echo+third"]
    row = only_log()
    assert (row.model, row.outcome) == ("gpt-a", "ok")
    assert [(a["model"], a.get("status")) for a in row.attempts] == [
        ("gpt-a", 503),
        ("gpt-b", 502),
        ("gpt-c", 200),
    ]


def test_it_stops_a_fallback_loop(gateway, upstream, make_model, secret, client_for):
    first = make_model(name="gpt-a", upstream_name="fail=503+a")
    second = make_model(name="gpt-b", upstream_name="fail=503+b", fallback=first)
    first.fallback = second
    first.save()

    with pytest.raises(openai.InternalServerError) as caught:
        client_for(secret).chat.completions.create(model="gpt-a", messages=HELLO)

    assert caught.value.status_code == 502
    assert_openai_error(caught.value.response.json(), "upstream_error")
    assert_no_internals(caught.value.response.text, upstream)
    assert [r.model for r in upstream.received] == ["fail=503+a", "fail=503+b"]
    row = only_log()
    assert [a["model"] for a in row.attempts] == ["gpt-a", "gpt-b"]
    assert (row.status, row.outcome) == (502, "upstream_error")


def test_it_does_not_fall_back_on_an_upstream_400(
    gateway, upstream, make_model, make_endpoint, secret, client_for
):
    backup = make_model(name="gpt-backup", upstream_name="echo+backup")
    failing_model("400", make_model, make_endpoint, fallback=backup)

    with pytest.raises(openai.BadRequestError):
        client_for(secret).chat.completions.create(model="gpt-test", messages=HELLO)

    assert [r.model for r in upstream.received] == ["fail=400"]


# --------------------------------------------------------------------------- failures


FAILURE_CASES = {
    # kind: (status, code, log outcome, SDK exception)
    "5xx": (502, "upstream_error", "upstream_error", openai.InternalServerError),
    "500": (502, "upstream_error", "upstream_error", openai.InternalServerError),
    "429": (503, "upstream_rate_limited", "upstream_error", openai.InternalServerError),
    "refused": (503, "upstream_unavailable", "upstream_error", openai.InternalServerError),
    "timeout": (504, "upstream_timeout", "upstream_timeout", openai.InternalServerError),
    "malformed": (502, "upstream_error", "upstream_error", openai.InternalServerError),
    "400": (400, "upstream_rejected", "invalid_request", openai.BadRequestError),
}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("kind", list(FAILURE_CASES))
def test_it_answers_an_upstream_failure_without_fallback_as_an_openai_error(
    gateway, upstream, make_model, make_endpoint, secret, client_for, kind, stream
):
    status, code, outcome, exception = FAILURE_CASES[kind]
    model = failing_model(kind, make_model, make_endpoint)
    client = client_for(secret)

    with pytest.raises(exception) as caught:
        client.chat.completions.create(model="gpt-test", messages=HELLO, stream=stream)

    error = caught.value
    assert error.status_code == status
    assert error.response.headers["content-type"].startswith("application/json")
    assert_openai_error(error.response.json(), code)
    assert_no_internals(error.response.text, upstream, model.endpoint.base_url)
    if kind == "400":
        assert "upstream says 400" in error.response.json()["error"]["message"]
    row = only_log()
    assert (row.model, row.status, row.outcome) == ("gpt-test", status, outcome)
    assert [a["model"] for a in row.attempts] == ["gpt-test"]
    assert_no_internals(row.error, upstream, model.endpoint.base_url)
    assert len(upstream.received) == (0 if kind == "refused" else 1)
    if kind == "timeout":  # the gateway gave up on the silent upstream: it hung up
        assert upstream.received[0].wait_done(2)
        assert upstream.received[0].closed_early


@pytest.mark.parametrize("upstream_name", ["echo+reset=5", "echo+noDone"], ids=["reset", "no-done"])
def test_it_ends_a_stream_that_breaks_midway_with_an_error_event_and_no_done(
    gateway, upstream, make_model, secret, upstream_name
):
    make_model(upstream_name=upstream_name)

    response, lines = stream_lines(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert response.status_code == 200
    events = data_events(lines)
    assert "[DONE]" not in events
    *chunks, last = [json.loads(e) for e in events]
    assert chunks and all(c["model"] == "gpt-test" for c in chunks)
    if upstream_name == "echo+reset=5":
        assert len(chunks) == 5
    assert_openai_error(last, "upstream_error")
    assert_no_internals("\n".join(lines), upstream)
    row = only_log()
    assert (row.status, row.outcome, row.stream) == (502, "upstream_error", True)


def test_it_ends_a_stream_that_goes_idle_with_an_error_event_and_hangs_up_upstream(
    gateway, upstream, make_endpoint, make_model, secret
):
    endpoint = make_endpoint(name="impatient", idle_timeout=0.2)
    make_model(upstream_name="echo+gap=0.6+chunks=3", endpoint=endpoint)

    response, lines = stream_lines(
        gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
    )

    assert response.status_code == 200
    events = data_events(lines)
    assert "[DONE]" not in events
    *chunks, last = [json.loads(e) for e in events]
    assert len(chunks) == 1
    assert set(last) == {"error"} and set(last["error"]) == ERROR_FIELDS
    assert_no_internals("\n".join(lines), upstream)
    assert upstream.received[-1].wait_done(2)
    assert upstream.received[-1].closed_early
    row = only_log()
    assert row.outcome != "ok" and row.status >= 500


def test_the_sdk_raises_on_a_stream_that_breaks_midway(gateway, make_model, secret, client_for):
    make_model(upstream_name="echo+reset=5")
    seen = []

    with pytest.raises(openai.APIError):
        for chunk in client_for(secret).chat.completions.create(
            model="gpt-test", messages=HELLO, stream=True
        ):
            seen.append(chunk)

    assert len(seen) == 5


# --------------------------------------------------------------------------- client disconnect


def test_it_closes_the_upstream_stream_when_the_client_leaves(
    gateway, upstream, make_model, secret
):
    make_model(upstream_name="echo+gap=0.3+chunks=20")
    payload = {"model": "gpt-test", "messages": HELLO, "stream": True}

    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", f"{gateway.v1}/chat/completions", json=payload, headers=auth(secret)
        ) as response,
    ):
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 2:
                break
    left = time.monotonic()

    record = upstream.wait_for_requests(1)[-1]
    assert record.wait_done(5)
    assert record.closed_early
    assert record.closed_at - left < 1.0
    row = only_log()
    assert (row.outcome, row.status, row.stream) == ("client_disconnected", 499, True)
    assert row.output_units > 0


def test_it_closes_the_upstream_request_when_a_waiting_client_leaves(
    gateway, upstream, make_model, secret
):
    make_model(upstream_name="echo+slow=3")
    body = json.dumps({"model": "gpt-test", "messages": HELLO}).encode()
    host, port = gateway.base_url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            + f"Host: {host}\r\nAuthorization: Bearer {secret}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        upstream.wait_for_requests(1)
        time.sleep(0.2)
    left = time.monotonic()

    record = upstream.received[-1]
    assert record.wait_done(5)
    assert record.closed_early
    assert record.closed_at - left < 1.0
    row = only_log()
    assert (row.outcome, row.status, row.stream) == ("client_disconnected", 499, False)


# ------------------------------------------------------------- answers not shaped like OpenAI's


class FixedUpstream:
    """A raw HTTP upstream that answers every request with the same status, type and body."""

    def __init__(self, body: bytes, content_type: bytes = b"application/json"):
        self.response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                conn.sendall(self.response)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'{"choices": [{"message": "not an object"}]}', b'"just a string"'],
)
def test_it_answers_502_to_json_that_is_not_an_openai_answer(
    gateway, make_endpoint, make_model, secret, body
):
    fixed = FixedUpstream(body)
    try:
        make_model(upstream_name="odd", endpoint=make_endpoint(name="odd", base_url=fixed.base_url))
        response = post(
            gateway, secret, "/chat/completions", {"model": "gpt-test", "messages": HELLO}
        )
    finally:
        fixed.close()

    assert response.status_code == 502
    assert_openai_error(response.json(), "upstream_error")
    assert wait_for_logs()[0].outcome == "upstream_error"


def test_it_ends_a_stream_whose_chunk_is_not_shaped_like_openais_with_an_error_event(
    gateway, make_endpoint, make_model, secret
):
    good = {"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}
    bad = {"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": "oops"}]}
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in (good, bad))
    fixed = FixedUpstream(body + b"data: [DONE]\n\n", b"text/event-stream")
    try:
        make_model(upstream_name="odd", endpoint=make_endpoint(name="odd", base_url=fixed.base_url))
        response, lines = stream_lines(
            gateway, secret, {"model": "gpt-test", "messages": HELLO, "stream": True}
        )
    finally:
        fixed.close()

    events = data_events(lines)
    assert response.status_code == 200
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    assert "error" in json.loads(events[-1])
    assert "[DONE]" not in events
    assert wait_for_logs()[0].outcome == "upstream_error"

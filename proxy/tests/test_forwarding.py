"""Live contract tests of forwarding: real clients and real HTTP, over a served gateway.

Every test drives the real gateway (uvicorn in a thread) against the upstream stand-in on
loopback: what only a real server shows (the SDKs, LangChain and curl as clients, the
headers that go upstream, a disconnect over TCP, the log row stored). The rules themselves
are tested in process: test_pipeline.py, test_forwarding_rules.py, test_relay.py.
"""

import asyncio
import json
import socket
import subprocess
import threading
import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest

from aethergate.testing import wait_for_logs
from proxy.tests.conftest import UPSTREAM_API_KEY
from proxy.tests.fakes import without_upstream_ids
from proxy.tests.test_pipeline import PASSTHROUGH
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
def model(make_model):
    """`gpt-test` → `echo` on the stand-in."""
    return make_model()


# --------------------------------------------------------------------------- routing


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


def test_it_sends_a_fresh_uuid_request_id_upstream_and_logs_it_with_the_attempt(
    gateway, upstream, model, secret, client_for
):
    # As llama-cpp-python's server, the stand-in answers 400 to a request id that is
    # not a UUID; the client's own id (any string) must never be what goes upstream.
    raw = client_for(secret).chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, extra_headers={"X-Request-ID": "client-chosen-id"}
    )

    assert raw.http_response.status_code == 200
    sent = [r.headers["x-request-id"] for r in upstream.received]
    assert len(sent) == 1 and str(uuid.UUID(sent[0])) == sent[0]
    row = only_log()
    assert row.request_id == raw.headers["x-request-id"] != sent[0]
    assert [a["upstream_request_id"] for a in row.attempts] == sent


def test_each_attempt_gets_its_own_upstream_request_id(gateway, upstream, make_model, secret):
    fallback = make_model("backup", upstream_name="echo")
    make_model("gpt-test", upstream_name="fail=503", fallback=fallback)

    assert (
        post(
            gateway, secret, "/chat/completions", {"model": "gpt-test", "messages": HELLO}
        ).status_code
        == 200
    )

    sent = [r.headers["x-request-id"] for r in upstream.received]
    assert len(sent) == 2 and len(set(sent)) == 2
    assert [a["upstream_request_id"] for a in only_log().attempts] == sent


# --------------------------------------------------------------------------- pass-through


def test_it_passes_the_sdks_fields_and_extra_body_through(
    gateway, upstream, make_model, make_endpoint, secret, client_for
):
    # OpenAI itself: the dialect that changes nothing (proxy/dialects.py).
    make_model(endpoint=make_endpoint(kind="openai"))
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


# --------------------------------------------------------------------------- streaming


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
    assert without_upstream_ids(row.attempts) == [
        {"model": "gpt-test", "endpoint": "stand-in", "deployment": "stand-in/echo", "status": 200}
    ]
    assert (row.prompt_text, row.completion_text) == ("", "")
    assert row.request_id == response.headers["x-request-id"]


# --------------------------------------------------------------------------- failures


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

"""Live tests against a real upstream: llama-cpp-python's server, on a tiny generated model.

What only a real server shows: what it accepts and answers (its request-id check, its usage,
its streams without usage, its errors), and that AetherGate in front of it gives the OpenAI
SDKs, LangChain and curl what they expect. The server (proxy/tests/llamacpp.py) runs once
per session; the model's weights are seeded noise, so its text means nothing, but greedy
decoding (temperature 0) makes it the same on every call: what the client gets through the
gateway is compared with what the server answers to the same request directly. Without
.venv-llama these tests skip (`make llama` makes it), except in CI (AETHERGATE_REQUIRE_LLAMA=1).
"""

import asyncio
import base64
import json
import re
import socket
import struct
import subprocess
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from aethergate import testing
from aethergate.lib.capabilities import Capability
from aethergate.testing import wait_for, wait_for_logs
from models_registry.models import Model
from proxy.tests.llamacpp import CHAT_MODEL, EMBED_MODEL, N_CTX, TOOLS_MODEL

pytestmark = pytest.mark.llama

# Public names differ from the server's aliases: llama-cpp-python echoes whatever `model` it
# is sent, so only then does an answer show whose name the gateway put in it.
CHAT = "local-chat"
EMBED = "local-embed"
TOOLS = "local-tools"
HELLO = [{"role": "user", "content": "hi there"}]
MAX_TOKENS = 6
GREEDY = {"max_tokens": MAX_TOKENS, "temperature": 0}
TIMEOUT = 30
CURL = Path("/usr/bin/curl")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now, in the unit asked for.",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
        },
    },
}
# uvicorn's access log line for each request the server answered.
ACCESS_LINE = re.compile(r'"(GET|POST) (/v1/[a-z/]+) HTTP/1\.1" (\d{3})')


# --------------------------------------------------------------------------- helpers


def serve(llama_server) -> str:
    """The three models on an endpoint at the real server, and a consumer's key to them."""
    endpoint = testing.make_endpoint("llama-cpp-python", llama_server.v1, kind="llama_cpp_python")
    testing.make_model(CHAT, CHAT_MODEL, endpoint, capability=Capability.TEXT)
    testing.make_model(EMBED, EMBED_MODEL, endpoint, capability=Capability.EMBEDDING)
    testing.make_model(TOOLS, TOOLS_MODEL, endpoint, capability=Capability.TEXT)
    return testing.make_key(testing.make_user())[1]


@pytest.fixture
def secret(transactional_db, llama_server):
    """The key of a consumer, and the three models on an endpoint at the real server."""
    return serve(llama_server)


@pytest.fixture
def direct(llama_server):
    """An httpx client on the real server's /v1, as a client without the gateway would be."""
    with httpx.Client(base_url=llama_server.v1, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def sdk(gateway, secret):
    """`openai.OpenAI` on the gateway, with the consumer's key."""
    with openai.OpenAI(
        base_url=gateway.v1, api_key=secret, max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


def auth(secret):
    return {"Authorization": f"Bearer {secret}"}


def answered(llama_server) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request the real server answered so far, in order."""
    return [
        (method, path, int(status))
        for method, path, status in ACCESS_LINE.findall(llama_server.log_text())
    ]


def upstream_chat(direct, messages=HELLO, **fields) -> dict:
    """The real server's own answer to a greedy chat request (what the gateway must relay)."""
    response = direct.post(
        "/chat/completions", json={"model": CHAT_MODEL, "messages": messages, **GREEDY, **fields}
    )
    assert response.status_code == 200, response.text
    return response.json()


def upstream_text(direct, messages=HELLO) -> str:
    return upstream_chat(direct, messages)["choices"][0]["message"]["content"]


def upstream_vectors(direct, inputs) -> list[list[float]]:
    response = direct.post("/embeddings", json={"model": EMBED_MODEL, "input": inputs})
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


def data_events(lines) -> list[str]:
    """The `data:` payloads among SSE lines, in order."""
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def stream_lines(url, payload, headers=None) -> tuple[httpx.Response, list[str]]:
    """(response, every line) of a streamed POST, read to the end."""
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream("POST", url, json=payload, headers=headers) as response,
    ):
        lines = list(response.iter_lines())
    return response, lines


def unpack_float32(raw: bytes) -> list[float]:
    """The little-endian float32 numbers in `raw` (OpenAI's base64 embeddings, decoded)."""
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def float32(vector) -> list[float]:
    """`vector` rounded to float32, as the gateway's base64 carries it."""
    return unpack_float32(struct.pack(f"<{len(vector)}f", *vector))


def assert_chat_answer(body: dict, model: str = CHAT):
    """An OpenAI chat completion with the public model name, usage and an assistant message."""
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == model
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# --------------------------------------------------------------------------- the server itself


def test_it_shows_what_the_real_server_accepts_and_answers_directly(llama_server, direct):
    payload = {"model": CHAT_MODEL, "messages": HELLO, **GREEDY}

    with_uuid = direct.post(
        "/chat/completions", json=payload, headers={"X-Request-ID": uuid.uuid4().hex}
    )
    with_other_id = direct.post(
        "/chat/completions", json=payload, headers={"X-Request-ID": "req_0123456789abcdef"}
    )
    unknown_alias = direct.post("/chat/completions", json={**payload, "model": "no-such-model"})
    _, stream = stream_lines(
        f"{llama_server.v1}/chat/completions",
        {**payload, "stream": True, "stream_options": {"include_usage": True}},
    )
    as_base64 = direct.post(
        "/embeddings", json={"model": EMBED_MODEL, "input": "hi", "encoding_format": "base64"}
    )
    completion_cap = direct.post(
        "/chat/completions",
        json={"model": CHAT_MODEL, "messages": HELLO, "max_completion_tokens": MAX_TOKENS},
    )

    assert with_uuid.status_code == 200
    body = with_uuid.json()
    # It echoes the model it was sent, and counts usage on whole answers.
    assert (body["model"], body["choices"][0]["finish_reason"]) == (CHAT_MODEL, "length")
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    # Its request-id check (starlette-context): anything but a UUID is a bare 400.
    assert (with_other_id.status_code, with_other_id.content) == (400, b"")
    # An alias it does not serve silently gets its first model.
    assert unknown_alias.status_code == 200
    assert unknown_alias.json()["choices"] == body["choices"]
    # No usage in streams, include_usage or not: the gateway must make it up.
    chunks = [json.loads(event) for event in data_events(stream)[:-1]]
    assert data_events(stream)[-1] == "[DONE]"
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    # And floats for base64: the gateway must encode them.
    assert isinstance(as_base64.json()["data"][0]["embedding"], list)
    # max_completion_tokens is not one of its fields: it writes until the context is full.
    assert completion_cap.json()["usage"]["total_tokens"] == N_CTX


# --------------------------------------------------------------------------- chat


def test_it_relays_a_chat_completion_to_the_sync_sdk(llama_server, direct, sdk):
    before = len(answered(llama_server))

    raw = sdk.chat.completions.with_raw_response.create(model=CHAT, messages=HELLO, **GREEDY)

    assert raw.http_response.status_code == 200
    completion = raw.parse()
    assert_chat_answer(completion.model_dump())
    expected = upstream_chat(direct)
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
        "prompt_tokens": expected["usage"]["prompt_tokens"],
        "completion_tokens": expected["usage"]["completion_tokens"],
    }
    # One request reached the server for the gateway's call (and one for ours, above).
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 200)] * 2
    row = wait_for_logs(1)[0]
    assert (row.model, row.status, row.outcome, row.usage_estimated) == (CHAT, 200, "ok", False)
    assert (row.input_units, row.output_units) == (
        expected["usage"]["prompt_tokens"],
        expected["usage"]["completion_tokens"],
    )


def test_a_repeated_prompt_is_recorded_without_cached_tokens_as_the_server_reports_none(
    direct, sdk
):
    # llama-cpp-python reuses its KV cache for a repeated prefix, but its usage has only
    # the three totals (llama_types.CompletionUsage): no prompt_tokens_details, no timings.
    expected = upstream_chat(direct)
    assert set(expected["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}

    for _ in range(2):
        sdk.chat.completions.create(model=CHAT, messages=HELLO, **GREEDY)

    rows = wait_for_logs(2)
    for row in rows:
        assert (row.input_units, row.cache_read_units, row.cache_write_units) == (
            expected["usage"]["prompt_tokens"], 0, 0,
        )  # fmt: skip
        assert (row.output_units, row.reasoning_units) == (
            expected["usage"]["completion_tokens"],
            0,
        )
        # The fixture's models have no prices: logged as such, not as free.
        assert (row.cost, row.cost_unknown) == (0, True)


def test_it_holds_the_server_to_max_completion_tokens(direct, sdk):
    # The SDKs' current name for max_tokens (LangChain sends only it); llama-cpp-python
    # knows only max_tokens, and without one writes until its context is full.
    expected = upstream_chat(direct)

    completion = sdk.chat.completions.create(
        model=CHAT, messages=HELLO, max_completion_tokens=MAX_TOKENS, temperature=0
    )

    assert completion.usage.completion_tokens == MAX_TOKENS
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]


def test_it_streams_a_chat_completion_without_usage_unless_asked(direct, sdk):
    expected = upstream_text(direct)

    stream = sdk.chat.completions.create(model=CHAT, messages=HELLO, stream=True, **GREEDY)
    chunks = list(stream)

    assert {chunk.model for chunk in chunks} == {CHAT}
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in chunks)


def test_it_ends_a_stream_with_a_usage_chunk_when_asked(gateway, secret, direct):
    expected = upstream_chat(direct)

    response, lines = stream_lines(
        f"{gateway.v1}/chat/completions",
        {
            "model": CHAT,
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
            **GREEDY,
        },
        auth(secret),
    )

    assert response.status_code == 200
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected["choices"][0]["message"]["content"]
    # As OpenAI: the last chunk has no choices and the usage; the others no usage (or null).
    *content_chunks, last = chunks
    assert last["choices"] == []
    assert last["model"] == CHAT
    assert last["usage"]["prompt_tokens"] > 0
    assert last["usage"]["completion_tokens"] > 0
    assert (
        last["usage"]["total_tokens"]
        == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(c.get("usage") is None and c["choices"] for c in content_chunks)
    # The server counted nothing: the numbers are the gateway's estimate, and say so.
    row = wait_for_logs(1)[0]
    assert (row.outcome, row.usage_estimated) == ("ok", True)
    assert (row.input_units, row.output_units) == (
        last["usage"]["prompt_tokens"],
        last["usage"]["completion_tokens"],
    )


def test_it_serves_the_async_sdk_chat_stream_and_embeddings(gateway, secret, direct):
    expected_text = upstream_text(direct)
    expected_vectors = upstream_vectors(direct, ["hi", "there"])

    async def run():
        async with openai.AsyncOpenAI(
            base_url=gateway.v1, api_key=secret, max_retries=0, timeout=TIMEOUT
        ) as client:
            chat = await client.chat.completions.create(model=CHAT, messages=HELLO, **GREEDY)
            stream = await client.chat.completions.create(
                model=CHAT, messages=HELLO, stream=True, **GREEDY
            )
            chunks = [chunk async for chunk in stream]
            embeddings = await client.embeddings.create(model=EMBED, input=["hi", "there"])
        return chat, chunks, embeddings

    chat, chunks, embeddings = asyncio.run(run())

    assert_chat_answer(chat.model_dump())
    assert chat.choices[0].message.content == expected_text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text
    assert {c.model for c in chunks} == {CHAT}
    assert embeddings.model == EMBED
    assert [item.embedding for item in embeddings.data] == [float32(v) for v in expected_vectors]


def test_it_serves_langchain_invoke_and_stream(gateway, secret, direct):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=gateway.v1,
        api_key=secret,
        model=CHAT,
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=TIMEOUT,
    )
    expected = upstream_text(direct, [{"role": "user", "content": "hi"}])

    answer = llm.invoke("hi")
    streamed = "".join(chunk.content for chunk in llm.stream("hi"))

    assert answer.content == expected
    assert answer.response_metadata["model_name"] == CHAT
    assert answer.usage_metadata["output_tokens"] == MAX_TOKENS
    assert streamed == expected


def curl(url, secret, payload) -> tuple[str, int, str]:
    """(body, status, content type) of a curl POST of `payload` as JSON to `url`."""
    result = subprocess.run(
        [
            str(CURL),
            "-sS",
            "-N",
            "--max-time",
            str(TIMEOUT),
            "-H",
            f"Authorization: Bearer {secret}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(payload),
            "-w",
            "\n%{http_code} %{content_type}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, trailer = result.stdout.rpartition("\n")
    status, _, content_type = trailer.partition(" ")
    return body, int(status), content_type


@pytest.mark.skipif(not CURL.exists(), reason=f"{CURL} not found")
def test_it_serves_curl_non_stream_and_stream(gateway, secret, direct):
    expected = upstream_text(direct)
    url = f"{gateway.v1}/chat/completions"

    body, status, content_type = curl(url, secret, {"model": CHAT, "messages": HELLO, **GREEDY})
    stream_body, stream_status, stream_type = curl(
        url, secret, {"model": CHAT, "messages": HELLO, "stream": True, **GREEDY}
    )

    assert (status, content_type.split(";")[0]) == (200, "application/json")
    answer = json.loads(body)
    assert_chat_answer(answer)
    assert answer["choices"][0]["message"]["content"] == expected
    assert (stream_status, stream_type.split(";")[0]) == (200, "text/event-stream")
    events = data_events(stream_body.splitlines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["model"] for chunk in chunks} == {CHAT}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected


# --------------------------------------------------------------------------- its dialect


def test_it_adapts_messages_the_server_would_fail_on(gateway, secret, direct):
    # A `developer` message (the SDKs' new system role) and an assistant turn without text:
    # llama-cpp-python's request schema has neither, and answers 500 to both.
    conversations = {
        "developer": [{"role": "developer", "content": "Be brief."}, *HELLO],
        "null content": [*HELLO, {"role": "assistant", "content": None}, *HELLO],
    }

    for name, messages in conversations.items():
        refused = direct.post(
            "/chat/completions", json={"model": CHAT_MODEL, "messages": messages, **GREEDY}
        )
        response = httpx.post(
            f"{gateway.v1}/chat/completions",
            json={"model": CHAT, "messages": messages, **GREEDY},
            headers=auth(secret),
            timeout=TIMEOUT,
        )

        assert refused.status_code == 500, name
        assert "validation error" in refused.json()["error"]["message"], name
        assert response.status_code == 200, (name, response.text)
        assert_chat_answer(response.json())


def test_it_sends_text_parts_as_the_plain_text_the_server_takes(gateway, secret, direct):
    # OpenAI takes every role's content as an array of text parts (SDKs and LangChain send
    # them); llama-cpp-python takes parts for user messages only, and a GGUF chat template
    # that joins strings fails on them even there (a 500). Text parts are the same text.
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "text", "text": "Again."}]},
    ]
    plain = [
        {**message, "content": "".join(p["text"] for p in message["content"])} for message in parts
    ]
    expected = upstream_chat(direct, plain)

    response = httpx.post(
        f"{gateway.v1}/chat/completions",
        json={"model": CHAT, "messages": parts, **GREEDY},
        headers=auth(secret),
        timeout=TIMEOUT,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert_chat_answer(body)
    assert body["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]


def test_it_refuses_what_the_server_cannot_do_before_calling_it(gateway, secret, llama_server):
    # The server would answer these wrongly (one choice for n=2, vectors of its own size
    # whatever `dimensions` says) or fail with a 500 (json_schema, token arrays).
    refused = {
        "n": ("/chat/completions", {"model": CHAT, "messages": HELLO, "n": 2, **GREEDY}),
        "response_format": (
            "/chat/completions",
            {
                "model": CHAT,
                "messages": HELLO,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": {"type": "object"}},
                },
                **GREEDY,
            },
        ),
        "dimensions": ("/embeddings", {"model": EMBED, "input": "hi", "dimensions": 8}),
        "input": ("/embeddings", {"model": EMBED, "input": [[1, 2, 3]]}),
    }
    before = len(answered(llama_server))

    for param, (path, payload) in refused.items():
        response = httpx.post(
            f"{gateway.v1}{path}", json=payload, headers=auth(secret), timeout=TIMEOUT
        )

        assert response.status_code == 400, (param, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("unsupported_parameter", param)
        assert "llama_cpp_python" in error["message"]
    assert answered(llama_server)[before:] == []


def test_it_serves_the_server_as_a_generic_endpoint_too(gateway, secret, llama_server, direct):
    # An operator who left the endpoint's kind at its default: what any server gets must
    # be enough for the everyday calls (LangChain's max_completion_tokens, a usage chunk).
    from langchain_openai import ChatOpenAI

    generic = testing.make_endpoint("generic", llama_server.v1)
    testing.make_model("generic-chat", CHAT_MODEL, generic, capability=Capability.TEXT)

    llm = ChatOpenAI(
        base_url=gateway.v1,
        api_key=secret,
        model="generic-chat",
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=TIMEOUT,
        stream_usage=True,
    )
    expected = upstream_text(direct, [{"role": "user", "content": "hi"}])

    answer = llm.invoke("hi")
    chunks = list(llm.stream("hi"))

    assert answer.content == expected
    assert answer.response_metadata["model_name"] == "generic-chat"
    assert "".join(chunk.content for chunk in chunks) == expected
    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0


# --------------------------------------------------------------------------- embeddings


def test_it_answers_embeddings_as_floats_and_as_base64_of_the_same_vectors(gateway, secret, direct):
    expected = upstream_vectors(direct, ["hi", "there"])
    url = f"{gateway.v1}/embeddings"
    payload = {"model": EMBED, "input": ["hi", "there"]}

    as_floats = httpx.post(url, json=payload, headers=auth(secret), timeout=TIMEOUT)
    as_base64 = httpx.post(
        url, json={**payload, "encoding_format": "base64"}, headers=auth(secret), timeout=TIMEOUT
    )

    assert as_floats.status_code == 200
    floats = as_floats.json()
    assert (floats["object"], floats["model"]) == ("list", EMBED)
    assert floats["usage"]["prompt_tokens"] > 0
    assert [item["embedding"] for item in floats["data"]] == expected
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert as_base64.status_code == 200
    encoded = [item["embedding"] for item in as_base64.json()["data"]]
    assert all(isinstance(vector, str) for vector in encoded)
    decoded = [unpack_float32(base64.b64decode(vector)) for vector in encoded]
    assert decoded == [float32(vector) for vector in expected]
    assert {len(vector) for vector in decoded} == {64}


def test_it_gives_the_sdk_the_same_vectors_with_its_default_base64(sdk, direct):
    expected = upstream_vectors(direct, ["hi"])

    default = sdk.embeddings.create(model=EMBED, input="hi")  # the SDK asks for base64
    floats = sdk.embeddings.create(model=EMBED, input="hi", encoding_format="float")

    assert default.data[0].embedding == float32(expected[0])
    assert floats.data[0].embedding == expected[0]


# --------------------------------------------------------------------------- tools


def test_it_relays_a_tool_call_forced_by_a_named_tool_choice(sdk):
    completion = sdk.chat.completions.create(
        model=TOOLS,
        messages=[{"role": "user", "content": "What is the weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=30,
        temperature=0,
    )

    assert completion.model == TOOLS
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name) == ("function", "get_weather")
    # The grammar made from the schema holds the noise to it: a valid unit, nothing else.
    assert json.loads(call.function.arguments) in ({"unit": "celsius"}, {"unit": "fahrenheit"})


# --------------------------------------------------------------------------- errors


def test_it_answers_404_for_an_unknown_model_without_calling_the_server(
    gateway, secret, llama_server, direct
):
    before = len(answered(llama_server))

    response = httpx.post(
        f"{gateway.v1}/chat/completions",
        json={"model": "no-such-model", "messages": HELLO, **GREEDY},
        headers=auth(secret),
        timeout=TIMEOUT,
    )
    # A request of ours after it: once the server logged it, it would have logged the other.
    upstream_text(direct)

    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "no-such-model" in error["message"]
    wait_for(lambda: len(answered(llama_server)) > before, TIMEOUT, what="the server's log")
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 200)]


def test_it_answers_400_with_the_servers_reason_for_a_prompt_over_the_context(sdk, llama_server):
    long_prompt = [{"role": "user", "content": "hello " * N_CTX}]
    before = len(answered(llama_server))

    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=CHAT, messages=long_prompt, **GREEDY)

    assert raised.value.status_code == 400
    message = raised.value.body["message"]
    assert f"maximum context length is {N_CTX} tokens" in message
    assert raised.value.body["type"] == "invalid_request_error"
    # The server saw it and said no: the gateway neither retried nor called it a failure.
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 400)]
    row = wait_for_logs(1)[0]
    assert (row.status, row.outcome) == (400, "invalid_request")


def test_it_answers_502_for_a_streamed_prompt_over_the_context_and_serves_the_next(
    gateway, secret, llama_server, direct
):
    # The server checks the context only once its stream began: a 200, then the connection
    # closes with no event at all. Nothing says why, so this cannot be the 400 above.
    long_prompt = [{"role": "user", "content": "hello " * N_CTX}]
    expected = upstream_text(direct)
    before = len(answered(llama_server))

    response, lines = stream_lines(
        f"{gateway.v1}/chat/completions",
        {"model": CHAT, "messages": long_prompt, "stream": True, **GREEDY},
        auth(secret),
    )
    after = httpx.post(
        f"{gateway.v1}/chat/completions",
        json={"model": CHAT, "messages": HELLO, **GREEDY},
        headers=auth(secret),
        timeout=TIMEOUT,
    )

    # An error before any byte was relayed, never an empty stream passed off as an answer.
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    error = json.loads("".join(lines))["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
    assert CHAT in error["message"]
    # The broken connection is not reused: the next request is answered.
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"]["content"] == expected
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 200)] * 2
    assert [row.outcome for row in wait_for_logs(2)] == ["upstream_error", "ok"]


def test_a_prompt_over_the_real_servers_context_goes_to_the_context_fallback(
    sdk, llama_server, upstream
):
    # The stand-in plays a model with a longer context; the real server's own refusal
    # ("… maximum context length is N tokens …") is what sends the request there.
    roomy = testing.make_endpoint("roomy", upstream.base_url)
    longer = testing.make_model("long-context", "echo", roomy)
    Model.objects.filter(name=CHAT).update(context_fallback=longer)
    long_prompt = [{"role": "user", "content": "hello " * N_CTX}]
    before = len(answered(llama_server))

    answer = sdk.chat.completions.create(model=CHAT, messages=long_prompt, **GREEDY)

    assert answer.model == CHAT
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 400)]
    (sent,) = upstream.received
    assert (sent.path, sent.json["model"]) == ("/v1/chat/completions", "echo")
    row = wait_for_logs(1)[0]
    assert (row.status, row.outcome) == (200, "ok")
    assert [(a["model"], a["status"]) for a in row.attempts] == [(CHAT, 400), ("long-context", 200)]


def test_a_dead_replica_beside_the_real_server_is_opened_and_every_request_answered(
    sdk, llama_server, direct
):
    # A second deployment of the chat model on a port nothing listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = testing.make_endpoint("dead", f"http://127.0.0.1:{dead_port}/v1")
    testing.deploy(Model.objects.get(name=CHAT), dead, CHAT_MODEL)
    expected = upstream_text(direct)
    before = len(answered(llama_server))

    texts = [
        sdk.chat.completions.create(model=CHAT, messages=HELLO, **GREEDY).choices[0].message.content
        for _ in range(16)
    ]

    assert texts == [expected] * 16
    assert answered(llama_server)[before:] == [("POST", "/v1/chat/completions", 200)] * 16
    rows = wait_for_logs(16)
    refused = [a for row in rows for a in row.attempts if a.get("error")]
    assert {a["deployment"] for a in refused} == {f"dead/{CHAT_MODEL}"}
    # Five failures in a row open it; then it gets none (one probe, if this took 5 s).
    assert 1 <= len(refused) <= 6

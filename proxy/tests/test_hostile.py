"""Hostile callers and careless upstreams at `/v1`: refused with clear errors, never a 500.

Client input that the gateway cannot forward safely is a 400 before anything is
spent (no upstream call, no rate-limit hit); an upstream answer that is not the
operation's answer is an upstream error, never relayed as success nor billed;
the HTTP server bounds headers and stalled bodies; invalid-key floods and
overload get fast refusals. Each test runs the real gateway and observes it from
outside.
"""

import asyncio
import gzip
import http.client as http_client
import json
import socket
import time
from decimal import Decimal

import httpx
import pytest
from aiohttp import web

from aethergate.testing import FakeClock, wait_for_logs
from endpoints.models import Endpoint
from proxy.app import Exchange, proxy, send_error
from proxy.errors import APIError
from proxy.tests.scripted import ScriptedUpstream
from proxy.tests.test_admission import (
    CHAT_PATH,
    MESSAGES,
    bearer,
    error_of,
    settle_logs,
)
from proxy.throttle import InvalidKeyThrottle
from proxy.validation import check_body

MB = 1024 * 1024
# The upstream silence a stream is cut for, shortened so that a slow client's wait is short.
IDLE_SECONDS = 1.0


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def scripted():
    with ScriptedUpstream() as server:
        yield server


@pytest.fixture
def on_scripted(scripted, make_endpoint, make_model, make_key):
    """A prepaid key on a priced model whose upstream is the scripted one: `(secret, user)`."""
    endpoint = make_endpoint(name="scripted", base_url=scripted.base_url, idle_timeout=2.0)
    make_model(name="gpt-test", endpoint=endpoint, price_in=Decimal("1"), price_out=Decimal("1"))
    key, secret = make_key()
    key.owner.balance = Decimal("100")
    key.owner.save()
    return secret, key.owner


def post_raw(http, secret, content: bytes, headers=None) -> httpx.Response:
    headers = {**bearer(secret), "content-type": "application/json", **(headers or {})}
    return http.post(CHAT_PATH, content=content, headers=headers)


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


# --------------------------------------------------------------------------- client input

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
def test_it_refuses_hostile_bodies_with_400_before_anything_is_spent(
    http, upstream, make_model, make_key, name, stream
):
    # An upstream that reports no usage: estimating it used to read `messages` and fail.
    make_model(upstream_name="echo+nousage", rpm_limit=1)
    _, secret = make_key()
    body, code = HOSTILE_BODIES[name]
    if stream and body.startswith("{") and '"stream"' not in body:
        body = body[:-1] + ', "stream": true}'

    response = post_raw(http, secret, body.encode())

    error = error_of(response, 400, code)
    assert "\\ud800" not in error["message"] and "NaN" not in error["message"]
    assert upstream.received == []
    # Nothing was spent: the model's one request a minute is still there.
    ok = http.post(
        CHAT_PATH, json={"model": "gpt-test", "messages": MESSAGES}, headers=bearer(secret)
    )
    assert ok.status_code == 200, ok.text
    assert [r.status for r in settle_logs(http, secret)] == [400, 200, 200]


def test_it_refuses_a_request_with_two_authorization_headers(gateway, make_model, make_key):
    make_model()
    _, secret = make_key()
    host, port = gateway.base_url.removeprefix("http://").split(":")
    connection = http_client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"model": "gpt-test", "messages": MESSAGES})
    connection.putrequest("POST", CHAT_PATH)
    connection.putheader("Authorization", f"Bearer {secret}")
    connection.putheader("Authorization", "Bearer ag-someone-else")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body.encode())
    response = connection.getresponse()

    assert response.status == 400
    assert json.loads(response.read())["error"]["code"] == "duplicate_authorization"
    connection.close()


def test_a_body_fit_to_forward_has_its_routing_fields_removed_outside_model_data():
    payload = {
        "model": "m",
        "api_base": "http://evil",
        "extra": {"headers": {"x": "y"}, "keep": [{"base_url": "b", "n": 1}]},
        "messages": [{"role": "user", "content": "hi", "api_key": "stays: model data"}],
    }

    check_body(payload, stream_allowed=True)

    assert payload == {
        "model": "m",
        "extra": {"keep": [{"n": 1}]},
        "messages": [{"role": "user", "content": "hi", "api_key": "stays: model data"}],
    }


# --------------------------------------------------------------------------- the HTTP server


def raw_exchange(gateway, data: bytes, *, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send `data` (then, after `pause`, `then`) on one connection; return all it answers."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(data)
            if then:
                time.sleep(pause)
                sock.sendall(then)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-send: what it answered is what matters
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_it_answers_431_to_headers_over_the_limit_and_serves_large_bodies(
    settings, gateway, http, make_model, make_key
):
    settings.AETHERGATE_MAX_HEADER_BYTES = 16 * 1024
    make_model()
    _, secret = make_key()
    head = b"POST /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n"

    assert raw_exchange(gateway, head).startswith(b"HTTP/1.1 431 ")

    # A body is not a header: one much larger than the header limit goes through.
    content = "word " * (MB // 20)  # 256 KB
    messages = [{"role": "user", "content": content}]
    response = http.post(
        CHAT_PATH, json={"model": "gpt-test", "messages": messages}, headers=bearer(secret)
    )
    assert response.status_code == 200, response.text


def test_it_answers_408_when_a_body_stops_arriving(settings, gateway, make_model, make_key):
    settings.AETHERGATE_BODY_READ_TIMEOUT_SECONDS = 0.3
    make_model()
    _, secret = make_key()
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
        # Closed after the answer: read to the end, not to the keep-alive timeout.
        "Connection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()

    started = time.monotonic()
    answer = raw_exchange(gateway, head + b'{"model": "gpt-test"')

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    # A body that is slow but keeps coming is not stalled.
    body = json.dumps({"model": "gpt-test", "messages": MESSAGES}).encode()
    head = head.replace(b"Content-Length: 1000", b"Content-Length: %d" % len(body))
    answer = raw_exchange(gateway, head + body[:10], then=body[10:], pause=0.1)
    assert answer.startswith(b"HTTP/1.1 200 ")


# --------------------------------------------------------------------------- upstream answers


def json_answer(body, status=200, **headers):
    async def handler(request):
        return web.json_response(body, status=status, headers=headers)

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        json_answer({"unexpected": True}),
        json_answer({"choices": "all of them"}),
        json_answer(["not", "an", "object"]),
        json_answer({"choices": []}, status=302, Location="http://127.0.0.1:1/elsewhere"),
        json_answer({"choices": []}, status=204),
    ],
    ids=["no choices", "choices a string", "a list", "302 redirect", "204"],
)
def test_an_answer_not_shaped_like_a_completion_is_an_upstream_error_and_not_billed(
    http, scripted, on_scripted, handler
):
    scripted.handler = handler
    secret, user = on_scripted

    response = http.post(
        CHAT_PATH, json={"model": "gpt-test", "messages": MESSAGES}, headers=bearer(secret)
    )

    error_of(response, 502, "upstream_error")
    (row,) = wait_for_logs(1)
    assert (row.status, row.outcome, row.cost) == (502, "upstream_error", 0)
    user.refresh_from_db()
    assert user.balance == Decimal("100")
    assert scripted.requests == 1  # a redirect is never followed


def test_an_answer_that_inflates_past_the_limit_is_refused(settings, http, scripted, on_scripted):
    settings.AETHERGATE_MAX_RESPONSE_BYTES = MB
    bomb = gzip.compress(b'{"choices": [], "pad": "' + b"0" * 8 * MB + b'"}')
    assert len(bomb) < 64 * 1024

    async def handler(request):
        return web.Response(
            body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    scripted.handler = handler
    secret, _ = on_scripted

    response = http.post(
        CHAT_PATH, json={"model": "gpt-test", "messages": MESSAGES}, headers=bearer(secret)
    )

    error_of(response, 502, "upstream_error")


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


def chunk(text: str) -> bytes:
    return json.dumps(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    ).encode()


def streaming(*parts: bytes, pause: float = 0.0):
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            if pause:
                await asyncio.sleep(pause)
        return response

    return handler


def test_a_stream_line_longer_than_the_limit_is_an_upstream_error(
    settings, http, scripted, on_scripted
):
    settings.AETHERGATE_MAX_SSE_LINE_BYTES = 64 * 1024
    scripted.handler = streaming(b"data: " + b"x" * 256 * 1024, b"x" * 256 * 1024)
    secret, _ = on_scripted

    response = http.post(
        CHAT_PATH,
        json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        headers=bearer(secret),
    )

    error_of(response, 502, "upstream_error")
    (row,) = wait_for_logs(1)
    assert (row.status, row.cost) == (502, 0)


def test_a_slow_client_is_not_cut_for_upstream_silence(http, gateway, scripted, on_scripted):
    # 12 MB of chunks, sent at once (more than the kernel's socket buffers hold),
    # then [DONE]; the endpoint's idle timeout is 1 s.
    pieces = [sse(chunk("x" * 16 * 1024)) for _ in range(768)] + [sse(b"[DONE]")]
    scripted.handler = streaming(*pieces)
    secret, _ = on_scripted
    endpoint = Endpoint.objects.get(name="scripted")
    endpoint.idle_timeout = IDLE_SECONDS
    endpoint.save()
    body = json.dumps({"model": "gpt-test", "messages": MESSAGES, "stream": True}).encode()
    request = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    host, port = gateway.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    # A small window: the gateway blocks writing long before the answer is out.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(request)

    time.sleep(IDLE_SECONDS * 1.5)  # the client reads nothing for longer than the idle timeout
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)  # then reads quickly
    answer = b""
    while data := sock.recv(65536):
        answer += data
    sock.close()

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b'"chat.completion.chunk"') == 768
    assert b'"error"' not in answer
    assert answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    (row,) = wait_for_logs(1)
    assert (row.status, row.outcome) == (200, "ok")


def test_an_upstream_error_quoting_the_prompt_is_logged_without_it(
    http, scripted, on_scripted, make_key
):
    quoted = "Your prompt was flagged: 'my secret plan'"
    scripted.handler = json_answer(
        {"error": {"message": quoted, "code": "content_filter"}}, status=400
    )
    secret, user = on_scripted
    _, logging_secret = make_key(owner=user, name="content", log_content=True)

    for key in (secret, logging_secret):
        response = http.post(
            CHAT_PATH, json={"model": "gpt-test", "messages": MESSAGES}, headers=bearer(key)
        )
        assert quoted in error_of(response, 400, "upstream_rejected")["message"]

    quiet, logged = wait_for_logs(2)
    assert "secret plan" not in quiet.error
    assert quiet.error == "The upstream rejected the request (HTTP 400, code content_filter)."
    assert "secret plan" in logged.error


def test_an_error_after_a_stream_started_ends_it_with_an_error_event():
    sent = []

    async def send(message):
        sent.append(message)

    ex = Exchange(request_id="req_test", path=CHAT_PATH, stream=True, responded=True)

    asyncio.run(send_error(send, ex, APIError(500, "boom", type="api_error")))

    assert [m["type"] for m in sent] == ["http.response.body", "http.response.body"]
    assert json.loads(sent[0]["body"].removeprefix(b"data: "))["error"]["message"] == "boom"
    assert sent[1]["more_body"] is False


# --------------------------------------------------------------------------- floods and load


def test_an_address_sending_invalid_keys_is_throttled_without_a_lookup(http, make_model, make_key):
    make_model()
    _, secret = make_key()
    clock = FakeClock()
    proxy.key_throttle = InvalidKeyThrottle(5, clock=clock)

    answers = [http.get("/v1/models", headers=bearer(f"ag-wrong-{i}")) for i in range(6)]

    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert error_of(answers[-1], 429, "too_many_invalid_keys")
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    # The address is refused whatever it sends, until its minute is over.
    assert http.get("/v1/models", headers=bearer(secret)).status_code == 429
    clock.now += 60
    assert http.get("/v1/models", headers=bearer(secret)).status_code == 200


def test_the_invalid_key_throttle_forgets_the_oldest_address_first():
    throttle = InvalidKeyThrottle(1, clock=FakeClock())
    throttle.failed("first")
    for n in range(10_000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")

    assert throttle.retry_after("first") == 0
    assert throttle.retry_after("10.0.39.15") > 0
    assert len(throttle._windows) == 10_000


def test_it_sheds_load_past_the_concurrency_cap_and_still_answers_health(
    settings, http, gateway, upstream, make_model, make_key
):
    settings.AETHERGATE_MAX_CONCURRENT_REQUESTS = 2
    make_model(upstream_name="echo+slow=1.5")
    _, secret = make_key()

    async def run():
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
            body = {"model": "gpt-test", "messages": MESSAGES}
            slow = [
                asyncio.create_task(client.post(CHAT_PATH, json=body, headers=bearer(secret)))
                for _ in range(2)
            ]
            await asyncio.to_thread(upstream.wait_for_requests, 2)
            started = time.monotonic()
            shed = await client.post(CHAT_PATH, json=body, headers=bearer(secret))
            waited = time.monotonic() - started
            health = await client.get("/health/live")
            return [await t for t in slow], shed, waited, health

    slow, shed, waited, health = asyncio.run(run())

    assert [r.status_code for r in slow] == [200, 200]
    error_of(shed, 503, "overloaded")
    assert shed.headers["retry-after"] == "1"
    assert waited < 1.0  # answered at once, not after the slow ones
    assert health.status_code == 200
    assert len(upstream.received) == 2


@pytest.fixture
def one_connection_per_upstream(settings):
    # The pool is made at startup: ask for this fixture before `gateway`.
    settings.AETHERGATE_UPSTREAM_MAX_CONNECTIONS = 1


def test_it_caps_connections_to_one_upstream(
    one_connection_per_upstream, gateway, scripted, on_scripted
):
    async def slow_answer(request):
        await asyncio.sleep(0.3)
        return web.json_response(
            {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "ok"}}]}
        )

    scripted.handler = slow_answer
    secret, _ = on_scripted

    async def run():
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
            body = {"model": "gpt-test", "messages": MESSAGES}
            calls = [client.post(CHAT_PATH, json=body, headers=bearer(secret)) for _ in range(3)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(run())

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert (scripted.requests, scripted.peak) == (3, 1)

"""Hostile callers and careless upstreams at `/v1`, over a real server: refused with clear
errors, never a 500.

What needs real HTTP: the server bounds headers and stalled bodies, an
upstream's inflating or endless answer and a slow client over real sockets,
overload and the connection cap. Client bodies and headers refused before
anything is spent are tested in process (test_validation.py, test_auth.py,
test_asgi_io.py), as are upstream answers that only need a script
(test_relay.py, test_forwarding_rules.py).
"""

import asyncio
import gzip
import json
import socket
import time
from decimal import Decimal

import httpx
import pytest
from aiohttp import web

from aethergate.testing import FakeClock, wait_for_logs
from endpoints.models import Endpoint
from proxy.tests.scripted import ScriptedUpstream
from proxy.tests.test_admission import (
    CHAT_PATH,
    MESSAGES,
    bearer,
    error_of,
)
from proxy.throttle import InvalidKeyThrottle

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


# --------------------------------------------------------------------------- client input

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


def chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return json.dumps({"object": "chat.completion.chunk", "choices": [choice]}).encode()


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


def test_a_slow_client_is_not_cut_for_upstream_silence(http, gateway, scripted, on_scripted):
    # 12 MB of chunks, sent at once (more than the kernel's socket buffers hold),
    # then [DONE]; the endpoint's idle timeout is 1 s.
    pieces = [sse(chunk("x" * 16 * 1024)) for _ in range(767)]
    pieces += [sse(chunk("x", finish="stop")), sse(b"[DONE]")]
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


# --------------------------------------------------------------------------- floods and load


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

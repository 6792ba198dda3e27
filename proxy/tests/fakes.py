"""In-process stand-ins for `/v1` tests without a server, a database or a socket.

`records` build snapshot records (keys, models, endpoints) in memory;
`FakeUpstream` answers `Runtime.upstream.post` from a script and records
each call; `call` drives the real ASGI entry (`proxy.app.App.http`) with a
recorded `send` against a `Runtime` made of these parts. The whole pipeline
(route, auth, admission, forwarding, relay, accounting) runs as in
production; only I/O is replaced.
"""

import asyncio
import inspect
import json
import re
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import Decimal

from aethergate.lib.ratelimit import LocalLimiter, parse_spec
from keys.models import digest
from proxy.app import App
from proxy.catalog import Catalog
from proxy.runtime import Runtime
from proxy.snapshot import DeploymentInfo, EndpointInfo, KeyInfo, ModelInfo, Snapshot
from proxy.throttle import InvalidKeyThrottle

SECRET = "ag-test-secret-0123456789"
FAKE_KEY = "ag-Zq7Xk2Lp9Wm4Rt8Yb3Nc6Vd1Hf5Jg0QsUu"  # well-formed, in no snapshot


class FakeClock:
    """A clock for `clock=` seams: `now` seconds, moved by `advance`."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- records


def endpoint_info(**fields) -> EndpointInfo:
    values = {
        "id": 1,
        "name": "stand-in",
        "base_url": "http://upstream.test/v1",
        "kind": "generic",
        "native_responses": False,
        "api_key": "sk-upstream-secret",
        "usable": True,
        "rates": (),
        "connect_timeout": 5.0,
        "first_byte_timeout": 5.0,
        "idle_timeout": 5.0,
        "total_timeout": 60.0,
        "health_path": "",
    }
    return EndpointInfo(**{**values, **fields})


def deployment_info(
    upstream_name: str = "echo", endpoint: EndpointInfo | None = None, **fields
) -> DeploymentInfo:
    endpoint = endpoint or endpoint_info()
    values = {
        "id": zlib.crc32(f"{endpoint.name}/{upstream_name}".encode()) % 10_000,
        "upstream_name": upstream_name,
        "endpoint": endpoint,
        "weight": 1,
        "priority": 0,
        "label": f"{endpoint.name}/{upstream_name}",
    }
    return DeploymentInfo(**{**values, **fields})


def model_info(
    name: str = "gpt-test",
    *,
    upstream_name: str = "echo",
    endpoint: EndpointInfo | None = None,
    **fields,
) -> ModelInfo:
    """A model record; served by `upstream_name` on `endpoint` unless `deployments` are given
    (`deployments=()`: a model with nowhere to go)."""
    values = {
        "id": zlib.crc32(name.encode()) % 10_000,  # stable across runs, unlike hash()
        "name": name,
        "capability": "TEXT",
        "billing_unit": "TOKEN",
        "price_in": Decimal("0.001"),
        "price_out": Decimal("0.002"),
        "price_cache_read": fields.get("price_in", Decimal("0.001")),
        "price_cache_write": fields.get("price_in", Decimal("0.001")),
        "unpriced": False,
        "rates": (),
        "max_concurrent": None,
        "max_output_tokens": None,
        "strategy": "weighted",
        "fallback": None,
        "context_fallback": None,
        "created": 1_700_000_000,
    }
    if "deployments" not in fields:
        fields["deployments"] = (deployment_info(upstream_name, endpoint),)
    if isinstance(fields.get("rate_limit"), str):
        fields["rates"] = parse_spec(fields.pop("rate_limit"))
    return ModelInfo(**{**values, **fields})


def key_info(**fields) -> KeyInfo:
    values = {
        "id": 7,
        "prefix": SECRET[:11],
        "user_id": 3,
        "username": "alice",
        "is_active": True,
        "user_active": True,
        "expires_at": None,
        "log_content": False,
        "rates": (),
        "capabilities": frozenset(),
        "models": frozenset(),
        "max_concurrent": None,
        "budgets": (),
    }
    if isinstance(fields.get("rate_limit"), str):
        fields["rates"] = parse_spec(fields.pop("rate_limit"))
    return KeyInfo(**{**values, **fields})


def snapshot(
    keys: dict[str, KeyInfo] | None = None,
    models: list[ModelInfo] | None = None,
    balances: dict[int, Decimal] | None = None,
) -> Snapshot:
    """A snapshot; `keys` maps a secret (not its digest) to its record."""
    keys = {SECRET: key_info()} if keys is None else keys
    models = [model_info()] if models is None else models
    return Snapshot(
        {digest(secret): key for secret, key in keys.items()},
        {m.name: m for m in models},
        balances or {},
    )


# --------------------------------------------------------------------------- the upstream


class Pause:
    """A stream piece: the upstream stays silent for `seconds` (None: for ever) of loop time.

    The pause is timed from when the reader first reaches it, so a reader that
    gives up waiting and reads again (a keep-alive tick) waits only the rest.
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds


class FakeContent:
    """`response.content`: `readany()` hands out the scripted pieces, then b"".

    A piece is bytes (returned), a `Pause` (waited out), an exception (raised:
    a connection reset is `aiohttp.ClientPayloadError()`) or a callable (called
    when reached, e.g. `disconnect.set` to make the client leave there).
    """

    def __init__(self, pieces: list, gap: float = 0.0):
        self._pieces = list(pieces)
        self._gap = gap
        self._until: float | None = None  # when the current Pause ends

    async def readany(self) -> bytes:
        if self._gap:
            await asyncio.sleep(self._gap)  # a slow upstream, in the double only
        while self._pieces:
            piece = self._pieces[0]
            if isinstance(piece, Pause):
                await self._wait(piece)
            self._pieces.pop(0)
            if isinstance(piece, BaseException):
                raise piece
            if isinstance(piece, bytes):
                return piece
            if callable(piece):
                piece()
        return b""

    @property
    def unread(self) -> list:
        """The pieces not yet read."""
        return list(self._pieces)

    async def _wait(self, pause: Pause) -> None:
        if pause.seconds is None:
            await asyncio.Event().wait()
        loop = asyncio.get_running_loop()
        if self._until is None:
            self._until = loop.time() + pause.seconds
        await asyncio.sleep(max(0.0, self._until - loop.time()))
        self._until = None


class FakeResponse:
    """An aiohttp-like response: status, headers, content_length, content, async context
    manager."""

    def __init__(
        self,
        status: int = 200,
        pieces: list | None = None,
        gap: float = 0.0,
        headers: dict | None = None,
    ):
        self.status = status
        self.headers = headers or {}
        self.content_length = None
        self.content = FakeContent(pieces or [], gap)
        self.closed = False

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.closed = True


def chat_answer(text: str = "Hello!", usage: dict | None = None, **fields) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "upstream-name",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        **fields,
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def sse(*events, done: bool = True) -> list:
    """Stream pieces: each event a dict (sent as JSON) or bytes; ends with [DONE] if `done`.

    A `Pause`, an exception or a callable among `events` is passed on as a piece
    (see FakeContent).
    """
    pieces = []
    for event in events:
        if isinstance(event, dict | bytes):
            data = event if isinstance(event, bytes) else json.dumps(event).encode()
            event = b"data: " + data + b"\n\n"
        pieces.append(event)
    return [*pieces, b"data: [DONE]\n\n"] if done else pieces


def chunk(text: str | None = None, usage: dict | None = None, finish: str | None = None) -> dict:
    choices = []
    if text is not None or finish is not None:
        delta = {"content": text} if text else {}
        choices.append({"index": 0, "delta": delta, "finish_reason": finish})
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def completion_answer(text: str = "Hello!", usage: dict | None = None) -> bytes:
    """A text completion (`/v1/completions`) saying `text`."""
    body = {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": text}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def embedding_answer(*vectors: list[float], usage: dict | None = None) -> bytes:
    """An embeddings answer with one item per vector, as floats."""
    body = {
        "object": "list",
        "model": "upstream-name",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors)
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def error_body(message: str, code: str | None = "x") -> bytes:
    """An upstream's OpenAI-shaped error."""
    body = {"error": {"message": message, "type": "upstream_test", "param": None, "code": code}}
    return json.dumps(body).encode()


def error_answer(status: int, message: str, code: str | None = "x") -> FakeResponse:
    """An upstream's answer with `status` and an OpenAI-shaped error."""
    return FakeResponse(status, [error_body(message, code)])


def streamed(*texts: str, usage: dict | None = None, done: bool = True) -> FakeResponse:
    """A chat stream: one chunk per text, a finish chunk, then a usage chunk if `usage`."""
    events = [chunk(text) for text in texts] + [chunk(finish="stop")]
    if usage is not None:
        events.append(chunk(usage=usage))
    return FakeResponse(200, sse(*events, done=done))


OK_USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


def answer_ok(call) -> FakeResponse:
    """A chat completion saying "Hello!" (streamed as "Hel", "lo!"), with usage 3 in, 2 out."""
    if call.stream:
        return streamed("Hel", "lo!", usage=OK_USAGE)
    return FakeResponse(200, [chat_answer(usage=OK_USAGE)])


async def silent(_call) -> FakeResponse:
    """An upstream that takes the request and never answers it (a script entry)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@dataclass
class Call:
    """One request that reached the fake upstream."""

    endpoint: EndpointInfo
    path: str
    body: dict
    stream: bool
    request_id: str
    cancelled: bool = False  # the gateway gave up before the response headers came
    headers: dict | None = None  # the extra headers the gateway chose (Anthropic's)


class FakeUpstream:
    """`Runtime.upstream`: answers by endpoint name from `script`, records every call.

    A script entry is a FakeResponse, an exception to raise, or a callable
    `(Call) -> FakeResponse` (or a coroutine function, e.g. `silent`);
    `default` answers endpoints not in the script.
    """

    def __init__(self, default=None, **script):
        self.default = default if default is not None else answer_ok
        self.script = script
        self.calls: list[Call] = []
        self.checks: list[tuple[str, str]] = []  # health checks: (endpoint name, path)
        self.unhealthy: set[str] = set()  # endpoint names whose health check fails

    async def check(self, endpoint, path, *, seconds):
        self.checks.append((endpoint.name, path))
        return endpoint.name not in self.unhealthy

    async def post(
        self, endpoint, path, body, *, stream, request_id, accept="application/json", headers=None
    ):
        call = Call(endpoint, path, json.loads(body), stream, request_id, headers=headers)
        self.calls.append(call)
        answer = self.script.get(endpoint.name, self.default)
        if callable(answer) and not isinstance(answer, FakeResponse):
            answer = answer(call)
        if inspect.isawaitable(answer):
            try:
                answer = await answer
            except asyncio.CancelledError:
                call.cancelled = True
                raise
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the runtime


class RecordingWriter:
    """`Runtime.writer`: keeps every submitted record."""

    def __init__(self):
        self.records = []

    def submit(self, record) -> None:
        self.records.append(record)

    def health(self) -> str:
        return "ok"

    async def close(self) -> None:
        pass


class FakeCatalog(Catalog):
    """A Catalog serving a given snapshot (no database); `available` may be set."""

    def __init__(self, snap: Snapshot):
        super().__init__()
        self.snapshot = snap
        self._loaded = self._wanted

    def invalidate(self, **_signal) -> None:
        pass


def runtime(
    snap: Snapshot | None = None, *, upstream: FakeUpstream | None = None, clock=None
) -> Runtime:
    """A Runtime of fakes: `snap` (default: one key, one model), a local limiter on `clock`."""
    clock = clock or FakeClock()
    return Runtime(
        catalog=FakeCatalog(snap or snapshot()),
        limiter=LocalLimiter(clock=clock),
        writer=RecordingWriter(),
        upstream=upstream or FakeUpstream(),
        key_throttle=InvalidKeyThrottle(30, clock=clock),
    )


@dataclass
class Answer:
    """What the client received: status, headers (lower-case names), body, and SSE events.

    `status` is None when nothing was sent (the client left before an answer).
    """

    status: int | None
    headers: dict[str, str]
    body: bytes
    messages: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, sent: list[dict]) -> "Answer":
        """The answer made of the ASGI messages `sent`, in order."""
        start = next((m for m in sent if m["type"] == "http.response.start"), None)
        return cls(
            status=start["status"] if start else None,
            headers={k.decode(): v.decode() for k, v in start["headers"]} if start else {},
            body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
            messages=sent,
        )

    def json(self):
        return json.loads(self.body)

    @property
    def events(self) -> list:
        """The `data:` payloads of an SSE body: parsed JSON, or the literal `[DONE]`."""
        found = []
        for line in self.body.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                found.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        return found

    @property
    def text(self) -> str:
        """The generated text an SSE body's chunks carry (chat deltas or completion text)."""
        return "".join(
            (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            for event in self.events
            if event != "[DONE]" and "choices" in event
            for choice in event["choices"]
        )

    @property
    def frames(self) -> list[str]:
        """The frames of an SSE body in order: `data: ...` events and `: keep-alive` comments."""
        return [frame.decode() for frame in self.body.split(b"\n\n") if frame]


REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


def error_of(answer: Answer, status: int, code: str) -> dict:
    """Assert `answer` is an OpenAI-shaped error with `status` and `code`; return the error."""
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert REQUEST_ID.match(answer.headers["x-request-id"])
    body = answer.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_no_internals(text: str | bytes, endpoint: EndpointInfo | None = None) -> None:
    """Nothing of the upstream's address or credential (`endpoint_info()`'s) is in `text`."""
    endpoint = endpoint or endpoint_info()
    text = text.decode() if isinstance(text, bytes) else text
    for internal in (endpoint.api_key, endpoint.base_url, "upstream.test", "10.0.0.7"):
        assert internal not in text, internal


# Loop steps a disconnect takes to reach the pipeline: the waiter wakes, the
# waiting task returns, its done callback runs.
CLOSE_STEPS = 5
CALL_TIMEOUT_SECONDS = 10


def request_scope(
    method: str,
    path: str,
    *,
    secret: str | None = SECRET,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
) -> dict:
    """An HTTP scope; `secret` (unless None) is sent as `Authorization: Bearer <secret>`."""
    all_headers = list(headers or [])
    if secret is not None:
        all_headers.append((b"authorization", f"Bearer {secret}".encode()))
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": all_headers,
        "client": client,
    }


async def drive(rt: Runtime, scope: dict, receive, *, on_last_byte=None) -> Answer:
    """Run `App.http` once with `rt`, `scope` and the client's `receive`; what it sent.

    `on_last_byte`, when given, is awaited as the last body message is sent.
    """
    sent: list[dict] = []

    async def send(message):
        sent.append(message)
        last = message["type"] == "http.response.body" and not message.get("more_body")
        if on_last_byte is not None and last:
            await on_last_byte()

    # A bound, so that a gateway that never ends a scripted silence fails the test
    # (TimeoutError) instead of hanging it.
    async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
        await App().http(rt, scope, receive, send)
    return Answer.of(sent)


async def acall(
    rt: Runtime,
    method: str,
    path: str,
    body=None,
    *,
    secret: str | None = SECRET,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    disconnect: asyncio.Event | None = None,
    closes_when_answered: bool = False,
    piece_size: int | None = None,
) -> Answer:
    """`call` in the running event loop (for several requests at once); see `call`."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    size = piece_size or len(raw) or 1
    messages = [
        {"type": "http.request", "body": raw[i : i + size], "more_body": True}
        for i in range(0, len(raw), size)
    ] or [{"type": "http.request", "body": b""}]
    messages[-1]["more_body"] = False
    gone = disconnect or asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def close() -> None:
        gone.set()
        for _ in range(CLOSE_STEPS):
            await asyncio.sleep(0)  # let the receive channel's waiter hear of it

    scope = request_scope(method, path, secret=secret, headers=headers, client=client)
    return await drive(rt, scope, receive, on_last_byte=close if closes_when_answered else None)


def call(rt: Runtime, method: str, path: str, body=None, **options) -> Answer:
    """Drive one request through `App.http` with `rt`; the body is JSON unless bytes.

    `options`: `secret` (sent as a bearer unless None), `headers`, `client`;
    `disconnect`, when given, is awaited by the client's receive channel after
    the body: set it to make the client leave (a script can set it at a chosen
    point: a callable stream piece, or an upstream callable). With
    `closes_when_answered`, the channel reports the end of the connection as
    the last byte is sent, as servers do. `piece_size` sends the body in
    messages of that many bytes, as a chunked upload arrives. Runs its own
    event loop.
    """
    return asyncio.run(acall(rt, method, path, body, **options))


HELLO = [{"role": "user", "content": "hi there"}]


def chat(
    rt: Runtime, *, secret: str = SECRET, disconnect: asyncio.Event | None = None, **fields
) -> Answer:
    """POST a chat completion of `gpt-test` saying HELLO; `fields` are added or replace those."""
    body = {"model": "gpt-test", "messages": HELLO, **fields}
    return call(rt, "POST", "/v1/chat/completions", body, secret=secret, disconnect=disconnect)


def without_upstream_ids(attempts: list[dict]) -> list[dict]:
    """A log's attempts without their `upstream_request_id`, each checked to be a UUID, and
    their `ttfb` (seconds to the answer's headers), checked to be a time."""
    stripped = []
    for attempt in attempts:
        attempt = dict(attempt)
        sent = attempt.pop("upstream_request_id", None)
        if sent is not None:
            assert str(uuid.UUID(sent)) == sent, sent
        ttfb = attempt.pop("ttfb", None)
        if ttfb is not None:
            assert isinstance(ttfb, float) and ttfb >= 0, ttfb
        stripped.append(attempt)
    return stripped

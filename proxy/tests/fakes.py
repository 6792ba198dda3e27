"""In-process stand-ins for `/v1` tests without a server, a database or a socket.

`records` build snapshot records (keys, models, endpoints) in memory;
`FakeUpstream` answers `Runtime.upstream.post` from a script and records
each call; `call` drives the real ASGI entry (`proxy.app.App.http`) with a
recorded `send` against a `Runtime` made of these parts. The whole pipeline
(route, auth, admission, forwarding, relay, accounting) runs as in
production; only I/O is replaced.
"""

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal

from aethergate.lib.ratelimit import LocalLimiter, parse_spec
from keys.models import digest
from proxy.app import App
from proxy.catalog import Catalog
from proxy.runtime import Runtime
from proxy.snapshot import EndpointInfo, KeyInfo, ModelInfo, Snapshot
from proxy.throttle import InvalidKeyThrottle

SECRET = "ag-test-secret-0123456789"


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
        "api_key": "sk-upstream-secret",
        "usable": True,
        "rates": (),
        "connect_timeout": 5.0,
        "first_byte_timeout": 5.0,
        "idle_timeout": 5.0,
        "total_timeout": 60.0,
    }
    return EndpointInfo(**{**values, **fields})


def model_info(name: str = "gpt-test", **fields) -> ModelInfo:
    values = {
        "id": abs(hash(name)) % 10_000,
        "name": name,
        "upstream_name": "echo",
        "capability": "TEXT",
        "billing_unit": "TOKEN",
        "price_in": Decimal("0.001"),
        "price_out": Decimal("0.002"),
        "rates": (),
        "fallback": None,
        "endpoint": endpoint_info(),
        "created": 1_700_000_000,
    }
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


class FakeContent:
    """`response.content`: `readany()` hands out the scripted pieces, then b""."""

    def __init__(self, pieces: list[bytes], gap: float = 0.0):
        self._pieces = list(pieces)
        self._gap = gap

    async def readany(self) -> bytes:
        if self._gap:
            await asyncio.sleep(self._gap)  # a slow upstream, in the double only
        return self._pieces.pop(0) if self._pieces else b""


class FakeResponse:
    """An aiohttp-like response: status, content_length, content, async context manager."""

    def __init__(self, status: int = 200, pieces: list[bytes] | None = None, gap: float = 0.0):
        self.status = status
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


def sse(*events) -> list[bytes]:
    """Stream pieces: each event a dict (sent as JSON) or bytes; ends with [DONE]."""
    pieces = [b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) for e in events]
    return [piece + b"\n\n" for piece in pieces] + [b"data: [DONE]\n\n"]


def chunk(text: str | None = None, usage: dict | None = None, finish: str | None = None) -> dict:
    choices = []
    if text is not None or finish is not None:
        delta = {"content": text} if text else {}
        choices.append({"index": 0, "delta": delta, "finish_reason": finish})
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def answer_ok(_call) -> FakeResponse:
    """A chat completion saying "Hello!", with usage 3 in, 2 out."""
    return FakeResponse(200, [chat_answer(usage={"prompt_tokens": 3, "completion_tokens": 2})])


@dataclass
class Call:
    """One request that reached the fake upstream."""

    endpoint: EndpointInfo
    path: str
    body: dict
    stream: bool
    request_id: str


class FakeUpstream:
    """`Runtime.upstream`: answers by endpoint name from `script`, records every call.

    A script entry is a FakeResponse, an exception to raise, or a callable
    `(Call) -> FakeResponse`; `default` answers endpoints not in the script.
    """

    def __init__(self, default=None, **script):
        self.default = default if default is not None else answer_ok
        self.script = script
        self.calls: list[Call] = []

    async def post(self, endpoint, path, body, *, stream, request_id):
        call = Call(endpoint, path, json.loads(body), stream, request_id)
        self.calls.append(call)
        answer = self.script.get(endpoint.name, self.default)
        if callable(answer) and not isinstance(answer, FakeResponse):
            answer = answer(call)
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
    """What the client received: status, headers (lower-case names), body, and SSE events."""

    status: int
    headers: dict[str, str]
    body: bytes
    messages: list[dict] = field(default_factory=list)

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


def call(
    rt: Runtime,
    method: str,
    path: str,
    body=None,
    *,
    secret: str | None = SECRET,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    disconnect: asyncio.Event | None = None,
) -> Answer:
    """Drive one request through `App.http` with `rt`; the body is JSON unless bytes.

    `disconnect`, when given, is awaited by the client's receive channel after
    the body: set it to make the client leave. Runs its own event loop.
    """
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    all_headers = list(headers or [])
    if secret is not None:
        all_headers.append((b"authorization", f"Bearer {secret}".encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": all_headers,
        "client": client,
    }
    sent: list[dict] = []

    async def run() -> None:
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await (disconnect.wait() if disconnect else asyncio.Event().wait())
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await App().http(rt, scope, receive, send)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Answer(
        status=start["status"],
        headers={k.decode(): v.decode() for k, v in start["headers"]},
        body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        messages=sent,
    )

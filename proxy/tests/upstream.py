"""An OpenAI-compatible upstream stand-in on loopback that behaves as each model name says."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from typing import Any

from aiohttp import web

from aethergate.testing import wait_for

PREFIX = "Hello from upstream: "
DEFAULT_CHUNKS = 20
EMBEDDING_DIMENSIONS = 8
SILENT_CAP_SECONDS = 60.0
DEFAULT_MODEL_IDS = ("echo", "echo-embed")
ERROR_TEMPLATE = "upstream says {code} (internal host 10.0.0.7, key sk-upstream-secret)"
START_TIMEOUT_SECONDS = 10.0

_TRUE_FLAGS = {"nousage", "silent", "malformed", "nodone"}
_FLOAT_FLAGS = {"slow", "gap"}
_INT_FLAGS = {"chunks", "fail", "reset"}
# `usage=KIND`: every count in `usage` (prompt, completion, total) becomes this value.
ABSURD_USAGE: dict[str, Any] = {
    "huge": 2**63,  # past SQLite's INTEGER and PostgreSQL's bigint
    "overflow": 2**31,  # one past the columns' 2**31 - 1
    "negative": -1_000_000,
    "exponent": -1e6,  # a JSON float
    "float": 12.5,
    "text": "12",
    "bool": True,
}


@dataclasses.dataclass
class Flags:
    """Behaviour selected by a model name (see the module docstring)."""

    nousage: bool = False
    silent: bool = False
    malformed: bool = False
    nodone: bool = False
    slow: float = 0.0
    gap: float = 0.0
    chunks: int = DEFAULT_CHUNKS
    fail: int | None = None
    reset: int | None = None
    usage: str = ""


def parse_flags(model: str) -> Flags:
    """Read the `+`-separated flags of `model`; parts that are not well-formed flags are ignored."""
    flags = Flags()
    for part in str(model).split("+"):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        try:
            if not sep and name in _TRUE_FLAGS:
                setattr(flags, name, True)
            elif sep and name in _FLOAT_FLAGS:
                setattr(flags, name, max(0.0, float(value)))
            elif sep and name in _INT_FLAGS:
                setattr(flags, name, max(0, int(value)))
            elif sep and name == "usage" and value.lower() in ABSURD_USAGE:
                flags.usage = value.lower()
        except ValueError:
            continue
    flags.chunks = max(1, flags.chunks)
    return flags


# --------------------------------------------------------------------------- deterministic answers


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return " ".join(texts)
    return ""


def _words(text: str) -> int:
    return len(text.split())


def chat_answer(messages: Any) -> tuple[str, int, int]:
    """`(text, prompt_tokens, completion_tokens)` of the non-stream answer to `messages`."""
    messages = messages if isinstance(messages, list) else []
    contents = [content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    last_user = ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = content_text(message.get("content"))
    text = PREFIX + last_user
    return text, sum(_words(c) for c in contents) + 3, _words(text)


def prompt_text(prompt: Any) -> str:
    """A completions `prompt` as text: strings and token ids joined by spaces."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(prompt_text(p) if isinstance(p, list) else str(p) for p in prompt)
    return ""


def completion_answer(prompt: Any) -> tuple[str, int, int]:
    """`(text, prompt_tokens, completion_tokens)` of the non-stream answer to `prompt`."""
    prompt = prompt_text(prompt)
    text = PREFIX + prompt
    return text, _words(prompt) + 3, _words(text)


def stream_deltas(text: str, chunks: int = DEFAULT_CHUNKS) -> list[str]:
    """The `chunks` content deltas that stream `text`: its words in turn, repeated to fill.

    Every delta but the first starts with a space, so the deltas concatenate to `stream_text`.
    """
    words = text.split() or [""]
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(chunks)]


def stream_text(text: str, chunks: int = DEFAULT_CHUNKS) -> str:
    """The content a stream of `chunks` chunks carries; its completion tokens are `chunks`."""
    return "".join(stream_deltas(text, chunks))


def embedding_vector(item: Any) -> list[float]:
    """The 8 floats in [-1, 1] that embed one input (a string or a list of token ids)."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [v / 32767 if v > -32768 else -1.0 for v in struct.unpack(">8h", digest[:16])]


def embedding_inputs(value: Any) -> list[Any]:
    """Split an embeddings `input` into its items: one string, strings, token ids or lists."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list):
        return list(value)
    return [value]


def _embedding_tokens(item: Any) -> int:
    return len(item) if isinstance(item, list) else _words(str(item))


def error_body(code: int) -> dict:
    """The OpenAI-shaped error `fail=CODE` answers, with internals the gateway must not echo."""
    return {
        "error": {
            "message": ERROR_TEMPLATE.format(code=code),
            "type": "upstream_test",
            "param": None,
            "code": "x",
        }
    }


# --------------------------------------------------------------------------- records


@dataclasses.dataclass
class Received:
    """One request as the stand-in got it, and how its answer ended.

    Exactly one of `finished_at` (answer fully written), `closed_at` (client left first;
    `closed_early` is then True) or `aborted` (the stand-in dropped the connection) is set
    once `done` is; times are `time.monotonic()` values.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes = b""
    received_at: float = dataclasses.field(default_factory=time.monotonic)
    closed_early: bool = False
    closed_at: float | None = None
    finished_at: float | None = None
    aborted: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    def wait_done(self, timeout: float = 5.0) -> bool:
        """Block until the answer finished, was cut by the client or aborted; False on timeout."""
        return self.done.wait(timeout)


class _Aborted(Exception):
    """Raised by a handler after it dropped its own connection on purpose."""


# --------------------------------------------------------------------------- server


class Upstream:
    """An aiohttp OpenAI-compatible server on 127.0.0.1, run by a thread with its own loop.

    `start()` returns once it listens; `base_url` ends with `/v1`. `received` lists every
    request in arrival order. Per-test overrides (`model_ids`, `require_api_key`) and
    `received` go back to their defaults on `reset()`.

    What it does is chosen by the model name in the request body (the gateway sends the
    upstream name), so one server serves every test at once. A name is a base name followed by
    optional `+flag` parts; parts that are not flags only belong to the name, and any part
    (the first one too) may be a flag. Flag names are case-insensitive and combine
    (`fail=429+slow=0.2`):

        echo            a normal answer (any name that carries no flag)
        echo+nousage    never report `usage` (not even when a stream asks for it)
        echo+slow=0.3   wait 0.3 s before answering (before the status line and headers)
        echo+chunks=5   stream 5 content chunks (default 20, at least 1)
        echo+gap=0.2    wait 0.2 s between two stream chunks
        echo+silent     accept the request, then send nothing until the client leaves (<= 60 s)
        fail=503        answer 503 with an OpenAI-shaped error (429 adds `Retry-After: 1`)
        echo+malformed  answer 200, `application/json`, body `{"not json`
        echo+reset=3    stream 3 events (finish and usage chunks count), then drop the
                        connection without [DONE]; a non-stream request is dropped at once
        echo+noDone     end a stream cleanly but without `data: [DONE]`
        echo+usage=huge report every usage count as 2**63 (also `overflow` 2**31,
                        `negative` -1000000, `exponent` -1e6, `float` 12.5, `text` "12",
                        `bool` true: see ABSURD_USAGE), in streams and plain answers

    Answers are deterministic; `chat_answer`, `completion_answer`, `stream_text` and
    `embedding_vector` compute them. The text is "Hello from upstream: " followed by the last
    user message (or the prompt); prompt tokens are the words of every message (or of the
    prompt) plus 3; completion tokens are the words of the text (for streams: the number of
    content chunks). An embedding is 8 floats in [-1, 1] derived from a hash of its input,
    always sent as floats whatever `encoding_format` asks.

    Like llama-cpp-python's server, it answers 400 with an empty body to an `X-Request-ID`
    that is not a UUID, whatever the model. Every request is appended to `received` before
    its flags act. Each `Received` then records
    how it ended: `finished_at` when the whole answer was written, `closed_early`/`closed_at`
    when the client went away first (handlers are cancelled the moment the connection drops),
    or `aborted` when the stand-in dropped the connection itself (`reset`, `silent` at 60 s).
    `Received.wait_done` blocks until one of these happened.
    """

    def __init__(self):
        self.base_url = ""
        self.port: int | None = None
        self.received: list[Received] = []
        self.model_ids: list[str] = list(DEFAULT_MODEL_IDS)
        # When set, requests must carry `Authorization: Bearer <it>` or get a 401.
        self.require_api_key: str | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Upstream:
        """Start the server thread and block until it listens (raise if it cannot)."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready, failure), name="upstream-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS) or failure:
            self.stop()
            raise RuntimeError(f"upstream stand-in did not start: {failure or 'timeout'}")
        return self

    def stop(self) -> None:
        """Stop serving (open answers are cancelled) and join the thread."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_SECONDS)
        self._thread = None

    def reset(self) -> None:
        """Forget received requests and per-test overrides."""
        with self._lock:
            self.received.clear()
        self.model_ids = list(DEFAULT_MODEL_IDS)
        self.require_api_key = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `count` requests were received; return `received` (a copy)."""
        wait_for(lambda: len(self.received) >= count, timeout, interval=0.005, what="requests")
        with self._lock:
            return list(self.received)

    def _run(self, sock, ready, failure) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as exc:  # reported to start(), which raises it
            failure.append(exc)
            ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, sock, ready) -> None:
        self._stopped = asyncio.Event()
        # As large as the gateway forwards (AETHERGATE_MAX_BODY_BYTES, 20 MiB by default),
        # so that `received` holds every body that reached it.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # Cancelling handlers when the client disconnects is what lets a record tell, at
        # once, that the gateway closed its upstream request.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._runner.cleanup()

    # ----------------------------------------------------------------- plumbing

    async def _record(self, request: web.Request) -> Received:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = Received(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=parsed,
            body=body,
        )
        with self._lock:
            self.received.append(record)
        return record

    def _unauthorized(self, record: Received) -> web.Response | None:
        if self.require_api_key is None:
            return None
        if record.headers.get("authorization") == f"Bearer {self.require_api_key}":
            return None
        return web.json_response(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )

    async def _handle(self, request: web.Request, answer, *, flagged=True) -> web.StreamResponse:
        """Record `request`, run `answer(request, record, body, flags)`, note how it ended.

        With `flagged` (the POST routes) the body must be a JSON object and the model name's
        flags apply; otherwise `answer` gets an empty body and no flags.
        """
        record = await self._record(request)
        try:
            body = record.json if isinstance(record.json, dict) else {}
            flags = parse_flags(body.get("model", "")) if flagged else Flags()
            response = self._unauthorized(record) or _bad_request_id(record)
            if response is None and flagged and not isinstance(record.json, dict):
                response = web.json_response(
                    {
                        "error": {
                            "message": "body must be a JSON object",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    },
                    status=400,
                )
            if response is None and flagged:
                response = await self._before_answer(request, record, flags)
            if response is None:
                response = await answer(request, record, body, flags)
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
            record.finished_at = time.monotonic()
            return response
        except _Aborted:
            record.aborted = True
            # connection_lost cancels this handler on the next loop turn; wait for it so that
            # aiohttp ends the request as it does any client disconnect.
            await asyncio.sleep(SILENT_CAP_SECONDS)
            raise
        except (asyncio.CancelledError, ConnectionError):
            self._closed(record)
            raise
        finally:
            record.done.set()

    @staticmethod
    def _closed(record: Received) -> None:
        if record.finished_at is None and not record.aborted:
            record.closed_early = True
            record.closed_at = time.monotonic()

    async def _before_answer(self, request, record, flags: Flags) -> web.StreamResponse | None:
        """Apply the flags that act before an answer starts; a response if they end it."""
        if flags.silent:
            await asyncio.sleep(SILENT_CAP_SECONDS)
            self._abort(request)
        if flags.slow:
            await asyncio.sleep(flags.slow)
        if flags.fail is not None:
            headers = {"Retry-After": "1"} if flags.fail == 429 else None
            return web.json_response(error_body(flags.fail), status=flags.fail, headers=headers)
        if flags.malformed:
            return web.Response(body=b'{"not json', content_type="application/json")
        if flags.reset is not None and not request_streams(record):
            self._abort(request)
        return None

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise _Aborted

    async def _stream(
        self, request, record, flags: Flags, events: list[dict]
    ) -> web.StreamResponse:
        """Send `events` as SSE (cut short by `reset`), then `[DONE]` unless `noDone`."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, event in enumerate(events):
            if flags.reset is not None and index == flags.reset:
                self._abort(request)
            if index and flags.gap:
                await asyncio.sleep(flags.gap)
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if flags.reset is not None:
            self._abort(request)
        if not flags.nodone:
            await response.write(b"data: [DONE]\n\n")
        return response

    # ----------------------------------------------------------------- routes

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._chat_answer)

    async def _chat_answer(self, request, record, body: dict, flags: Flags):
        model = body.get("model", "")
        text, prompt_tokens, completion_tokens = chat_answer(body.get("messages"))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not request_streams(record):
            answer = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
            }
            if not flags.nousage:
                answer["usage"] = _usage(prompt_tokens, completion_tokens, flags.usage)
            return web.json_response(answer)
        with_usage = wants_usage(record) and not flags.nousage

        def chunk(choices: list, **extra) -> dict:
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if with_usage:
                event["usage"] = None  # as OpenAI: null on every chunk but the usage one
            return {**event, **extra}

        events = [
            chunk(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": delta}
                        if i == 0
                        else {"content": delta},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i, delta in enumerate(stream_deltas(text, flags.chunks))
        ]
        events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
        if with_usage:
            events.append(chunk([], usage=_usage(prompt_tokens, flags.chunks, flags.usage)))
        return await self._stream(request, record, flags, events)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._completions_answer)

    async def _completions_answer(self, request, record, body: dict, flags: Flags):
        model = body.get("model", "")
        text, prompt_tokens, completion_tokens = completion_answer(body.get("prompt"))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def completion(choices: list, **extra) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        if not request_streams(record):
            answer = completion(
                [{"text": text, "index": 0, "finish_reason": "stop", "logprobs": None}]
            )
            if not flags.nousage:
                answer["usage"] = _usage(prompt_tokens, completion_tokens, flags.usage)
            return web.json_response(answer)
        events = [
            completion([{"text": delta, "index": 0, "finish_reason": None, "logprobs": None}])
            for delta in stream_deltas(text, flags.chunks)
        ]
        events.append(completion([{"text": "", "index": 0, "finish_reason": "stop"}]))
        if wants_usage(record) and not flags.nousage:
            events.append(completion([], usage=_usage(prompt_tokens, flags.chunks, flags.usage)))
        return await self._stream(request, record, flags, events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._embeddings_answer)

    async def _embeddings_answer(self, request, record, body: dict, flags: Flags):
        items = embedding_inputs(body.get("input"))
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding_vector(item)}
                for i, item in enumerate(items)
            ],
            "model": body.get("model", ""),
        }
        if not flags.nousage:
            tokens = sum(_embedding_tokens(item) for item in items)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            if flags.usage:
                answer["usage"] = dict.fromkeys(answer["usage"], ABSURD_USAGE[flags.usage])
        return web.json_response(answer)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def answer(request, record, body, flags):
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": i, "object": "model", "created": 0, "owned_by": "stand-in"}
                        for i in self.model_ids
                    ],
                }
            )

        return await self._handle(request, answer, flagged=False)

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        async def answer(request, record, body, flags):
            return web.json_response(
                {
                    "error": {
                        "message": f"no route {request.method} {request.path}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
                status=404,
            )

        return await self._handle(request, answer, flagged=False)


def request_streams(record: Received) -> bool:
    """Whether the recorded request asked for a stream."""
    return isinstance(record.json, dict) and record.json.get("stream") is True


def wants_usage(record: Received) -> bool:
    """Whether the recorded stream request asked for a final usage chunk."""
    options = record.json.get("stream_options") if isinstance(record.json, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens: int, completion_tokens: int, absurd: str = "") -> dict:
    if absurd:
        value = ABSURD_USAGE[absurd]
        return {"prompt_tokens": value, "completion_tokens": value, "total_tokens": value}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _bad_request_id(record: Received) -> web.Response | None:
    """As llama-cpp-python's server (starlette-context): an X-Request-ID that is not a UUID
    gets 400 with an empty body, before anything else."""
    value = record.headers.get("x-request-id")
    if value is None:
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return web.Response(status=400)
    return None

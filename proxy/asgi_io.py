"""ASGI I/O for `/v1`: typed Scope/Receive/Send, reading a request body, writing responses."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proxy.errors import APIError, ClientGone, data_event, too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"


def headers_named(scope: Scope, name: bytes) -> list[bytes]:
    """The values of every request header called `name` (lower case), in order."""
    return [value for key, value in scope["headers"] if key == name]


def sends_json(scope: Scope) -> bool:
    """Whether the body is announced as JSON (`application/json`, `…+json`) or not at all."""
    for value in headers_named(scope, b"content-type"):
        media = value.split(b";", 1)[0].strip().lower()
        if media != JSON and not media.endswith(b"+json"):
            return False
    return True


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


async def read_body(scope: Scope, receive: Receive, limit: int, sink=None) -> bytes:
    """The whole request body; 413 past `limit` bytes (announced or sent); ClientGone if it ends.

    With `sink`, each piece goes to `sink(piece)` as it arrives instead (a form's
    parser), and nothing is kept. (An async generator of pieces would serve both,
    at several microseconds more per request on the hot path: measured.)
    """
    for value in headers_named(scope, b"content-length"):
        if value.isdigit() and int(value) > limit:
            raise too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if sink is None:
            chunks.append(chunk)
        elif chunk:
            sink(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Responder:
    """The client's `send`, and how far the response has gone: one JSON answer or one stream.

    `started`: the status is out, no other can follow. `finished`: the last
    byte is being sent (set before it is, so a disconnect reported while it
    goes out is not taken for a client leaving early).
    """

    __slots__ = (
        "error_body",
        "error_event",
        "finished",
        "request_id",
        "send",
        "started",
        "streaming",
    )

    def __init__(self, send: Send, request_id: str):
        self.send = send
        self.request_id = request_id
        self.started = self.finished = self.streaming = False
        # How an error is written on this request's API (the operation's, once it is known).
        self.error_body = APIError.body
        self.error_event = data_event

    def _headers(self, content_type: bytes, extra: dict[str, str]) -> list:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        return headers

    async def json(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        await self.body(status, JSON, body, extra or {})

    async def start_stream(self, extra: dict[str, str]) -> None:
        headers = self._headers(SSE, extra)
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self.started = self.streaming = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def start_body(self, content_type: bytes, extra: dict[str, str]) -> None:
        """Start an answer of another media type (audio) whose length is not known, relayed
        as it comes (a proxy in front is asked not to buffer it)."""
        headers = self._headers(content_type, extra)
        headers.append((b"x-accel-buffering", b"no"))
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def body(self, status: int, content_type: bytes, body: bytes, extra) -> None:
        """Send a whole answer of another media type (text)."""
        headers = self._headers(content_type, extra)
        headers.append((b"content-length", str(len(body)).encode()))
        self.started = self.finished = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.finished = True
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def error(self, error: APIError) -> None:
        """Answer `error`; once a response has started, only an unfinished stream can carry it.

        A started stream ends with the documented SSE error event (never a
        fake [DONE]); a started JSON answer can take nothing more.
        """
        if not self.started:
            await self.json(error.status, self.error_body(error), error.headers)
        elif self.streaming and not self.finished:
            await self.end(self.error_event(error))

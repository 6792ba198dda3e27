"""Mock OpenAI upstreams for the benchmark: `POST /v1/chat/completions` only.

Run: python bench/upstream.py PORT [--server aiohttp|raw]
Non-stream: a fixed small `chat.completion` with usage, answered at once.
`"stream": true`: an SSE stream of exactly 20 content chunks, then a usage
chunk if `stream_options.include_usage` is true, then `data: [DONE]`.
Every byte is prepared at import time (the mock shares a core with the load
generator). Two servers answer the same bytes:
- `aiohttp` (default): an aiohttp application; each stream event is its own
  write, as a real server sends them.
- `raw`: an asyncio protocol on uvloop with a minimal HTTP/1.1 reader
  (keep-alive, Content-Length bodies only) that answers each request with
  one prepared write, streams included: three to five times aiohttp's
  requests/s, so that the gateway, not the mock, is what limits the load.
"""

import argparse
import asyncio
import json

from aiohttp import web

CHUNKS = 20
CREATED = 1_700_000_000

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    },
    separators=(",", ":"),
).encode()


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(index: int) -> bytes:
    last = index == CHUNKS - 1
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f"tok{index} "},
                    "finish_reason": "stop" if last else None,
                }
            ],
        }
    )


CONTENT_EVENTS = [_chunk(i) for i in range(CHUNKS)]
USAGE_EVENT = _event(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": CHUNKS, "total_tokens": 9 + CHUNKS},
    }
)
DONE_EVENT = b"data: [DONE]\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        payload = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
    if not payload.get("stream"):
        return web.Response(body=ANSWER, content_type="application/json")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for event in CONTENT_EVENTS:
        await response.write(event)
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        await response.write(USAGE_EVENT)
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


async def serve_aiohttp(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    await asyncio.Event().wait()  # until the harness kills the process


def _http_response(
    content_type: bytes, body: bytes, *, chunked: bool = False, status: bytes = b"200 OK"
) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\n"
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n" + body
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


RAW_ANSWER = _http_response(b"application/json", ANSWER)
RAW_STREAM = _http_response(
    b"text/event-stream", _chunked([*CONTENT_EVENTS, DONE_EVENT]), chunked=True
)
RAW_STREAM_WITH_USAGE = _http_response(
    b"text/event-stream", _chunked([*CONTENT_EVENTS, USAGE_EVENT, DONE_EVENT]), chunked=True
)
RAW_BAD_REQUEST = _http_response(
    b"application/json", b'{"error":{"message":"invalid JSON"}}', status=b"400 Bad Request"
)


def raw_answer(body: bytes) -> bytes:
    """The whole prepared HTTP response for one request body."""
    if b'"stream"' not in body:  # the common case, without parsing the body
        return RAW_ANSWER
    try:
        payload = json.loads(body)
    except ValueError:
        return RAW_BAD_REQUEST
    if not payload.get("stream"):
        return RAW_ANSWER
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return RAW_STREAM_WITH_USAGE
    return RAW_STREAM


class RawProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: each complete request (headers + Content-Length body) is answered
    at once with one write; a request it cannot read closes the connection."""

    def __init__(self):
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[: end + 2].lower()  # every header line ends with CRLF
            start = head.find(b"\r\ncontent-length:")
            try:
                length = int(head[start + 17 : head.find(b"\r\n", start + 2)]) if start >= 0 else 0
            except ValueError:
                self.transport.close()
                return
            body_end = end + 4 + length
            if len(self.buffer) < body_end:
                return
            body, self.buffer = self.buffer[end + 4 : body_end], self.buffer[body_end:]
            self.transport.write(raw_answer(body))


async def serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


SERVERS = {"aiohttp": serve_aiohttp, "raw": serve_raw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--server", choices=sorted(SERVERS), default="aiohttp")
    args = parser.parse_args()
    serve = SERVERS[args.server](args.port)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve)
    else:
        uvloop.run(serve)


if __name__ == "__main__":
    main()

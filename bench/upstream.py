"""A fast mock OpenAI upstream for the benchmark: `POST /v1/chat/completions` only.

Run: python bench/upstream.py PORT
Non-stream: a fixed small `chat.completion` with usage, answered at once.
`"stream": true`: an SSE stream of exactly 20 content chunks, then a usage
chunk if `stream_options.include_usage` is true, then `data: [DONE]`, each
event written as soon as the previous one is (no delay between them).
Every byte is prepared at import time so that the mock costs as little CPU
as aiohttp allows (it shares a core with the load generator).
"""

import asyncio
import json
import sys

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


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    await asyncio.Event().wait()  # until the harness kills the process


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main()

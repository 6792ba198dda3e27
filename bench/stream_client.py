"""A lean streaming load generator: N keep-alive connections, each looping POSTs for a while.

Run: python bench/stream_client.py --port P --concurrency C --duration S [--auth "Bearer …"]
Uses raw asyncio streams (uvloop when available) and a minimal HTTP/1.1
reader (Content-Length or chunked) so that its own CPU stays small. For each
request it records the total time (request written → end of body) and the
time to first token (→ first bytes of the body that hold a `"content"`
field). Prints one JSON object: counts, RPS, percentiles in microseconds.
"""

import argparse
import asyncio
import json
import sys
import time

BODY = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    separators=(",", ":"),
).encode()
CHUNKS = 20  # content chunks the mock upstream sends per stream


class BadResponse(Exception):
    pass


def request_bytes(port: int, auth: str) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(BODY)}",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


async def one(reader, writer, request: bytes) -> tuple[float, float]:
    """Send one request on an open connection; return (total, ttft) in seconds."""
    clock = time.perf_counter
    started = clock()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise BadResponse(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    lowered = head.lower()
    body = bytearray()
    ttft = None
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected
                break
            body += await reader.readexactly(size + 2)
            if ttft is None and b'"content"' in body:
                ttft = clock() - started
    else:
        start = lowered.find(b"content-length:")
        if start < 0:
            raise BadResponse("neither chunked nor Content-Length")
        length = int(lowered[start + 15 : lowered.find(b"\r\n", start)])
        body += await reader.readexactly(length)
        if b'"content"' in body:
            ttft = clock() - started
    total = clock() - started
    if ttft is None or not body.rstrip().endswith(b"data: [DONE]"):
        raise BadResponse("stream without content or without [DONE]")
    chunks = body.count(b'"delta"')
    if chunks < CHUNKS:
        raise BadResponse(f"expected {CHUNKS} content chunks, got {chunks}")
    return total, ttft


async def worker(port, request, deadline, totals, ttfts, errors) -> None:
    loop = asyncio.get_running_loop()
    reader = writer = None
    while loop.time() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            total, ttft = await one(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            errors.append(repr(e))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        except BadResponse as e:
            errors.append(str(e))
            writer.close()
            reader = writer = None
            continue
        totals.append(total)
        ttfts.append(ttft)
    if writer is not None:
        writer.close()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(port: int, concurrency: int, duration: float, auth: str) -> dict:
    loop = asyncio.get_running_loop()
    request = request_bytes(port, auth)
    totals: list[float] = []
    ttfts: list[float] = []
    errors: list[str] = []
    started = loop.time()
    deadline = started + duration
    await asyncio.gather(
        *(worker(port, request, deadline, totals, ttfts, errors) for _ in range(concurrency))
    )
    elapsed = loop.time() - started
    totals.sort()
    ttfts.sort()
    us = 1e6
    return {
        "requests": len(totals),
        "errors": len(errors),
        "first_errors": errors[:3],
        "duration_s": elapsed,
        "rps": len(totals) / elapsed if elapsed else 0.0,
        "p50_us": percentile(totals, 50) * us,
        "p99_us": percentile(totals, 99) * us,
        "ttft_p50_us": percentile(ttfts, 50) * us,
        "ttft_p99_us": percentile(ttfts, 99) * us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--auth", default="")
    args = parser.parse_args()
    coroutine = run(args.port, args.concurrency, args.duration, args.auth)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""Client CPU per proxied-style request: aiohttp vs httpx against a local server.

Run: .venv/bin/python bench/http_clients.py [requests]
Starts a minimal aiohttp server in a child process (its CPU is not counted),
then times POSTs of a small chat body from each client in this process, at
concurrency 1 and 32, and prints CPU microseconds per request.
"""

import asyncio
import json
import multiprocessing
import socket
import sys
import time

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def serve(sock):
    from aiohttp import web

    async def handler(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    web.run_app(app, sock=sock, print=None, access_log=None)


async def run(client_name: str, url: str, total: int, concurrency: int) -> float:
    if client_name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def one():
            async with session.post(
                url, data=BODY, headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()

        close = session.close
    else:
        import httpx

        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)
        )

        async def one():
            r = await client.post(url, content=BODY, headers={"Content-Type": "application/json"})
            await r.aread()

        close = client.aclose

    async def worker(n):
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm-up
    start = time.process_time()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    cpu = time.process_time() - start
    await close()
    return cpu / (total // concurrency * concurrency) * 1e6


def main():
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    server = multiprocessing.Process(target=serve, args=(sock,), daemon=True)
    server.start()
    time.sleep(1)
    try:
        for concurrency in (1, 32):
            for name in ("aiohttp", "httpx"):
                us = asyncio.run(run(name, url, total, concurrency))
                print(f"{name:8} concurrency {concurrency:3}: {us:7.1f} us CPU per request")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()

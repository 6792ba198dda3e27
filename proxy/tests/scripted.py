"""A scripted upstream on loopback: each test says exactly what it answers, however wrong.

The stand-in in `upstream.py` is a well-behaved OpenAI server with switchable
faults; this one answers whatever `handler` returns (redirects, bodies of the
wrong shape, endless lines, compression bombs), to test what the gateway lets
through. It counts requests and the most it served at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

START_TIMEOUT_SECONDS = 10.0


class ScriptedUpstream:
    """`handler(request) -> web.StreamResponse` is awaited for every request to any path."""

    def __init__(self):
        self.handler = None
        self.requests = 0
        self.active = 0
        self.peak = 0
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await request.read()
            return await self.handler(request)
        finally:
            self.active -= 1

    def __enter__(self) -> ScriptedUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        ready = threading.Event()

        async def run():
            self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._serve)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            ready.set()
            await self._stopped.wait()
            await runner.cleanup()

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("the scripted upstream did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(START_TIMEOUT_SECONDS)

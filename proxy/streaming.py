"""Reading an upstream's server-sent events, with first-byte, idle and keep-alive timing."""

import asyncio

KEEPALIVE = object()


class UpstreamStreamError(Exception):
    """The upstream's stream broke or carried something that is not an OpenAI chunk."""


async def sse_events(response, *, first_deadline: float, idle: float, keepalive: float):
    """Yield each `data:` payload (bytes) of `response` as it arrives.

    Yields KEEPALIVE whenever the upstream has been silent for `keepalive`
    seconds; raises TimeoutError when the first line has not come by
    `first_deadline` (loop time) or a later one takes longer than `idle`.
    Ends at the end of the body.
    """
    loop = asyncio.get_running_loop()
    deadline = first_deadline
    content = response.content
    buffer = b""
    while True:
        wait = min(keepalive, deadline - loop.time())
        if wait <= 0:
            raise TimeoutError
        # readany() takes bytes only once they are there, so a keep-alive tick
        # that cancels it loses nothing; lines are split here, not by aiohttp.
        timer = asyncio.timeout(wait)
        try:
            async with timer:
                chunk = await content.readany()
        except TimeoutError:
            if not timer.expired():
                raise  # the upstream session's own timeout, not ours
            if loop.time() >= deadline:
                raise
            yield KEEPALIVE
            continue
        if not chunk:
            if buffer.startswith(b"data:"):
                yield buffer[5:].strip()
            return
        deadline = loop.time() + idle
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()

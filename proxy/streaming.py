"""Reading an upstream's server-sent events, with first-byte, idle and keep-alive timing."""

import asyncio

KEEPALIVE = object()


class UpstreamStreamError(Exception):
    """The upstream's stream broke or carried something that is not an OpenAI chunk."""


async def sse_events(
    response, *, first_deadline: float, idle: float, keepalive: float, max_line: int
):
    """Yield each `data:` payload (bytes) of `response` as it arrives.

    Yields KEEPALIVE whenever the upstream has been silent for `keepalive`
    seconds; raises TimeoutError when the first line has not come by
    `first_deadline` (loop time) or the upstream then stays silent longer
    than `idle`, counted only while this generator waits on it (time the
    consumer spends writing to a slow client is not the upstream's).
    Raises UpstreamStreamError for a line longer than `max_line` bytes,
    without holding more than that of it. Ends at the end of the body.
    """
    loop = asyncio.get_running_loop()
    deadline = first_deadline
    content = response.content
    partial: list[bytes] = []  # the pieces of a line not yet ended
    partial_size = 0
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
            line = b"".join(partial)
            if line.startswith(b"data:"):
                yield line[5:].strip()
            return
        if b"\n" not in chunk:
            partial.append(chunk)
            partial_size += len(chunk)
            if partial_size > max_line:
                raise UpstreamStreamError("an event line is too long")
        else:
            if partial:
                chunk = b"".join((*partial, chunk))
            *lines, rest = chunk.split(b"\n")
            partial, partial_size = ([rest], len(rest)) if rest else ([], 0)
            for line in lines:
                if len(line) > max_line:
                    raise UpstreamStreamError("an event line is too long")
                if line.startswith(b"data:"):
                    yield line[5:].strip()
        deadline = loop.time() + idle

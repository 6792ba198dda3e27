"""Relaying an upstream's answer to the client: one JSON body, an SSE stream, or other media.

Each relay owns its response from start to end: a JSON answer is checked
whole before a byte is sent; a stream starts with its first chunk (or a
keep-alive), and ends with `[DONE]` or, once started, with the documented
error event, never a fake `[DONE]`. A failure before the first byte is a
`Retryable`, so that another candidate may still answer. Usage is counted
here, from the upstream's numbers or estimated from the text.
"""

import asyncio
import struct
import time

import aiohttp
from django.conf import settings

from proxy import errors, upstream, usage
from proxy.accounting import Exchange
from proxy.asgi_io import Responder
from proxy.codec import dumps, loads
from proxy.errors import Retryable
from proxy.formats.openai import chunk_text, transcript_delta, transcript_done, usage_chunk
from proxy.streaming import KEEPALIVE, UpstreamStreamError, sse_events

# What a JSON answer not shaped like the operation's raises while it is read.
MALFORMED = (ValueError, TypeError, AttributeError, struct.error, aiohttp.ClientError)


async def relay_json(
    ex: Exchange,
    op,
    payload: dict,
    response,
    deadline: float,
    responder: Responder,
    headers,
    decode=None,
) -> None:
    """Read the whole answer by `deadline` (loop time), check and finish it, then send it.

    `decode(data)`, if given, makes the upstream's answer the operation's format first.
    """
    try:
        async with asyncio.timeout_at(deadline):
            data = loads(await upstream.read_body(response))
        if decode is not None:
            data = decode(data)
        if op.answer_items:
            items = data.get(op.answer_items)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("not shaped like the operation's answer")
        text = op.count(data, payload, ex)
        op.finish(data, payload, ex)
        body = dumps(data)
    except TimeoutError:
        raise Retryable("timeout", errors.upstream_timeout(ex.model_name)) from None
    except MALFORMED:
        # Not JSON, too large, or not shaped like an OpenAI answer: nothing to bill.
        ex.set_usage(usage.NOTHING)
        raise Retryable("invalid response", errors.invalid_response(ex.model_name)) from None
    if ex.key.log_content:
        ex.completion.append(text)
    ex.ttft = time.perf_counter() - ex.started
    await responder.json(200, body, headers)


def upstream_events(ex: Exchange, response, deadline: float):
    """The upstream's SSE `data:` payloads, with the endpoint's and the settings' timing."""
    return sse_events(
        response,
        first_deadline=deadline,
        idle=ex.deployment.endpoint.idle_timeout,
        keepalive=settings.AETHERGATE_SSE_KEEPALIVE_SECONDS,
        max_line=settings.AETHERGATE_MAX_SSE_LINE_BYTES,
    )


def chat_chunk(event: bytes) -> dict:
    """An upstream's SSE payload as a chat chunk; UpstreamStreamError if it is not one."""
    chunk = loads(event)
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
        raise UpstreamStreamError("invalid chunk")
    if "error" in chunk:
        raise UpstreamStreamError("the upstream reported an error")
    return chunk


async def keep_alive(responder: Responder, headers) -> None:
    """An SSE comment while the upstream is silent, starting the stream if need be."""
    if not responder.started:
        await responder.start_stream(headers)
    await responder.chunk(b": keep-alive\n\n")


async def relay_stream(
    ex: Exchange,
    op,
    payload: dict,
    response,
    deadline: float,
    responder: Responder,
    headers,
    events=None,
) -> None:
    """Relay each chunk as it comes, with the public model name; usage only if asked for.

    `events`, if given, are the chunks' payloads made from the upstream's own format.
    """
    options = payload.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if events is None:
        events = upstream_events(ex, response, deadline)
    done = finished = usage_sent = False
    counted = None
    last = None
    shape = op.chunk_shaper(ex)
    send = responder.send  # once per chunk below: no method call in between
    try:
        async for event in events:
            if event is KEEPALIVE:
                await keep_alive(responder, headers)
                continue
            if event == b"[DONE]":
                done = True
                break
            chunk = chat_chunk(event)
            # The usage (and llama.cpp's timings) comes in the last chunk with choices,
            # or in one of its own without them (`stream_options.include_usage`).
            reported = usage.from_upstream(chunk.get("usage"), chunk.get("timings"))
            if reported is not None:
                counted = reported
            if not wants_usage and "usage" in chunk:
                if not chunk.get("choices"):
                    continue
                del chunk["usage"]
            chunk.setdefault("choices", [])
            chunk["model"] = ex.model_name
            if shape(chunk):
                finished = True
            usage_sent = usage_sent or reported is not None
            last = chunk
            text = chunk_text(chunk)
            if text:
                ex.completion.append(text)
                if ex.ttft is None:
                    ex.ttft = time.perf_counter() - ex.started
            if not responder.started:
                await responder.start_stream(headers)
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
        if not done:
            raise UpstreamStreamError("the upstream ended the stream early")
        if not finished:
            # llama-cpp-python ends a stream another request interrupted with a bare
            # [DONE]: the answer is cut short, which the client must be told.
            raise UpstreamStreamError("the upstream ended the stream without a finish reason")
        if wants_usage and not usage_sent:
            # The client asked for usage and the upstream (llama-cpp-python, LM Studio)
            # sent none: the gateway's own count, flagged as estimated in the log.
            ex.set_usage(*usage.count(counted, payload, "".join(ex.completion)))
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + dumps(usage_chunk(last, ex)) + b"\n\n",
                    "more_body": True,
                }
            )
    except Exception as exc:  # a broken stream or a chunk not shaped like OpenAI's
        error = broken(ex, exc, responder)
        await responder.end(errors.data_event(error))
    else:
        if not responder.started:
            await responder.start_stream(headers)
        await responder.end(b"data: [DONE]\n\n")
    finally:
        await events.aclose()
        if responder.started:
            # Billed only for what reached the client: an attempt that failed
            # before its first byte is an upstream error, charged nothing.
            text = "".join(ex.completion)
            ex.set_usage(*usage.count(counted, payload, text))
        if not ex.key.log_content:
            ex.completion.clear()


def broken(ex: Exchange, exc: Exception, responder: Responder) -> errors.APIError:
    """What a stream that broke with `exc` means: before its first byte, a Retryable
    (raised); after, the error the client is told of, recorded on `ex`."""
    timed_out = isinstance(exc, TimeoutError)
    if timed_out:
        error = errors.upstream_timeout(ex.model_name)
    else:
        error = errors.invalid_response(ex.model_name, mid_stream=responder.started)
    if not responder.started:
        raise Retryable("timeout" if timed_out else "stream failed", error) from None
    ex.failed(error.status, error.outcome, error.message)
    return error


def relay_answer(ex: Exchange, op, payload: dict, response, deadline, responder, headers):
    """Chat, completions, embeddings, images: a stream when asked for, else one JSON body."""
    relay = relay_stream if ex.stream else relay_json
    return relay(ex, op, payload, response, deadline, responder, headers)


def media_type(response) -> bytes:
    """The upstream's Content-Type, fit to pass on (printable, bounded)."""
    value = response.headers.get("Content-Type", "")
    if not value or len(value) > 200 or not value.isascii() or not value.isprintable():
        return b"application/octet-stream"
    return value.encode()


async def relay_transcript(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    """A transcript: its events when streamed, its JSON, or its text (text, srt, vtt)."""
    if ex.stream:
        await relay_events(ex, op, payload, response, deadline, responder, headers)
        return
    media = media_type(response)
    if media.split(b";", 1)[0].strip().endswith(b"json"):
        await relay_json(ex, op, payload, response, deadline, responder, headers)
        return
    try:
        async with asyncio.timeout_at(deadline):
            body = await upstream.read_body(response)
        text = op.count(body.decode(), payload, ex)
    except TimeoutError:
        raise Retryable("timeout", errors.upstream_timeout(ex.model_name)) from None
    except MALFORMED:  # too large, or not text
        ex.set_usage(usage.NOTHING)
        raise Retryable("invalid response", errors.invalid_response(ex.model_name)) from None
    if ex.key.log_content:
        ex.completion.append(text)
    ex.ttft = time.perf_counter() - ex.started
    await responder.body(200, media, body, headers)


async def relay_events(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    """A transcript's events (`transcript.text.delta`, then `transcript.text.done`), each
    passed on as it comes; the done event's usage counted. The stream must end with it.

    vLLM streams chat-shaped chunks instead, ended by `[DONE]`: they are told as
    OpenAI's events, their usage in the done event the gateway adds.
    """
    events = upstream_events(ex, response, deadline)
    done = None
    chunked = False  # the upstream sends chat-shaped chunks
    counted = None
    try:
        async for event in events:
            if event is KEEPALIVE:
                await keep_alive(responder, headers)
                continue
            if event == b"[DONE]" and chunked:
                done = transcript_done("".join(ex.completion), counted)
                event = dumps(done)
            elif event != b"[DONE]":
                data = loads(event)
                if type(data) is not dict or "error" in data or data.get("type") == "error":
                    raise UpstreamStreamError("the upstream reported an error")
                if "type" not in data and type(data.get("choices")) is list:
                    chunked = True
                    counted = usage.from_upstream(data.get("usage")) or counted
                    data = transcript_delta(data)
                    if data is None:
                        continue
                    event = dumps(data)
                kind = data.get("type")
                if kind == "transcript.text.delta" and type(data.get("delta")) is str:
                    ex.completion.append(data["delta"])
                    if ex.ttft is None:
                        ex.ttft = time.perf_counter() - ex.started
                elif kind == "transcript.text.done":
                    if type(data.get("text")) is not str:
                        raise UpstreamStreamError("a done event without text")
                    done = data
            if not responder.started:
                await responder.start_stream(headers)
            await responder.chunk(b"data: " + event + b"\n\n")
        if done is None:
            raise UpstreamStreamError("the upstream ended the stream before its done event")
    except Exception as exc:
        error = broken(ex, exc, responder)
        await responder.end(errors.data_event(error))
    else:
        await responder.end()
    finally:
        await events.aclose()
        if responder.started:
            # Billed once the client has seen the answer begin, as chat streams are.
            op.count(done or "".join(ex.completion), payload, ex)
        if not ex.key.log_content:
            ex.completion.clear()


async def relay_bytes(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    """Speech: the upstream's audio, relayed as it arrives with its media type.

    Audio has no way to carry an error once it has started: a failure then
    leaves the answer unfinished, and the server closes the connection, so
    that the client sees it cut short rather than complete.
    """
    media = media_type(response)
    content = response.content
    try:
        if media.startswith(b"application/json"):
            raise ValueError("a JSON answer where audio was expected")
        async with asyncio.timeout_at(deadline):
            chunk = await content.readany()
        if not chunk:
            raise ValueError("an empty answer")
    except TimeoutError:
        raise Retryable("timeout", errors.upstream_timeout(ex.model_name)) from None
    except MALFORMED:
        raise Retryable("invalid response", errors.invalid_response(ex.model_name)) from None
    op.count(None, payload, ex)
    ex.ttft = time.perf_counter() - ex.started
    await responder.start_body(media, headers)
    idle = ex.deployment.endpoint.idle_timeout
    try:
        while chunk:
            await responder.chunk(chunk)
            async with asyncio.timeout(idle):
                chunk = await content.readany()
    except (TimeoutError, aiohttp.ClientError) as exc:
        broken(ex, exc, responder)
        return
    await responder.end()

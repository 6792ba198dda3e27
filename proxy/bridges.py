"""How a request in one API reaches an upstream that speaks another, and its answer comes back.

Chat Completions is the one intermediate. A `/v1/responses` or `/v1/messages`
request is translated once into a chat body (`proxy.formats.responses`,
`proxy.formats.messages`); each attempt then sends it as the chosen
deployment's server speaks: chat as it is, or as Anthropic Messages
(`proxy.formats.anthropic`) to an Anthropic endpoint. The answer comes back
the same way, stream or JSON. Where the endpoint speaks the client's own API
(Responses on one marked `native_responses`, Messages on Anthropic), the
request and its answer pass through with only the model, ids and usage
touched. Admission, forwarding and accounting are the pipeline's, as for chat.
"""

import asyncio
import logging
import time
from typing import NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from proxy import errors, relay, stored, upstream, usage
from proxy.accounting import Exchange
from proxy.asgi_io import Responder, Scope, headers_named
from proxy.codec import dumps, loads
from proxy.errors import Retryable
from proxy.formats import anthropic, messages, openai, responses
from proxy.formats.ids import new_id
from proxy.snapshot import DeploymentInfo, ModelInfo
from proxy.streaming import KEEPALIVE, UpstreamStreamError

log = logging.getLogger(__name__)

ANTHROPIC = upstream.ANTHROPIC  # the endpoint kind whose server speaks Anthropic's Messages API
# The Anthropic headers a Messages client's request carries on to an Anthropic upstream.
FORWARDED = (b"anthropic-version", b"anthropic-beta")


class Wire(NamedTuple):
    """One attempt's upstream call: path (after the base URL), body, extra headers, relay;
    `verbatim`: the request is in the upstream's own API, whose refusals are passed on
    with their status and words (forwarding.rejection)."""

    path: str
    body: bytes
    headers: dict[str, str] | None
    relay: object
    verbatim: bool = False


def encode(events: list[dict]) -> bytes:
    """Server-sent events as the agent APIs write them: `event: <type>`, then its data."""
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"
        for event in events
    )


def output_cap(model: ModelInfo, chat: dict) -> int:
    """The `max_tokens` an Anthropic upstream requires: the client's, else the model's."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = chat.get(name)
        if type(value) is int and value > 0:
            return value
    return model.max_output_tokens or settings.AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS


def anthropic_body(chat: dict, model: ModelInfo, deployment: DeploymentInfo, stream: bool):
    body = anthropic.from_chat(
        {**chat, "model": deployment.upstream_name}, max_tokens=output_cap(model, chat)
    )
    body["stream"] = stream
    return dumps(body)


class Translated:
    """What a translated request keeps for all its attempts: the client's API (`encoder`,
    `answer`), its chat body (`chat`), and which format the current attempt's upstream
    speaks (`upstream`: "chat" or ANTHROPIC)."""

    chat: dict
    upstream: str = "chat"
    refused: errors.APIError | None = None

    def translate(self, make) -> None:
        """`chat = make()`; what it refuses is refused only where the request is translated:
        a server of the client's own API takes it as it is (Claude Code's web search tool
        on Anthropic, say). Meanwhile the client's body stands in for the chat body where
        only its text is read (the token estimates)."""
        try:
            self.chat = make()
        except errors.APIError as refused:
            self.chat, self.refused = self.payload, refused

    def wire(self, model: ModelInfo, deployment: DeploymentInfo, stream: bool) -> Wire:
        """The chat body sent as `deployment`'s server speaks it."""
        if self.refused is not None:
            raise self.refused
        if deployment.endpoint.kind == ANTHROPIC:
            self.upstream = ANTHROPIC
            return Wire(
                "/messages",
                anthropic_body(self.chat, model, deployment, stream),
                None,
                relay_translated,
            )
        self.upstream = "chat"
        body = openai.prepare_generation(self.chat, model, deployment, stream)
        return Wire("/chat/completions", body, None, relay_translated)

    def encoder(self, ex: Exchange):
        raise NotImplementedError

    def answer(self, chat: dict, ex: Exchange, used: usage.Usage) -> dict:
        raise NotImplementedError

    async def completed(self, ex: Exchange, answer: dict) -> None:
        """Called with the client's whole answer before its last bytes are sent."""

    async def streamed(self, ex: Exchange, encoder) -> None:
        """Called once a stream's `encoder` has finished, before its last bytes are sent."""


# --------------------------------------------------------------------------- Responses


class ResponsesBridge(Translated):
    """A `/v1/responses` request: translated onto chat, or passed to a Responses server;
    stored (`store`, default true) before its end reaches the client."""

    def __init__(self, payload: dict, history: list[dict], ex: Exchange):
        self.payload = payload
        self.history = history
        self.items = responses.input_items(payload)
        self.translate(lambda: responses.to_chat(payload, history))
        self.response_id = new_id("resp_")
        self.created_at = int(ex.created_at.timestamp())
        self.store = payload.get("store") is not False

    def prepare(self, op, payload, model, deployment, stream) -> Wire:
        if deployment.endpoint.native_responses:
            # The gateway keeps the conversation: the server gets all of it, and stores nothing.
            body = {**payload, "model": deployment.upstream_name, "store": False}
            body.pop("previous_response_id", None)
            body["input"] = [*replayable(self.history), *self.items]
            return Wire("/responses", dumps(body), None, relay_native_responses, verbatim=True)
        return self.wire(model, deployment, stream)

    def encoder(self, ex: Exchange):
        return responses.ResponsesStream(
            self.payload,
            response_id=self.response_id,
            created_at=self.created_at,
            model=ex.model_name,
        )

    def answer(self, chat: dict, ex: Exchange, used: usage.Usage) -> dict:
        return responses.from_chat(
            chat,
            self.payload,
            response_id=self.response_id,
            created_at=self.created_at,
            model=ex.model_name,
            used=used,
        )

    async def streamed(self, ex: Exchange, encoder) -> None:
        await self.completed(ex, encoder.response)

    async def completed(self, ex: Exchange, answer: dict) -> None:
        if not self.store or answer.get("status") not in ("completed", "incomplete"):
            return
        try:
            await sync_to_async(stored.save)(
                response=answer,
                input_items=self.items,
                owner_id=ex.key.user_id,
                key_id=ex.key.id,
                log_content=ex.key.log_content,
                created_at=ex.created_at,
            )
        except Exception:
            # The answer is still the client's; only a later previous_response_id
            # to it will not be found.
            log.exception("Stored response %s could not be saved", self.response_id)


def replayable(items: list[dict]) -> list[dict]:
    """History items a Responses server accepts back when it stores nothing: reasoning
    only with its encrypted content (a server cannot look one up by id)."""
    return [i for i in items if i.get("type") != "reasoning" or i.get("encrypted_content")]


async def responses_bridge(runtime, ex: Exchange, payload: dict, scope: Scope) -> ResponsesBridge:
    """The bridge for a Responses request, with the conversation its
    `previous_response_id` continues (a key sees only its owner's responses)."""
    history = []
    previous = payload.get("previous_response_id")
    if previous is not None:
        try:
            history = await sync_to_async(stored.history)(
                owner_id=ex.key.user_id, response_id=previous
            )
        except stored.NotFound:
            raise errors.bad_request(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            ) from None
        except DatabaseError:
            raise errors.store_unavailable() from None
    return ResponsesBridge(payload, history, ex)


# --------------------------------------------------------------------------- Messages


def anthropic_error_event(error: errors.APIError) -> bytes:
    """`error` as the event that ends a started Messages stream."""
    return encode([messages.error_event(error)])


class MessagesBridge(Translated):
    """A `/v1/messages` request: passed through to an Anthropic server, with its
    `anthropic-version` and `anthropic-beta` headers; translated onto chat for any other."""

    def __init__(self, payload: dict, scope: Scope):
        self.payload = payload
        self.translate(lambda: messages.to_chat(payload))
        self.message_id = new_id("msg_")
        self.forwarded = self.forwarded_headers(scope)

    @staticmethod
    def forwarded_headers(scope: Scope) -> dict[str, str]:
        """The client's Anthropic headers, for an Anthropic upstream (upstream.py checks them)."""
        found = {}
        for name in FORWARDED:
            values = headers_named(scope, name)
            if values:
                found[name.decode()] = ",".join(v.decode("latin-1") for v in values)
        return found

    def prepare(self, op, payload, model, deployment, stream) -> Wire:
        if deployment.endpoint.kind == ANTHROPIC:
            body = dumps({**payload, "model": deployment.upstream_name})
            return Wire("/messages", body, self.forwarded, relay_native_messages, verbatim=True)
        return self.wire(model, deployment, stream)

    def encoder(self, ex: Exchange):
        return messages.MessagesStream(
            self.payload,
            message_id=self.message_id,
            model=ex.model_name,
            input_tokens=messages.estimate_input_tokens(self.payload),
        )

    def answer(self, chat: dict, ex: Exchange, used: usage.Usage) -> dict:
        return messages.from_chat(
            chat, self.payload, message_id=self.message_id, model=ex.model_name, used=used
        )


async def messages_bridge(runtime, ex: Exchange, payload: dict, scope: Scope) -> MessagesBridge:
    return MessagesBridge(payload, scope)


# --------------------------------------------------------------------------- chat on Anthropic


class ChatOnAnthropic:
    """A chat request to an Anthropic endpoint: the body translated, the answer back as chat
    (made on the first such attempt; other attempts are chat's own)."""

    def prepare(self, op, payload, model, deployment, stream) -> Wire:
        if deployment.endpoint.kind != ANTHROPIC:
            return Wire(
                op.upstream_path, op.prepare(payload, model, deployment, stream), None, op.relay
            )
        return Wire(
            "/messages", anthropic_body(payload, model, deployment, stream), None, chat_relay
        )


def bridge_for(op, endpoint):
    """The bridge a chat-format operation needs for `endpoint`, or None (the usual case)."""
    if endpoint.kind != ANTHROPIC:
        return None
    if op.path != "/v1/chat/completions":
        raise errors.bad_request(
            f"This model's upstream speaks Anthropic's Messages API, which has no "
            f"{op.path.removeprefix('/v1/')} endpoint.",
            code="unsupported_endpoint",
        )
    return ChatOnAnthropic()


async def chat_relay(ex: Exchange, op, payload, response, deadline, responder, headers) -> None:
    """An Anthropic answer relayed to a chat client as chat."""
    if ex.stream:
        events = as_chat(relay.upstream_events(ex, response, deadline))
        await relay.relay_stream(
            ex, op, payload, response, deadline, responder, headers, events=events
        )
    else:
        await relay.relay_json(
            ex, op, payload, response, deadline, responder, headers, decode=anthropic.to_chat
        )


async def as_chat(events):
    """An Anthropic stream's payloads as chat chunks' (then `[DONE]` after message_stop)."""
    chunks = anthropic.ChatChunks()
    try:
        async for event in events:
            if event is KEEPALIVE:
                yield event
                continue
            for chunk in chunks.feed(loads(event)):
                yield dumps(chunk)
            if chunks.finished:
                yield b"[DONE]"
                return
    finally:
        await events.aclose()


def chat_events(ex: Exchange, response, deadline: float):
    """The upstream's stream as chat chunks' payloads, whatever format it speaks."""
    events = relay.upstream_events(ex, response, deadline)
    return as_chat(events) if ex.bridge.upstream == ANTHROPIC else events


# --------------------------------------------------------------------------- translated relays


async def relay_translated(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    if ex.stream:
        await relay_translated_stream(ex, payload, response, deadline, responder, headers)
    else:
        await relay_translated_json(ex, payload, response, deadline, responder, headers)


async def relay_translated_json(ex, payload, response, deadline, responder, headers) -> None:
    """A whole chat (or Anthropic) answer, checked, counted and sent in the client's API."""
    bridge = ex.bridge

    def read(data):
        if bridge.upstream == ANTHROPIC:
            data = anthropic.to_chat(data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("not a chat answer")
        return data, openai.answer_text(data), usage.from_upstream(data.get("usage"))

    def answer(chat, used):
        return bridge.answer(chat, ex, used)

    await relay_whole(ex, response, deadline, responder, headers, read, answer)


async def relay_whole(ex, response, deadline, responder, headers, read, answer=None) -> None:
    """Read the whole answer by `deadline`: `read(data)` -> (data, its text, the usage it
    reports or None) raises ValueError for one not shaped as it must be; count it as chat
    is counted, make it the client's (`answer(data, usage)`, when it is translated), store
    it if the bridge does, and send it."""
    try:
        async with asyncio.timeout_at(deadline):
            data = loads(await upstream.read_body(response))
        data, text, counted = read(data)
        used, estimated = usage.count(counted, ex.bridge.chat, text)
        if answer is not None:
            data = answer(data, used)
    except TimeoutError:
        raise Retryable("timeout", errors.upstream_timeout(ex.model_name)) from None
    except relay.MALFORMED:
        ex.set_usage(usage.NOTHING)
        raise Retryable("invalid response", errors.invalid_response(ex.model_name)) from None
    ex.set_usage(used, estimated)
    if ex.key.log_content:
        ex.completion.append(text)
    ex.ttft = time.perf_counter() - ex.started
    await ex.bridge.completed(ex, data)
    await responder.json(200, dumps(data), headers)


async def relay_translated_stream(ex, payload, response, deadline, responder, headers) -> None:
    """Chat chunks as they come, each told in the client's API by its encoder; the
    closing events carry the usage counted as for chat."""
    bridge = ex.bridge
    encoder = bridge.encoder(ex)
    events = chat_events(ex, response, deadline)
    counted = None
    done = finished = False
    try:
        async for event in events:
            if event is KEEPALIVE:
                await relay.keep_alive(responder, headers)
                continue
            if event == b"[DONE]":
                done = True
                break
            chunk = relay.chat_chunk(event)
            reported = usage.from_upstream(chunk.get("usage"), chunk.get("timings"))
            if reported is not None:
                counted = reported
            choices = chunk.get("choices") or ()
            if any(type(c) is not dict for c in choices):
                raise UpstreamStreamError("a choice that is not an object")
            finished = finished or any(c.get("finish_reason") is not None for c in choices)
            text = openai.chunk_text(chunk)
            if text:
                ex.completion.append(text)
                if ex.ttft is None:
                    ex.ttft = time.perf_counter() - ex.started
            if not responder.started:
                await responder.start_stream(headers)
                await responder.chunk(encode(encoder.start()))
            out = encoder.feed(chunk)
            if out:
                await responder.chunk(encode(out))
        if not done:
            raise UpstreamStreamError("the upstream ended the stream early")
        if not finished:
            raise UpstreamStreamError("the upstream ended the stream without a finish reason")
        used, estimated = usage.count(counted, bridge.chat, "".join(ex.completion))
        ex.set_usage(used, estimated)
        if not responder.started:
            await responder.start_stream(headers)
            await responder.chunk(encode(encoder.start()))
        closing = encoder.finish(used)
        await bridge.streamed(ex, encoder)
    except Exception as exc:  # a broken stream or a chunk not shaped like chat's
        error = relay.broken(ex, exc, responder)
        await responder.end(encode(encoder.fail(error)))
    else:
        await responder.end(encode(closing))
    finally:
        await events.aclose()
        if responder.started:
            ex.set_usage(*usage.count(counted, bridge.chat, "".join(ex.completion)))
        if not ex.key.log_content:
            ex.completion.clear()


# --------------------------------------------------------------------------- passed through


async def relay_native_responses(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    """A Responses server's answer as it is, with the gateway's response id and public model."""
    if ex.stream:
        await relay_native_stream(ex, response, deadline, responder, headers, ResponsesPass(ex))
        return

    def read(data):
        if data.get("object") != "response" or not isinstance(data.get("output"), list):
            raise ValueError("not a Response")
        bridge_response(ex, data)
        return data, responses_text(data["output"]), usage.from_responses(data.get("usage"))

    await relay_whole(ex, response, deadline, responder, headers, read)


def bridge_response(ex: Exchange, data: dict) -> None:
    """A Responses server's Response object made the gateway's, in place."""
    bridge = ex.bridge
    data["id"] = bridge.response_id
    data["model"] = ex.model_name
    data["previous_response_id"] = bridge.payload.get("previous_response_id")
    data["store"] = bridge.store


def responses_text(output) -> str:
    """The text of a Response's output messages."""
    texts = []
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "".join(texts)


async def relay_native_messages(
    ex: Exchange, op, payload: dict, response, deadline: float, responder: Responder, headers
) -> None:
    """An Anthropic server's answer as it is, with the public model name."""
    if ex.stream:
        await relay_native_stream(ex, response, deadline, responder, headers, MessagesPass(ex))
        return

    def read(data):
        if data.get("type") != "message" or not isinstance(data.get("content"), list):
            raise ValueError("not a Message")
        data["model"] = ex.model_name
        text = "".join(
            b["text"]
            for b in data["content"]
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        return data, text, usage.from_messages(data.get("usage"))

    await relay_whole(ex, response, deadline, responder, headers, read)


class ResponsesPass:
    """What a passed-through Responses stream's events say: text, usage, its end."""

    FAILED = ("response.failed", "error")

    def __init__(self, ex: Exchange):
        self.ex = ex
        self.counted = None
        self.final = None  # the terminal event's response
        self.sequence = -1  # the last event's sequence_number

    def see(self, event: dict) -> bool:
        """Read (and make the gateway's) one event; whether it ends the stream."""
        kind = event.get("type")
        if type(event.get("sequence_number")) is int:
            self.sequence = event["sequence_number"]
        found = event.get("response")
        if isinstance(found, dict):
            bridge_response(self.ex, found)
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            return self.text(event["delta"])
        if kind in ("response.completed", "response.incomplete"):
            if not isinstance(found, dict):
                raise UpstreamStreamError("a terminal event without its response")
            self.counted = usage.from_responses(found.get("usage"))
            self.final = found
            return True
        if kind in self.FAILED:
            raise UpstreamStreamError("the upstream reported an error")
        return False

    def text(self, piece: str) -> bool:
        ex = self.ex
        if piece:
            ex.completion.append(piece)
            if ex.ttft is None:
                ex.ttft = time.perf_counter() - ex.started
        return False

    async def ending(self) -> None:
        await self.ex.bridge.completed(self.ex, self.final)

    def used(self, text: str) -> tuple[usage.Usage, bool]:
        """(usage, estimated) of what the stream relayed, its text `text`."""
        return usage.count(self.counted, self.ex.bridge.chat, text)

    def fail(self, error: errors.APIError) -> list[dict]:
        return [
            {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": None,
                "sequence_number": self.sequence + 1,
            }
        ]


class MessagesPass(ResponsesPass):
    """What a passed-through Anthropic stream's events say: text, usage, its end."""

    def __init__(self, ex: Exchange):
        super().__init__(ex)
        self.usage = {}
        self.delta_seen = False  # message_delta, which carries the output's count

    def see(self, event: dict) -> bool:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise UpstreamStreamError("message_start without its message")
            message["model"] = self.ex.model_name
            self.merge(message.get("usage"))
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                return self.text(delta["text"])
        elif kind == "message_delta":
            self.delta_seen = True
            self.merge(event.get("usage"))
        elif kind == "message_stop":
            return True
        elif kind == "error":
            raise UpstreamStreamError("the upstream reported an error")
        return False

    def merge(self, found) -> None:
        # message_delta's usage is cumulative and may restate the input's counts.
        if isinstance(found, dict):
            self.usage.update((k, v) for k, v in found.items() if v is not None)
            self.counted = usage.from_messages(self.usage)

    async def ending(self) -> None:
        pass

    def used(self, text: str) -> tuple[usage.Usage, bool]:
        counted = self.counted
        if counted is None or self.delta_seen:
            return super().used(text)
        # Cut before message_delta: the input as the upstream counted it (message_start),
        # the output estimated from what was relayed.
        output = max(counted.output, usage.estimate_tokens(text))
        return counted._replace(output=output), True

    def fail(self, error: errors.APIError) -> list[dict]:
        return [messages.error_event(error)]


async def relay_native_stream(ex, response, deadline, responder, headers, seen) -> None:
    """The upstream's events relayed as they come, each read by `seen` (a ResponsesPass
    or MessagesPass), written with its `event:` line; the stream must reach its end."""
    events = relay.upstream_events(ex, response, deadline)
    ended = False
    try:
        async for event in events:
            if event is KEEPALIVE:
                await relay.keep_alive(responder, headers)
                continue
            if event == b"[DONE]":
                continue
            data = loads(event)
            if type(data) is not dict or type(data.get("type")) is not str:
                raise UpstreamStreamError("an event without a type")
            ended = seen.see(data)
            if ended:
                await seen.ending()
            if not responder.started:
                await responder.start_stream(headers)
            await responder.chunk(encode([data]))
            if ended:
                break
        if not ended:
            raise UpstreamStreamError("the upstream ended the stream early")
    except Exception as exc:
        error = relay.broken(ex, exc, responder)
        await responder.end(encode(seen.fail(error)))
    else:
        await responder.end()
    finally:
        await events.aclose()
        if responder.started:
            ex.set_usage(*seen.used("".join(ex.completion)))
        if not ex.key.log_content:
            ex.completion.clear()

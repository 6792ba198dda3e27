"""An OpenAI-compatible upstream stand-in on loopback that behaves as each model name says."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from typing import Any

from aiohttp import MultipartReader, web

from aethergate.testing import wait_for
from proxy.tests import media

PREFIX = "Hello from upstream: "
DEFAULT_CHUNKS = 20
EMBEDDING_DIMENSIONS = 8
SILENT_CAP_SECONDS = 60.0
DEFAULT_MODEL_IDS = ("echo", "echo-embed")
ERROR_TEMPLATE = "upstream says {code} (internal host 10.0.0.7, key sk-upstream-secret)"
START_TIMEOUT_SECONDS = 10.0
# Images: `n` PNGs of `size` (this when `auto` or absent); usage counts per image.
DEFAULT_IMAGE_SIZE = (1024, 1024)
IMAGE_SIZES = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")  # WIDTHxHEIGHT
IMAGE_OUTPUT_TOKENS = 100  # `usage.output_tokens` per image returned
MAX_IMAGES = 10
MAX_IMAGE_SIDE = 4096  # pixels: a larger PNG would take the stand-in too long to make
REVISED_PROMPT_PREFIX = "A revised picture of: "  # `revised_prompt` (dall-e-3 names only)
# Audio in: a WAV's length comes from its header; any other file is taken to be a
# 128 kbit/s MP3, 16000 bytes a second.
NON_WAV_BYTES_PER_SECOND = 16000
AUDIO_TOKENS_PER_SECOND = 10  # audio tokens in token-shaped usage (transcript and speech streams)
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
UPLOAD_CHUNK_BYTES = 64 * 1024  # an upload is read, hashed and counted this much at a time
UPLOAD_HEAD_BYTES = 64 * 1024  # what is kept of it: enough for a WAV header
# Audio out: a WAV (whatever `response_format` labels it) lasting this long per character of
# `input`, divided by `speed`.
SPEECH_SECONDS_PER_CHARACTER = 0.05
SPEECH_RATE = media.WAV_RATE
SPEECH_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPEECH_MAX_INPUT = 4096
# Tool calls (`tools`) and reasoning (`think`).
TOOL_RESULT_PREFIX = "tool said "  # the text after a tool result: PREFIX + this + its content
THINKING_PREFIX = "Thinking about: "  # the reasoning `think` gives: this + the last user text
TOOL_ARGUMENT_PIECES = 3  # a streamed tool call's arguments arrive in this many deltas
# Anthropic Messages: the error `type` of each status (docs.claude.com/en/api/errors).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_TRUE_FLAGS = {"nousage", "silent", "malformed", "nodone", "noduration", "vllm"}
_FLOAT_FLAGS = {"slow", "gap"}
_INT_FLAGS = {"chunks", "fail", "reset", "cached", "cachewrite", "reasoning"}
# `usage=KIND`: every count in `usage` (prompt, completion, total) becomes this value.
ABSURD_USAGE: dict[str, Any] = {
    "huge": 2**63,  # past SQLite's INTEGER and PostgreSQL's bigint
    "overflow": 2**31,  # one past the columns' 2**31 - 1
    "negative": -1_000_000,
    "exponent": -1e6,  # a JSON float
    "float": 12.5,
    "text": "12",
    "bool": True,
}


@dataclasses.dataclass
class Flags:
    """Behaviour selected by a model name (see the module docstring)."""

    nousage: bool = False
    silent: bool = False
    malformed: bool = False
    nodone: bool = False
    noduration: bool = False
    # Transcripts as vLLM sends them (streams of chat-shaped chunks); chat reasoning as
    # `reasoning`, as newer vLLM names it.
    vllm: bool = False
    slow: float = 0.0
    gap: float = 0.0
    chunks: int = DEFAULT_CHUNKS
    fail: int | None = None
    reset: int | None = None
    usage: str = ""
    # Components reported in chat and completions usage, as OpenAI's details (None: absent).
    cached: int | None = None
    cachewrite: int | None = None
    reasoning: int | None = None
    tools: int = 0  # tool calls to answer when the request offers tools (`tools` alone: 1)
    think: str | None = None  # reasoning to answer first ("": THINKING_PREFIX + last user text)


def parse_flags(model: str) -> Flags:
    """Read the `+`-separated flags of `model`; parts that are not well-formed flags are ignored."""
    flags = Flags()
    for part in str(model).split("+"):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        try:
            if not sep and name in _TRUE_FLAGS:
                setattr(flags, name, True)
            elif sep and name in _FLOAT_FLAGS:
                setattr(flags, name, max(0.0, float(value)))
            elif sep and name in _INT_FLAGS:
                setattr(flags, name, max(0, int(value)))
            elif sep and name == "usage" and value.lower() in ABSURD_USAGE:
                flags.usage = value.lower()
            elif name == "tools":
                flags.tools = max(0, int(value)) if sep else 1
            elif name == "think":
                flags.think = value
        except ValueError:
            continue
    flags.chunks = max(1, flags.chunks)
    return flags


# --------------------------------------------------------------------------- deterministic answers


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a list joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return " ".join(texts)
    return ""


def _words(text: str) -> int:
    return len(text.split())


def last_user_text(messages: Any) -> str:
    """The text of the last `user` message of a chat `messages` list ("" if none)."""
    last_user = ""
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = content_text(message.get("content"))
    return last_user


def chat_answer(messages: Any) -> tuple[str, int, int]:
    """`(text, prompt_tokens, completion_tokens)` of the non-stream answer to `messages`.

    The text is PREFIX + the last user text, or, when the last message is a `tool` one,
    PREFIX + TOOL_RESULT_PREFIX + its text (whatever the flags).
    """
    messages = messages if isinstance(messages, list) else []
    contents = [content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        text = PREFIX + TOOL_RESULT_PREFIX + content_text(last.get("content"))
    else:
        text = PREFIX + last_user_text(messages)
    return text, sum(_words(c) for c in contents) + 3, _words(text)


def tool_arguments(query: str) -> str:
    """The JSON arguments (or, parsed, the Anthropic `input`) of every tool call answered."""
    return json.dumps({"query": query})


def first_tool_name(tools: Any) -> str | None:
    """The name of the first tool a request offers: a chat `{"type": "function", "function":
    {"name"}}` or an Anthropic `{"name"}`; None when it offers none."""
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    name = function.get("name") if isinstance(function, dict) else tools[0].get("name")
    return name if isinstance(name, str) else ""


def chat_tool_calls(body: dict, count: int) -> list[dict]:
    """The `count` tool calls (`call_0`, `call_1`, ...) to the first tool that answer a chat
    request offering `tools` whose last message is not a `tool` one; else none."""
    name, messages = first_tool_name(body.get("tools")), body.get("messages")
    if not count or name is None or not isinstance(messages, list) or not messages:
        return []
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return []
    arguments = tool_arguments(last_user_text(messages))
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i in range(count)
    ]


def reasoning_text(think: str | None, messages: Any) -> str | None:
    """The reasoning `think` (or `think=TEXT`) answers first; None without the flag."""
    if think is None:
        return None
    return think or THINKING_PREFIX + last_user_text(messages)


def prompt_text(prompt: Any) -> str:
    """A completions `prompt` as text: strings and token ids joined by spaces."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(prompt_text(p) if isinstance(p, list) else str(p) for p in prompt)
    return ""


def completion_answer(prompt: Any) -> tuple[str, int, int]:
    """`(text, prompt_tokens, completion_tokens)` of the non-stream answer to `prompt`."""
    prompt = prompt_text(prompt)
    text = PREFIX + prompt
    return text, _words(prompt) + 3, _words(text)


def stream_deltas(text: str, chunks: int = DEFAULT_CHUNKS) -> list[str]:
    """The `chunks` content deltas that stream `text`: its words in turn, repeated to fill.

    Every delta but the first starts with a space, so the deltas concatenate to `stream_text`.
    """
    words = text.split() or [""]
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(chunks)]


def stream_text(text: str, chunks: int = DEFAULT_CHUNKS) -> str:
    """The content a stream of `chunks` chunks carries; its completion tokens are `chunks`."""
    return "".join(stream_deltas(text, chunks))


def embedding_vector(item: Any) -> list[float]:
    """The 8 floats in [-1, 1] that embed one input (a string or a list of token ids)."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [v / 32767 if v > -32768 else -1.0 for v in struct.unpack(">8h", digest[:16])]


def embedding_inputs(value: Any) -> list[Any]:
    """Split an embeddings `input` into its items: one string, strings, token ids or lists."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list):
        return list(value)
    return [value]


def _embedding_tokens(item: Any) -> int:
    return len(item) if isinstance(item, list) else _words(str(item))


def image_usage(prompt: str, n: int) -> dict:
    """The `usage` of `n` images for `prompt`: its words in, `IMAGE_OUTPUT_TOKENS` per image out."""
    text_tokens = _words(prompt)
    output_tokens = IMAGE_OUTPUT_TOKENS * n
    return {
        "input_tokens": text_tokens,
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + output_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
    }


def audio_seconds(upload: Upload | None) -> float:
    """How long the stand-in takes an uploaded file to last: a WAV's header says; any other
    file counts `NON_WAV_BYTES_PER_SECOND` bytes a second."""
    if upload is None:
        return 0.0
    seconds = upload.duration
    return seconds if seconds is not None else upload.size / NON_WAV_BYTES_PER_SECOND


def seconds_text(seconds: float) -> str:
    """`seconds` to at most 3 decimals, without trailing zeros: 90.0 -> "90", 1.5 -> "1.5"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def transcript_text(seconds: float, task: str = "transcribe") -> str:
    """The text a transcription (`task` "transcribe") or translation ("translate") answers."""
    verb = "transcribed" if task == "transcribe" else "translated"
    return f"{PREFIX}{verb} {seconds_text(seconds)} seconds of audio"


def audio_tokens(seconds: float) -> int:
    """The audio tokens `seconds` of audio count for in token-shaped usage."""
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """How long the speech for `text` at `speed` lasts (`SPEECH_SECONDS_PER_CHARACTER`)."""
    return len(text) * SPEECH_SECONDS_PER_CHARACTER / speed


def speech_audio(text: str, speed: float = 1.0) -> bytes:
    """The bytes `/v1/audio/speech` answers for `text`: a WAV whatever the format asked."""
    return media.wav_bytes(speech_seconds(text, speed), rate=SPEECH_RATE)


def split_bytes(data: Any, pieces: int) -> list[Any]:
    """`data` (bytes or text) in `pieces` consecutive parts of near-equal length (fewer if
    it is shorter)."""
    count = max(1, min(pieces, len(data)))
    bounds = [len(data) * i // count for i in range(count + 1)]
    return [data[bounds[i] : bounds[i + 1]] for i in range(count)]


def error_body(code: int) -> dict:
    """The OpenAI-shaped error `fail=CODE` answers, with internals the gateway must not echo."""
    return {
        "error": {
            "message": ERROR_TEMPLATE.format(code=code),
            "type": "upstream_test",
            "param": None,
            "code": "x",
        }
    }


def invalid_request(message: str, param: str | None = None, code: str | None = None):
    """A 400 in OpenAI's error shape, as it refuses a request it cannot take."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return web.json_response({"error": error}, status=400)


def _missing(param: str) -> web.Response:
    return invalid_request(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


# --------------------------------------------------------------------------- Anthropic Messages


def anthropic_error(status: int, message: str) -> web.Response:
    """An error in Anthropic's shape; its `type` by status (`api_error` for the others)."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


def anthropic_invalid(message: str) -> web.Response:
    return anthropic_error(400, message)


def anthropic_error_body(code: int) -> dict:
    """The Anthropic-shaped error `fail=CODE` answers on /v1/messages, with internals."""
    kind = ANTHROPIC_ERROR_TYPES.get(code, "api_error")
    return {"type": "error", "error": {"type": kind, "message": ERROR_TEMPLATE.format(code=code)}}


def anthropic_refusal(record: Received, api_key: str | None) -> web.Response | None:
    """Anthropic's refusal of a request's headers: 401 without a key, in `x-api-key` or
    `Authorization: Bearer` (the SDK since 2.x sends its API key so), or with another than
    `api_key` when one is required; 400 without `anthropic-version`."""
    bearer = record.headers.get("authorization", "")
    key = record.headers.get("x-api-key") or bearer.removeprefix("Bearer ").strip()
    if not key:
        return anthropic_error(401, "x-api-key header is required")
    if api_key is not None and key != api_key:
        return anthropic_error(401, "invalid x-api-key")
    if not record.headers.get("anthropic-version"):
        return anthropic_invalid("anthropic-version: header is required")
    return None


def _tool_results(message: Any) -> list[str]:
    """The texts of the `tool_result` blocks of a Messages turn."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [
        content_text(block.get("content"))
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def messages_answer(body: dict) -> tuple[str, int]:
    """`(text, input_tokens)` of a Messages request: PREFIX + the last user text (its text
    blocks joined by spaces), or after a turn of tool results PREFIX + TOOL_RESULT_PREFIX +
    their texts; the words of `system`, every text and every tool result, plus 3."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    results = _tool_results(messages[-1]) if messages else []
    if results:
        text = PREFIX + TOOL_RESULT_PREFIX + " ".join(results)
    else:
        text = PREFIX + last_user_text(messages)
    words = _words(content_text(body.get("system")))
    for message in messages:
        if isinstance(message, dict):
            words += _words(content_text(message.get("content")))
            words += sum(_words(r) for r in _tool_results(message))
    return text, words + 3


def thinking_signature(thinking: str) -> str:
    """The (deterministic, opaque) signature of a thinking block."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def word_pieces(text: str) -> list[str]:
    """The deltas that stream `text` exactly: its words (spaces kept), or two halves of a
    single word."""
    words = _words(text)
    return stream_deltas(text, words) if words > 1 else split_bytes(text, 2)


def messages_content(body: dict, flags: Flags) -> tuple[list[dict], str, int]:
    """`(content, stop_reason, output_tokens)` of the answer to a Messages request.

    A thinking block first when the request's `thinking` is enabled (or adaptive); then
    `tools=N` tool_use blocks (`toolu_0`...) to the first tool when the request has `tools`
    and its last turn holds no tool result, or the text, cut to `max_tokens` words
    (stop_reason `max_tokens`).
    """
    text, _ = messages_answer(body)
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    query = last_user_text(messages)
    content: list[dict] = []
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        thought = reasoning_text(flags.think or "", messages) or ""
        content.append(
            {"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)}
        )
    name = first_tool_name(body.get("tools"))
    if flags.tools and name is not None and not (messages and _tool_results(messages[-1])):
        calls = [
            {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {"query": query}}
            for i in range(flags.tools)
        ]
        tokens = sum(_words(tool_arguments(query)) for _ in calls)
        return content + calls, "tool_use", tokens + sum(_words(b["thinking"]) for b in content)
    limit = body.get("max_tokens")
    words, stop_reason = text.split(), "end_turn"
    if isinstance(limit, int) and len(words) > limit:
        text, stop_reason = " ".join(words[:limit]), "max_tokens"
    content.append({"type": "text", "text": text})
    return (
        content,
        stop_reason,
        sum(_words(b.get("thinking") or b.get("text", "")) for b in content),
    )


def messages_usage(input_tokens: int, output_tokens: int, flags: Flags) -> dict:
    """A Message's `usage`: `cached=N` and `cachewrite=N` are read from and written to the
    cache, and so left out of `input_tokens` (Anthropic's counts are apart)."""
    read, write = flags.cached or 0, flags.cachewrite or 0
    usage = {
        "input_tokens": max(0, input_tokens - read - write),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": output_tokens,
    }
    return {k: _count(v, flags) for k, v in usage.items()}


def _messages_missing(body: dict, *, count_tokens: bool = False) -> web.Response | None:
    """Anthropic's 400 for a Messages request without what it requires."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return anthropic_invalid("model: Field required")
    limit = body.get("max_tokens")
    if not count_tokens and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        return anthropic_invalid("max_tokens: Field required (an integer of at least 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return anthropic_invalid("messages: Field required")
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return anthropic_invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    return None


# --------------------------------------------------------------------------- Responses


def _input_items(value: Any) -> list[dict]:
    """A Responses `input` as items: a string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []


def responses_answer(body: dict) -> tuple[str, int]:
    """`(text, input_tokens)` of a Responses request: PREFIX + the last user message's text
    (`input_text` parts joined by spaces), or after a `function_call_output` item PREFIX +
    TOOL_RESULT_PREFIX + its output; the words of `instructions`, of every message and
    output, plus 3."""
    items = _input_items(body.get("input"))
    messages = [i for i in items if i.get("type", "message") == "message"]
    last = items[-1] if items else {}
    if last.get("type") == "function_call_output":
        text = PREFIX + TOOL_RESULT_PREFIX + content_text(last.get("output"))
    else:
        text = PREFIX + last_user_text(messages)
    words = _words(content_text(body.get("instructions")))
    words += sum(_words(content_text(i.get("content") or i.get("output"))) for i in items)
    return text, words + 3


def responses_output(body: dict, flags: Flags) -> list[dict]:
    """The output items of the answer to a Responses request: `tools=N` function calls
    (`fc_0`/`call_0`...) to the first tool when it has `tools` and its last item is no
    `function_call_output`, else one message `msg_0` with the text."""
    text, _ = responses_answer(body)
    items = _input_items(body.get("input"))
    name = first_tool_name(body.get("tools"))
    if (
        flags.tools
        and name is not None
        and items
        and items[-1].get("type") != ("function_call_output")
    ):
        query = last_user_text([i for i in items if i.get("type", "message") == "message"])
        return [
            {
                "type": "function_call",
                "id": f"fc_{i}",
                "call_id": f"call_{i}",
                "name": name,
                "arguments": tool_arguments(query),
                "status": "completed",
            }
            for i in range(flags.tools)
        ]
    part = {"type": "output_text", "text": text, "annotations": []}
    return [
        {
            "type": "message",
            "id": "msg_0",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
    ]


def responses_usage(input_tokens: int, output_tokens: int, flags: Flags) -> dict:
    """A Response's `usage`, with the `cached`, `cachewrite` and `reasoning` flags' details."""
    return {
        "input_tokens": _count(input_tokens, flags),
        "input_tokens_details": {
            "cached_tokens": _count(flags.cached or 0, flags),
            "cache_write_tokens": _count(flags.cachewrite or 0, flags),
        },
        "output_tokens": _count(output_tokens, flags),
        "output_tokens_details": {"reasoning_tokens": _count(flags.reasoning or 0, flags)},
        "total_tokens": _count(input_tokens + output_tokens, flags),
    }


def _item_events(index: int, item: dict) -> list[dict]:
    """The events that stream one output item, from output_item.added to .done (without
    sequence numbers)."""
    if item["type"] == "function_call":
        pieces = split_bytes(item["arguments"], TOOL_ARGUMENT_PIECES)
        where = {"item_id": item["id"], "output_index": index}
        return [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "arguments": "", "status": "in_progress"},
            },
            *(
                {"type": "response.function_call_arguments.delta", **where, "delta": p}
                for p in pieces
            ),
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": item["name"],
                "arguments": item["arguments"],
            },
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    part = item["content"][0]
    where = {"item_id": item["id"], "output_index": index, "content_index": 0}
    empty = {**part, "text": ""}
    return [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": empty},
        *(
            {"type": "response.output_text.delta", **where, "delta": p, "logprobs": []}
            for p in word_pieces(part["text"])
        ),
        {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


# --------------------------------------------------------------------------- records


@dataclasses.dataclass
class Upload:
    """One file part of a multipart request as it arrived: counted and hashed, not kept.

    `size` grows while the part is read; `sha256` (hex) and `complete` are set once it was
    read to its end. Only its first `UPLOAD_HEAD_BYTES` are kept (`head`), so that a test
    measuring the gateway's memory while it relays a large upload does not count a copy
    held here: the stand-in runs in the test's process.
    """

    field: str | None
    filename: str
    content_type: str | None
    size: int = 0
    sha256: str | None = None
    complete: bool = False
    head: bytes = dataclasses.field(default=b"", repr=False)

    @property
    def duration(self) -> float | None:
        """The seconds its WAV header states (no more than what arrived); None if no WAV."""
        return media.wav_duration(self.head, size=self.size)


@dataclasses.dataclass
class Received:
    """One request as the stand-in got it, and how its answer ended.

    Exactly one of `finished_at` (answer fully written), `closed_at` (client left first;
    `closed_early` is then True) or `aborted` (the stand-in dropped the connection) is set
    once `done` is; times are `time.monotonic()` values.

    A JSON request has `json` and `body`; a multipart one (the audio uploads) is recorded
    on arrival, before its body is read, then gets its text parts in `fields` (in order;
    `form` maps each name to its last value) and its file parts in `uploads` as they are
    read; its `body` stays empty.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes = b""
    fields: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    uploads: list[Upload] = dataclasses.field(default_factory=list)
    received_at: float = dataclasses.field(default_factory=time.monotonic)
    closed_early: bool = False
    closed_at: float | None = None
    finished_at: float | None = None
    aborted: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    @property
    def form(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def file(self) -> Upload | None:
        """The first file part named `file`, the one the audio routes transcribe."""
        return next((u for u in self.uploads if u.field == "file"), None)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def content_length(self) -> int | None:
        """The `Content-Length` header as a number; None when absent (chunked) or not one."""
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    @property
    def model(self) -> str | None:
        if isinstance(self.json, dict):
            return self.json.get("model")
        return self.form.get("model")

    def wait_done(self, timeout: float = 5.0) -> bool:
        """Block until the answer finished, was cut by the client or aborted; False on timeout."""
        return self.done.wait(timeout)


class _Aborted(Exception):
    """Raised by a handler after it dropped its own connection on purpose."""


# --------------------------------------------------------------------------- server


class Upstream:
    """An aiohttp OpenAI-compatible server on 127.0.0.1, run by a thread with its own loop.

    `start()` returns once it listens; `base_url` ends with `/v1`. `received` lists every
    request in arrival order. Per-test overrides (`model_ids`, `require_api_key`) and
    `received` go back to their defaults on `reset()`.

    Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings,
    /v1/images/generations and /v1/audio/speech (JSON), POST /v1/audio/transcriptions and
    /v1/audio/translations (multipart/form-data), GET /v1/models, and GET /files/<name>.png
    (the images answered as URLs); any other path is an OpenAI-shaped 404.

    POST /v1/messages and /v1/messages/count_tokens answer as Anthropic's API: a key
    (`x-api-key`, or `Authorization: Bearer` as the SDK sends it; `require_api_key` checks
    it) and `anthropic-version` are required before anything else (401
    `authentication_error`, 400 `invalid_request_error`, in Anthropic's error shape), then
    `model`, `max_tokens` (not for count_tokens) and `messages`. A Message is
    `messages_content` with `messages_usage` (words + 3 in, `cached`/`cachewrite` apart
    from `input_tokens`); `thinking` enabled puts a signed thinking block first; `tools`
    answers tool_use blocks (`toolu_0`...); the text stops at `max_tokens` words. Streams
    have `event:` lines: message_start, ping, each block's start, deltas (one per word;
    tool input in TOOL_ARGUMENT_PIECES) and stop, message_delta (cumulative usage),
    message_stop (not with `noDone`). `fail`, `slow`, `gap`, `silent`, `reset`,
    `malformed`, `nousage` and `usage=KIND` act as on chat, `fail` in Anthropic's shape.

    POST /v1/responses answers as OpenAI's Responses API: a Response (`resp_` id) whose
    output is `responses_output` (a message with PREFIX + the last user text of `input`,
    or `tools=N` function_call items) and whose usage is `responses_usage`; a stream is
    the full named event sequence with `sequence_number`s from 0 (text deltas one per
    word, arguments in TOOL_ARGUMENT_PIECES), ending in response.completed (not with
    `noDone`). The chat flags act on it as on chat, `fail` in OpenAI's shape.

    What it does is chosen by the model name in the request body (the gateway sends the
    upstream name; a form's `model` field for the uploads), so one server serves every test
    at once. A name is a base name followed by optional `+flag` parts; parts that are not
    flags only belong to the name, and any part (the first one too) may be a flag. Flag names
    are case-insensitive and combine (`fail=429+slow=0.2`):

        echo            a normal answer (any name that carries no flag)
        echo+nousage    never report `usage` (not even when a stream asks for it)
        echo+slow=0.3   wait 0.3 s before answering (before the status line and headers)
        echo+chunks=5   stream 5 content chunks (default 20, at least 1); speech is sent
                        in as many writes (or `speech.audio.delta` events)
        echo+gap=0.2    wait 0.2 s between two stream chunks (or speech writes)
        echo+silent     accept the request, then send nothing until the client leaves (<= 60 s)
        fail=503        answer 503 with an OpenAI-shaped error (429 adds `Retry-After: 1`)
        echo+malformed  answer 200, `application/json`, body `{"not json`
        echo+reset=3    stream 3 events (finish and usage chunks count) or speech writes,
                        then drop the connection without [DONE]; a non-stream request (an
                        image, a translation, a transcription without `stream`) is dropped
                        at once, an upload once it was read
        echo+noDone     end a stream cleanly but without `data: [DONE]`
        echo+noDuration transcriptions and translations report no `duration` and no `usage`
                        (as servers that do not measure), so the gateway must
        echo+usage=huge report every usage count as 2**63 (also `overflow` 2**31,
                        `negative` -1000000, `exponent` -1e6, `float` 12.5, `text` "12",
                        `bool` true: see ABSURD_USAGE), in streams and plain answers; for
                        images and speech too, and as a transcription's duration in seconds
        echo+cached=8   chat and completions usage says 8 prompt tokens were read from the
                        cache (`prompt_tokens_details.cached_tokens`, whatever the prompt's
                        size); `cachewrite=N` written to it (`.cache_write_tokens`),
                        `reasoning=N` output tokens spent reasoning
                        (`completion_tokens_details.reasoning_tokens`)
        echo+tools      a chat request with `tools` whose last message is not a `tool` one
                        is answered with a tool call to the first tool (`tools=3`: three),
                        ids `call_0`, `call_1`..., arguments `{"query": "<last user
                        text>"}`, finish_reason `tool_calls`, content null; streamed as
                        OpenAI does (a delta with index, id, type, name and arguments "",
                        then the arguments in TOOL_ARGUMENT_PIECES deltas). Completion
                        tokens: the words of the arguments. (After a `tool` message any
                        chat answer is PREFIX + "tool said " + its content, flag or not.)
        echo+think      chat answers reason first: `message.reasoning_content` is
                        "Thinking about: <last user text>" (`think=TEXT`: TEXT), streamed
                        as one `reasoning_content` delta per word before the content (or
                        tool call) deltas; its words count as completion tokens and as
                        `completion_tokens_details.reasoning_tokens` (unless `reasoning=N`
                        says otherwise); with `vllm` the field is `reasoning` instead

    Answers are deterministic; `chat_answer`, `completion_answer`, `stream_text` and
    `embedding_vector` compute them. The text is "Hello from upstream: " followed by the last
    user message (or the prompt); prompt tokens are the words of every message (or of the
    prompt) plus 3; completion tokens are the words of the text (for streams: the number of
    content chunks). An embedding is 8 floats in [-1, 1] derived from a hash of its input,
    always sent as floats whatever `encoding_format` asks.

    Images (`n`, default 1, up to 10) are all one PNG of `size` (`media.png_bytes`; "auto"
    or none: DEFAULT_IMAGE_SIZE), as URLs or `b64_json`; names with "dall-e-3" get a
    `revised_prompt`; `usage` is `image_usage`. An upload lasts `audio_seconds`: a WAV what
    its header says, anything else NON_WAV_BYTES_PER_SECOND; its text is `transcript_text`,
    its usage `{"type": "duration", "seconds": ...}` (json and verbose_json; translations
    have none, as in the spec), tokens in a stream's `transcript.text.done` (as the spec's
    event has it: the prompt's words and AUDIO_TOKENS_PER_SECOND), and neither stream has
    `[DONE]`. Speech is `speech_audio`: a WAV of SPEECH_SECONDS_PER_CHARACTER per character
    of `input` over `speed`, whatever `response_format` labels it (its Content-Type says
    audio/mpeg for mp3, audio/opus, audio/aac, audio/flac, audio/wav, audio/pcm); with
    `stream_format` "sse" its chunks are base64 `speech.audio.delta` events, then a
    `speech.audio.done` with usage. A JSON request missing what they need, or asking a value
    they do not make, gets OpenAI's 400 naming the field once the flags acted; an upload
    without `file` or `model`, or a body that is not a whole multipart form, before them.

    Like llama-cpp-python's server, it answers 400 with an empty body to an `X-Request-ID`
    that is not a UUID, whatever the model. Every request is appended to `received` before
    its flags act. Each `Received` then records
    how it ended: `finished_at` when the whole answer was written, `closed_early`/`closed_at`
    when the client went away first (handlers are cancelled the moment the connection drops),
    or `aborted` when the stand-in dropped the connection itself (`reset`, `silent` at 60 s).
    `Received.wait_done` blocks until one of these happened.

    `in_flight(name)` counts the requests being answered now whose model name starts with
    `name` (its part before any `+`: `cc+slow=1` and `cc+fail=503` are both `cc`): from
    when their body was read until their answer ended or their connection closed; `peak(name)`
    is the most there were at once since the last `reset()`. A connection the client closed
    stops counting as soon as the stand-in has read its end, not only once the handler it
    cancels has run: a client that closes one and then opens another is not counted twice.
    """

    def __init__(self):
        self.base_url = ""
        self.port: int | None = None
        self.received: list[Received] = []
        self.model_ids: list[str] = list(DEFAULT_MODEL_IDS)
        # When set, requests must carry `Authorization: Bearer <it>` or get a 401.
        self.require_api_key: str | None = None
        # The images answered as URLs, by name: GET /files/<name>.png serves them.
        self.files: dict[str, bytes] = {}
        # By model name before any `+`: the connections of the requests being answered now,
        # and the most at once.
        self._in_flight: dict[str, list] = {}
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Upstream:
        """Start the server thread and block until it listens (raise if it cannot)."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready, failure), name="upstream-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS) or failure:
            self.stop()
            raise RuntimeError(f"upstream stand-in did not start: {failure or 'timeout'}")
        return self

    def stop(self) -> None:
        """Stop serving (open answers are cancelled) and join the thread."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_SECONDS)
        self._thread = None

    def reset(self) -> None:
        """Forget received requests and per-test overrides."""
        with self._lock:
            self.received.clear()
            self.files.clear()
            self._peaks.clear()
        self.model_ids = list(DEFAULT_MODEL_IDS)
        self.require_api_key = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def in_flight(self, name: str) -> int:
        """Requests for models named `name` (before any `+`) being answered now."""
        with self._lock:
            return sum(map(_open, self._in_flight.get(name, ())))

    def peak(self, name: str) -> int:
        """The most requests for models named `name` answered at once since `reset()`."""
        with self._lock:
            return self._peaks.get(name, 0)

    def _started(self, name: str, transport) -> None:
        with self._lock:
            live = self._in_flight.setdefault(name, [])
            live.append(transport)
            now = sum(map(_open, live))
            self._peaks[name] = max(self._peaks.get(name, 0), now)

    def _ended(self, name: str, transport) -> None:
        with self._lock:
            self._in_flight[name].remove(transport)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `count` requests were received; return `received` (a copy)."""
        wait_for(lambda: len(self.received) >= count, timeout, interval=0.005, what="requests")
        with self._lock:
            return list(self.received)

    def _run(self, sock, ready, failure) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as exc:  # reported to start(), which raises it
            failure.append(exc)
            ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, sock, ready) -> None:
        self._stopped = asyncio.Event()
        # As large as the gateway forwards (AETHERGATE_MAX_BODY_BYTES, 20 MiB by default),
        # so that `received` holds every body that reached it.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/translations", self._translations)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # Cancelling handlers when the client disconnects is what lets a record tell, at
        # once, that the gateway closed its upstream request.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._runner.cleanup()

    # ----------------------------------------------------------------- plumbing

    async def _record(self, request: web.Request, *, form: bool = False) -> Received:
        """Append a record of `request`: a JSON one once its body is read, a multipart
        one (`form`) at once, its parts being read by `_read_form` afterwards."""
        body = b"" if form else await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = Received(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=parsed,
            body=body,
        )
        with self._lock:
            self.received.append(record)
        return record

    async def _read_form(self, request: web.Request, record: Received) -> web.Response | None:
        """Read a multipart body into `record`, part by part; a 400 if it cannot be read or
        lacks `file` or `model` (which every audio upload needs)."""
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, MultipartReader):
                    return invalid_request("nested multipart parts are not accepted")
                if part.filename is not None:
                    upload = Upload(part.name, part.filename, part.headers.get("Content-Type"))
                    record.uploads.append(upload)
                    await _read_upload(part, upload)
                elif part.name is not None:
                    record.fields.append((part.name, await part.text()))
        # aiohttp raises AssertionError for a body that is not multipart, ValueError for one
        # that is cut or broken (UnicodeDecodeError, a field that is not text, is one too).
        except (AssertionError, ValueError) as exc:
            return invalid_request(f"Could not parse multipart form: {exc}")
        if record.file is None:
            return _missing("file")
        if not record.form.get("model"):
            return _missing("model")
        return None

    def _unauthorized(self, record: Received) -> web.Response | None:
        if self.require_api_key is None:
            return None
        if record.headers.get("authorization") == f"Bearer {self.require_api_key}":
            return None
        return web.json_response(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )

    async def _handle(
        self,
        request: web.Request,
        answer,
        *,
        flagged=True,
        form=False,
        streams=None,
        anthropic=False,
    ) -> web.StreamResponse:
        """Record `request`, run `answer(request, record, body, flags)`, note how it ended.

        With `flagged` (the POST routes) the model name's flags apply, and the body must be a
        JSON object, or with `form` a multipart form with `file` and `model` (then `body` is
        `record.form`); otherwise `answer` gets an empty body and no flags. `streams(record)`
        tells whether the answer streams (by default: the body's `stream` is true), which
        `reset` needs to know. With `anthropic`, the request is refused and failed as
        Anthropic's API does: its headers checked first (`anthropic_refusal`), its errors in
        Anthropic's shape.
        """
        record = await self._record(request, form=form)
        # A form's model is read later: such a request counts under "" (the name of none).
        counted, transport = str(record.model or "").partition("+")[0], request.transport
        self._started(counted, transport)
        try:
            if anthropic:
                response = anthropic_refusal(record, self.require_api_key)
            else:
                response = self._unauthorized(record) or _bad_request_id(record)
            if response is None and form:
                response = await self._read_form(request, record)
            if form:
                body = record.form
            else:
                body = record.json if isinstance(record.json, dict) else {}
            flags = parse_flags(record.model or "") if flagged else Flags()
            if response is None and flagged and not form and not isinstance(record.json, dict):
                refuse = anthropic_invalid if anthropic else invalid_request
                response = refuse("body must be a JSON object")
            if response is None and flagged:
                streaming = (streams or request_streams)(record)
                failed = anthropic_error_body if anthropic else error_body
                response = await self._before_answer(request, flags, streaming, failed)
            if response is None:
                response = await answer(request, record, body, flags)
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
            record.finished_at = time.monotonic()
            return response
        except _Aborted:
            record.aborted = True
            # connection_lost cancels this handler on the next loop turn; wait for it so that
            # aiohttp ends the request as it does any client disconnect.
            await asyncio.sleep(SILENT_CAP_SECONDS)
            raise
        except (asyncio.CancelledError, ConnectionError):
            self._closed(record)
            raise
        finally:
            self._ended(counted, transport)
            record.done.set()

    @staticmethod
    def _closed(record: Received) -> None:
        if record.finished_at is None and not record.aborted:
            record.closed_early = True
            record.closed_at = time.monotonic()

    async def _before_answer(
        self, request, flags: Flags, streaming: bool, failed=error_body
    ) -> web.StreamResponse | None:
        """Apply the flags that act before an answer starts; a response if they end it
        (`fail=CODE`: the body `failed(CODE)` makes)."""
        if flags.silent:
            await asyncio.sleep(SILENT_CAP_SECONDS)
            self._abort(request)
        if flags.slow:
            await asyncio.sleep(flags.slow)
        if flags.fail is not None:
            headers = {"Retry-After": "1"} if flags.fail == 429 else None
            return web.json_response(failed(flags.fail), status=flags.fail, headers=headers)
        if flags.malformed:
            return web.Response(body=b'{"not json', content_type="application/json")
        if flags.reset is not None and not streaming:
            self._abort(request)
        return None

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise _Aborted

    async def _stream(
        self, request, flags: Flags, events: list[dict], *, done: bool = True, named=False
    ) -> web.StreamResponse:
        """Send `events` as SSE `data:` lines (cut short by `reset`), then `[DONE]` when
        `done` (the chat and completions streams have it, the audio ones do not) unless
        `noDone`. With `named` each has an `event: <its type>` line first (Anthropic's and
        the Responses streams)."""
        pieces = [
            (f"event: {event['type']}\n".encode() if named else b"")
            + b"data: "
            + json.dumps(event).encode()
            + b"\n\n"
            for event in events
        ]
        return await self._send(
            request,
            flags,
            pieces,
            {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            tail=b"data: [DONE]\n\n" if done and not flags.nodone else b"",
        )

    async def _send(
        self, request, flags: Flags, pieces: list[bytes], headers: dict, *, tail: bytes = b""
    ) -> web.StreamResponse:
        """Write `headers`, then each of `pieces` in its own write (`gap` s apart), then
        `tail`; with `reset=K`, drop the connection instead of writing piece K (or `tail`)."""
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        for index, piece in enumerate(pieces):
            if flags.reset is not None and index == flags.reset:
                self._abort(request)
            if index and flags.gap:
                await asyncio.sleep(flags.gap)
            await response.write(piece)
        if flags.reset is not None:
            self._abort(request)
        if tail:
            await response.write(tail)
        return response

    # ----------------------------------------------------------------- routes

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._chat_answer)

    async def _chat_answer(self, request, record, body: dict, flags: Flags):
        model = body.get("model", "")
        messages = body.get("messages")
        text, prompt_tokens, completion_tokens = chat_answer(messages)
        calls = chat_tool_calls(body, flags.tools)
        reasoning = reasoning_text(flags.think, messages)
        # vLLM (newer) and OpenRouter name it `reasoning`; DeepSeek and older vLLM as here.
        reasoning_key = "reasoning" if flags.vllm else "reasoning_content"
        thought = None if reasoning is None else _words(reasoning)
        if calls:
            completion_tokens = sum(_words(c["function"]["arguments"]) for c in calls)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        finish_reason = "tool_calls" if calls else "stop"
        if not request_streams(record):
            message: dict[str, Any] = {"role": "assistant", "content": None if calls else text}
            if reasoning is not None:
                message[reasoning_key] = reasoning
            if calls:
                message["tool_calls"] = calls
            answer = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
            }
            if not flags.nousage:
                answer["usage"] = _usage(
                    prompt_tokens, completion_tokens + (thought or 0), flags, thought
                )
            return web.json_response(answer)
        with_usage = wants_usage(record) and not flags.nousage

        def chunk(choices: list, **extra) -> dict:
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if with_usage:
                event["usage"] = None  # as OpenAI: null on every chunk but the usage one
            return {**event, **extra}

        deltas: list[dict] = []
        if reasoning is not None:
            pieces = stream_deltas(reasoning, max(1, thought or 0))
            deltas += [{reasoning_key: piece} for piece in pieces]
        if calls:
            deltas += _tool_call_deltas(calls)
        else:
            completion_tokens = flags.chunks
            deltas += [{"content": delta} for delta in stream_deltas(text, flags.chunks)]
        deltas[0] = {"role": "assistant", **deltas[0]}
        events = [
            chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
            for delta in deltas
        ]
        events.append(
            chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}])
        )
        if with_usage:
            usage = _usage(prompt_tokens, completion_tokens + (thought or 0), flags, thought)
            events.append(chunk([], usage=usage))
        return await self._stream(request, flags, events)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._completions_answer)

    async def _completions_answer(self, request, record, body: dict, flags: Flags):
        model = body.get("model", "")
        text, prompt_tokens, completion_tokens = completion_answer(body.get("prompt"))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def completion(choices: list, **extra) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        if not request_streams(record):
            answer = completion(
                [{"text": text, "index": 0, "finish_reason": "stop", "logprobs": None}]
            )
            if not flags.nousage:
                answer["usage"] = _usage(prompt_tokens, completion_tokens, flags)
            return web.json_response(answer)
        events = [
            completion([{"text": delta, "index": 0, "finish_reason": None, "logprobs": None}])
            for delta in stream_deltas(text, flags.chunks)
        ]
        events.append(completion([{"text": "", "index": 0, "finish_reason": "stop"}]))
        if wants_usage(record) and not flags.nousage:
            events.append(completion([], usage=_usage(prompt_tokens, flags.chunks, flags)))
        return await self._stream(request, flags, events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._embeddings_answer)

    async def _embeddings_answer(self, request, record, body: dict, flags: Flags):
        items = embedding_inputs(body.get("input"))
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding_vector(item)}
                for i, item in enumerate(items)
            ],
            "model": body.get("model", ""),
        }
        if not flags.nousage:
            tokens = sum(_embedding_tokens(item) for item in items)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            if flags.usage:
                answer["usage"] = dict.fromkeys(answer["usage"], ABSURD_USAGE[flags.usage])
        return web.json_response(answer)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def answer(request, record, body, flags):
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": i, "object": "model", "created": 0, "owned_by": "stand-in"}
                        for i in self.model_ids
                    ],
                }
            )

        return await self._handle(request, answer, flagged=False)

    async def _images(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._images_answer, streams=_never_streams)

    async def _images_answer(self, request, record, body: dict, flags: Flags):
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _missing("prompt")
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
            return invalid_request(f"n must be an integer from 1 to {MAX_IMAGES}", "n")
        size = _image_size(body.get("size"))
        if size is None or max(size) > MAX_IMAGE_SIDE:
            return invalid_request(
                f"size must be 'auto' or WIDTHxHEIGHT, each side at most {MAX_IMAGE_SIDE}", "size"
            )
        response_format = body.get("response_format") or "url"
        if response_format not in ("url", "b64_json"):
            return invalid_request("response_format must be 'url' or 'b64_json'", "response_format")
        png = media.png_bytes(*size)
        data = []
        for _ in range(n):
            if response_format == "b64_json":
                image = {"b64_json": base64.b64encode(png).decode()}
            else:
                name = uuid.uuid4().hex
                with self._lock:
                    self.files[name] = png
                image = {"url": f"http://127.0.0.1:{self.port}/files/{name}.png"}
            if "dall-e-3" in str(body.get("model")).lower():
                image["revised_prompt"] = REVISED_PROMPT_PREFIX + prompt
            data.append(image)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if not flags.nousage:
            usage = image_usage(prompt, n)
            if flags.usage:
                usage = {k: _count(v, flags) if isinstance(v, int) else v for k, v in usage.items()}
            answer["usage"] = usage
        return web.json_response(answer)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        async def answer(request, record, body, flags):
            stem, _, extension = request.match_info["name"].rpartition(".")
            with self._lock:
                png = self.files.get(stem) if extension == "png" else None
            if png is None:
                return await self._not_found_answer(request, record, body, flags)
            return web.Response(body=png, content_type="image/png")

        return await self._handle(request, answer, flagged=False)

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        answer = functools.partial(self._audio_answer, "transcribe")
        return await self._handle(request, answer, form=True)

    async def _translations(self, request: web.Request) -> web.StreamResponse:
        answer = functools.partial(self._audio_answer, "translate")
        return await self._handle(request, answer, form=True, streams=_never_streams)

    async def _audio_answer(self, task: str, request, record, body: dict, flags: Flags):
        """A transcription or translation of `record.file` as `response_format` asks."""
        response_format = body.get("response_format") or "json"
        if response_format not in TRANSCRIPT_FORMATS:
            return invalid_request(
                f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}",
                "response_format",
            )
        seconds = audio_seconds(record.file)
        text = transcript_text(seconds, task)
        if task == "transcribe" and request_streams(record):
            if flags.vllm:
                return await self._vllm_transcript_stream(request, body, flags, text, seconds)
            return await self._transcript_stream(request, body, flags, text, seconds)
        # Translations report no usage: the spec's translation objects have none.
        usage = None
        if task == "transcribe" and not (flags.nousage or flags.noduration):
            usage = {"type": "duration", "seconds": _count(seconds, flags)}
        if response_format == "json":
            return web.json_response({"text": text, **({"usage": usage} if usage else {})})
        if response_format == "verbose_json":
            answer = {
                "task": task,
                "language": (task == "transcribe" and body.get("language")) or "english",
                "duration": _count(seconds, flags),
                "text": text,
                "segments": [_segment(text, seconds)],
            }
            if task == "transcribe" and "word" in _granularities(record):
                answer["words"] = _words_at(text, seconds)
            if flags.noduration:
                del answer["duration"]
            elif flags.vllm:
                answer["duration"] = str(answer["duration"])  # vLLM sends it as text
            if usage:
                answer["usage"] = usage
            return web.json_response(answer)
        if response_format == "srt":
            text = f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n"
        elif response_format == "vtt":
            text = f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n"
        return web.Response(text=text, content_type="text/plain")

    async def _transcript_stream(self, request, body: dict, flags: Flags, text: str, seconds):
        """`transcript.text.delta` events, then `transcript.text.done` (with token usage, as
        the spec's done event has it), without `[DONE]`: the spec's stream has none."""
        deltas = stream_deltas(text, flags.chunks)
        events: list[dict] = [{"type": "transcript.text.delta", "delta": d} for d in deltas]
        done: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(deltas)}
        if not (flags.nousage or flags.noduration):
            text_tokens, audio = _words(body.get("prompt", "")), audio_tokens(seconds)
            done["usage"] = {
                "type": "tokens",
                "input_tokens": _count(text_tokens + audio, flags),
                "input_token_details": {
                    "text_tokens": _count(text_tokens, flags),
                    "audio_tokens": _count(audio, flags),
                },
                "output_tokens": _count(len(deltas), flags),
                "total_tokens": _count(text_tokens + audio + len(deltas), flags),
            }
        events.append(done)
        return await self._stream(request, flags, events, done=False)

    async def _vllm_transcript_stream(self, request, body: dict, flags: Flags, text, seconds):
        """vLLM's transcript stream: chat-shaped `transcription.chunk` chunks, a usage chunk
        when the form has `stream_include_usage=true`, then `[DONE]`."""
        deltas = stream_deltas(text, flags.chunks)
        ident, created = f"trsc-{uuid.uuid4().hex[:16]}", int(time.time())

        def chunk(choices: list, **extra) -> dict:
            return {
                "id": ident,
                "object": "transcription.chunk",
                "created": created,
                "model": body.get("model", ""),
                "choices": choices,
                **extra,
            }

        events = [chunk([{"delta": {"content": d}}]) for d in deltas]
        events.append(chunk([{"delta": {"content": ""}, "finish_reason": "stop"}]))
        if body.get("stream_include_usage") == "true" and not flags.nousage:
            prompt = audio_tokens(seconds)
            events.append(chunk([], usage=_usage(prompt, len(deltas), flags)))
        return await self._stream(request, flags, events)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._speech_answer, streams=_always_streams)

    async def _speech_answer(self, request, record, body: dict, flags: Flags):
        """`speech_audio(input, speed)` in `chunks` writes, labelled as `response_format`
        asks; or with `stream_format` "sse", as `speech.audio.delta` events (base64) and a
        `speech.audio.done` event with usage."""
        text, voice = body.get("input"), body.get("voice")
        if not isinstance(text, str):
            return _missing("input")
        if len(text) > SPEECH_MAX_INPUT:
            return invalid_request(f"input is longer than {SPEECH_MAX_INPUT} characters", "input")
        if not (isinstance(voice, str) and voice) and not (
            isinstance(voice, dict) and isinstance(voice.get("id"), str)
        ):
            return _missing("voice")
        response_format = body.get("response_format") or "mp3"
        if response_format not in SPEECH_CONTENT_TYPES:
            return invalid_request(
                f"response_format must be one of {', '.join(SPEECH_CONTENT_TYPES)}",
                "response_format",
            )
        speed = body.get("speed")
        speed = 1.0 if speed is None else speed
        if not _is_number(speed) or not 0.25 <= speed <= 4:
            return invalid_request("speed must be a number from 0.25 to 4", "speed")
        stream_format = body.get("stream_format") or "audio"
        if stream_format not in ("audio", "sse"):
            return invalid_request("stream_format must be 'audio' or 'sse'", "stream_format")
        pieces = split_bytes(speech_audio(text, speed), flags.chunks)
        if stream_format == "audio":
            headers = {"Content-Type": SPEECH_CONTENT_TYPES[response_format]}
            return await self._send(request, flags, pieces, headers)
        events: list[dict] = [
            {"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()} for p in pieces
        ]
        done: dict[str, Any] = {"type": "speech.audio.done"}
        if not flags.nousage:
            words, audio = _words(text), audio_tokens(speech_seconds(text, speed))
            done["usage"] = {
                "input_tokens": _count(words, flags),
                "output_tokens": _count(audio, flags),
                "total_tokens": _count(words + audio, flags),
            }
        events.append(done)
        return await self._stream(request, flags, events, done=False)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._messages_answer, anthropic=True)

    async def _messages_answer(self, request, record, body: dict, flags: Flags):
        """A Message (`messages_content`, `messages_usage`), or its event stream."""
        refused = _messages_missing(body)
        if refused is not None:
            return refused
        content, stop_reason, output_tokens = messages_content(body, flags)
        _, input_tokens = messages_answer(body)
        usage = messages_usage(input_tokens, output_tokens, flags)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
        }
        if not request_streams(record):
            if not flags.nousage:
                message["usage"] = usage
            return web.json_response(message, headers=headers)
        started = {**message, "content": [], "stop_reason": None}
        if not flags.nousage:
            started["usage"] = {**usage, "output_tokens": _count(1, flags)}
        events: list[dict] = [{"type": "message_start", "message": started}, {"type": "ping"}]
        for index, block in enumerate(content):
            events += _block_events(index, block)
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        }
        if not flags.nousage:
            delta["usage"] = usage  # cumulative, the input side restated (as the API now does)
        events.append(delta)
        if not flags.nodone:
            events.append({"type": "message_stop"})
        return await self._stream(request, flags, events, done=False, named=True)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        async def answer(request, record, body, flags):
            refused = _messages_missing(body, count_tokens=True)
            if refused is not None:
                return refused
            return web.json_response({"input_tokens": _count(messages_answer(body)[1], flags)})

        return await self._handle(request, answer, anthropic=True, streams=_never_streams)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._responses_answer)

    async def _responses_answer(self, request, record, body: dict, flags: Flags):
        """A Response (`responses_output`, `responses_usage`), or its event stream."""
        if not isinstance(body.get("model"), str):
            return _missing("model")
        if not isinstance(body.get("input"), str | list):
            return _missing("input")
        output = responses_output(body, flags)
        _, input_tokens = responses_answer(body)
        output_tokens = sum(
            _words(i["arguments"] if i["type"] == "function_call" else i["content"][0]["text"])
            for i in output
        )
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex[:24]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
        }
        if not flags.nousage:
            response["usage"] = responses_usage(input_tokens, output_tokens, flags)
        if not request_streams(record):
            return web.json_response(response)
        opened = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [
            {"type": "response.created", "response": opened},
            {"type": "response.in_progress", "response": opened},
        ]
        for index, item in enumerate(output):
            events += _item_events(index, item)
        if not flags.nodone:
            events.append({"type": "response.completed", "response": response})
        numbered = [{**event, "sequence_number": n} for n, event in enumerate(events)]
        return await self._stream(request, flags, numbered, done=False, named=True)

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._not_found_answer, flagged=False)

    @staticmethod
    async def _not_found_answer(request, record, body, flags):
        return web.json_response(
            {
                "error": {
                    "message": f"no route {request.method} {request.path}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "not_found",
                }
            },
            status=404,
        )


def _open(transport) -> bool:
    """Whether a request's connection is still open (None: it was gone already)."""
    return transport is not None and not transport.is_closing()


def request_streams(record: Received) -> bool:
    """Whether the recorded request asked for a stream (a form's `stream` field is "true")."""
    if isinstance(record.json, dict):
        return record.json.get("stream") is True
    return record.form.get("stream", "").lower() == "true"


def _never_streams(record: Received) -> bool:
    return False


def _always_streams(record: Received) -> bool:
    return True


async def _read_upload(part, upload: Upload) -> None:
    """Read a file part to its end in chunks: count, hash and keep the head of its bytes."""
    digest = hashlib.sha256()
    while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
        digest.update(chunk)
        if len(upload.head) < UPLOAD_HEAD_BYTES:
            upload.head += chunk[: UPLOAD_HEAD_BYTES - len(upload.head)]
        upload.size += len(chunk)
    upload.sha256 = digest.hexdigest()
    upload.complete = True


def _count(value: Any, flags: Flags) -> Any:
    """`value`, or the absurd value `usage=KIND` puts in every count."""
    return ABSURD_USAGE[flags.usage] if flags.usage else value


def _image_size(value: Any) -> tuple[int, int] | None:
    """`(width, height)` of an images `size` ("auto" or absent: the default); None if bad."""
    if value is None or value == "auto":
        return DEFAULT_IMAGE_SIZE
    match = IMAGE_SIZES.fullmatch(value) if isinstance(value, str) else None
    return (int(match[1]), int(match[2])) if match else None


def _segment(text: str, seconds: float) -> dict:
    """The one verbose segment: the whole text over the whole audio."""
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": seconds,
        "text": text,
        "tokens": list(range(_words(text))),
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.01,
    }


def _words_at(text: str, seconds: float) -> list[dict]:
    """The words of `text` spread evenly over `seconds`."""
    words = text.split()
    step = seconds / max(1, len(words))
    return [
        {"word": word, "start": i * step, "end": (i + 1) * step} for i, word in enumerate(words)
    ]


def _granularities(record: Received) -> set[str]:
    """The `timestamp_granularities` a form asks for (sent as `[]`-suffixed fields or not)."""
    names = ("timestamp_granularities", "timestamp_granularities[]")
    return {value for name, value in record.fields if name in names}


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def wants_usage(record: Received) -> bool:
    """Whether the recorded stream request asked for a final usage chunk."""
    options = record.json.get("stream_options") if isinstance(record.json, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _block_events(index: int, block: dict) -> list[dict]:
    """The content_block_start, deltas and content_block_stop events of one Message block."""
    kind = block["type"]
    if kind == "thinking":
        opening = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in word_pieces(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        opening = {**block, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in split_bytes(json.dumps(block["input"]), TOOL_ARGUMENT_PIECES)
        ]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in word_pieces(block["text"])]
    return [
        {"type": "content_block_start", "index": index, "content_block": opening},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def _tool_call_deltas(calls: list[dict]) -> list[dict]:
    """The chat deltas that stream `calls` as OpenAI does: for each, one with its index, id,
    type, name and empty arguments, then its arguments in TOOL_ARGUMENT_PIECES deltas."""
    deltas = []
    for index, call in enumerate(calls):
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        opening = {"index": index, "id": call["id"], "type": "function"}
        deltas.append({"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in split_bytes(arguments, TOOL_ARGUMENT_PIECES)
        ]
    return deltas


def _usage(
    prompt_tokens: int, completion_tokens: int, flags: Flags, reasoning: int | None = None
) -> dict:
    """Chat and completions usage; `reasoning` tokens (part of the completion ones) are
    reported unless the `reasoning=N` flag says otherwise."""
    if flags.usage:
        value = ABSURD_USAGE[flags.usage]
        return {"prompt_tokens": value, "completion_tokens": value, "total_tokens": value}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    prompt = {"cached_tokens": flags.cached, "cache_write_tokens": flags.cachewrite}
    if any(n is not None for n in prompt.values()):
        usage["prompt_tokens_details"] = {k: n for k, n in prompt.items() if n is not None}
    reasoning = flags.reasoning if flags.reasoning is not None else reasoning
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _bad_request_id(record: Received) -> web.Response | None:
    """As llama-cpp-python's server (starlette-context): an X-Request-ID that is not a UUID
    gets 400 with an empty body, before anything else."""
    value = record.headers.get("x-request-id")
    if value is None:
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return web.Response(status=400)
    return None

"""A strict check of Anthropic Messages streams and answers, as the SDK and the docs have them."""

import json

STOP_REASONS = frozenset(
    {
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    }
)
DELTAS = {
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}
BLOCK_FIELDS = {
    "text": {"type", "text"},
    "tool_use": {"type", "id", "name", "input"},
    "thinking": {"type", "thinking", "signature"},
}
USAGE_COUNTS = ("input_tokens", "output_tokens")
CACHE_COUNTS = ("cache_creation_input_tokens", "cache_read_input_tokens")


class StreamError(AssertionError):
    """A stream or answer that breaks the Messages format."""


def _require(condition, message: str) -> None:
    if not condition:
        raise StreamError(message)


def _count(value) -> bool:
    return type(value) is int and value >= 0


def check_stream(events: list[tuple[str, dict]], *, given: frozenset[str] = frozenset()) -> dict:
    """The Message `events` ((SSE event name, data) pairs) reassemble to; StreamError unless
    they are a valid stream. An error event may end it: the result is then
    `{"error": <its error object>, "partial": <the Message so far>}`. Tool use ids are
    `toolu_…` or among the upstream's `given` ones."""
    _require(events, "an empty stream")
    message = None
    open_index = None
    buffers: dict[int, str] = {}
    finished = False
    for position, (name, data) in enumerate(events):
        where = f"event {position} ({name})"
        _require(isinstance(data, dict), f"{where}: data is not an object")
        _require(data.get("type") == name, f"{where}: data type {data.get('type')!r}")
        last = position == len(events) - 1
        if name == "ping":
            continue
        if name == "error":
            _require(last, f"{where}: events after an error")
            error = data.get("error")
            _require(isinstance(error, dict), f"{where}: no error object")
            _require(isinstance(error.get("type"), str), f"{where}: no error type")
            _require(isinstance(error.get("message"), str), f"{where}: no error message")
            return {"error": error, "partial": message}
        if message is None:
            _require(name == "message_start", f"{where}: before message_start")
            message = _start(data, where)
            continue
        _require(not finished or name == "message_stop", f"{where}: after message_delta")
        if name == "content_block_start":
            _require(open_index is None, f"{where}: block {open_index} still open")
            index = data.get("index")
            _require(index == len(message["content"]), f"{where}: index {index!r} not next")
            block = data.get("content_block")
            _require(isinstance(block, dict), f"{where}: no content_block")
            kind = block.get("type")
            _require(kind in BLOCK_FIELDS, f"{where}: block type {kind!r}")
            _require(BLOCK_FIELDS[kind] <= block.keys(), f"{where}: block lacks fields")
            if kind == "tool_use":
                _require(block["input"] == {}, f"{where}: tool_use input not empty")
                _require(_tool_id(block["id"], given), f"{where}: tool_use id {block['id']!r}")
                _require(isinstance(block["name"], str) and block["name"], f"{where}: no name")
                buffers[index] = ""
            else:
                _require(block[_text_field(kind)] == "", f"{where}: block starts not empty")
            message["content"].append(dict(block))
            open_index = index
        elif name == "content_block_delta":
            index = data.get("index")
            _require(index == open_index and index is not None, f"{where}: index {index!r}")
            _delta(message["content"][index], data.get("delta"), buffers, index, where)
        elif name == "content_block_stop":
            index = data.get("index")
            _require(index == open_index and index is not None, f"{where}: index {index!r}")
            block = message["content"][index]
            if block["type"] == "tool_use":
                partial = buffers[index]
                try:
                    value = json.loads(partial) if partial else {}
                except ValueError as error:
                    raise StreamError(f"{where}: tool input {partial!r} is not JSON") from error
                _require(isinstance(value, dict), f"{where}: tool input is not an object")
                block["input"] = value
            open_index = None
        elif name == "message_delta":
            _require(open_index is None, f"{where}: block {open_index} still open")
            delta = data.get("delta")
            _require(isinstance(delta, dict), f"{where}: no delta")
            _require(delta.get("stop_reason") in STOP_REASONS, f"{where}: stop_reason")
            _require(
                delta.get("stop_sequence") is None or isinstance(delta["stop_sequence"], str),
                f"{where}: stop_sequence",
            )
            usage = data.get("usage")
            _require(isinstance(usage, dict), f"{where}: no usage")
            _require(_count(usage.get("output_tokens")), f"{where}: output_tokens")
            for field in ("input_tokens", *CACHE_COUNTS):
                _require(usage.get(field) is None or _count(usage[field]), f"{where}: {field}")
                if usage.get(field) is not None:
                    message["usage"][field] = usage[field]
            message["usage"]["output_tokens"] = usage["output_tokens"]
            message["stop_reason"] = delta["stop_reason"]
            message["stop_sequence"] = delta.get("stop_sequence")
            finished = True
        elif name == "message_stop":
            _require(finished, f"{where}: message_stop without message_delta")
            _require(last, f"{where}: events after message_stop")
            check_message(message, given=given)
            return message
        else:
            raise StreamError(f"{where}: unknown event")
    raise StreamError("the stream ends without message_stop")


def _start(data: dict, where: str) -> dict:
    message = data.get("message")
    _require(isinstance(message, dict), f"{where}: no message")
    _require(
        isinstance(message.get("id"), str) and message["id"].startswith("msg_"),
        f"{where}: message id {message.get('id')!r}",
    )
    _require(message.get("type") == "message", f"{where}: type")
    _require(message.get("role") == "assistant", f"{where}: role")
    _require(isinstance(message.get("model"), str), f"{where}: model")
    _require(message.get("content") == [], f"{where}: content not empty")
    _require(message.get("stop_reason") is None, f"{where}: stop_reason set")
    _require("stop_sequence" in message, f"{where}: no stop_sequence")
    usage = message.get("usage")
    _require(isinstance(usage, dict), f"{where}: no usage")
    for field in USAGE_COUNTS:
        _require(_count(usage.get(field)), f"{where}: usage.{field}")
    return {**message, "content": [], "usage": dict(usage)}


def _text_field(kind: str) -> str:
    return "text" if kind == "text" else "thinking"


def _delta(block: dict, delta, buffers: dict, index: int, where: str) -> None:
    _require(isinstance(delta, dict), f"{where}: no delta")
    kind = delta.get("type")
    _require(kind in DELTAS[block["type"]], f"{where}: {kind!r} in a {block['type']} block")
    if kind == "text_delta":
        _require(isinstance(delta.get("text"), str), f"{where}: text")
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        _require(isinstance(delta.get("thinking"), str), f"{where}: thinking")
        _require(not block["signature"], f"{where}: thinking after its signature")
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        _require(isinstance(delta.get("signature"), str), f"{where}: signature")
        block["signature"] = delta["signature"]
    else:
        _require(isinstance(delta.get("partial_json"), str), f"{where}: partial_json")
        buffers[index] += delta["partial_json"]


def _tool_id(found, given: frozenset[str]) -> bool:
    return isinstance(found, str) and (found.startswith("toolu_") or found in given)


def check_message(obj: dict, *, given: frozenset[str] = frozenset()) -> dict:
    """`obj` if it is a valid Message (a non-streamed answer, or a reassembled stream's);
    StreamError otherwise. Tool use ids as in `check_stream`."""
    _require(isinstance(obj, dict), "a Message is an object")
    _require(
        isinstance(obj.get("id"), str) and obj["id"].startswith("msg_"), f"id {obj.get('id')!r}"
    )
    _require(obj.get("type") == "message", "type")
    _require(obj.get("role") == "assistant", "role")
    _require(isinstance(obj.get("model"), str) and obj["model"], "model")
    _require(obj.get("stop_reason") in STOP_REASONS, f"stop_reason {obj.get('stop_reason')!r}")
    _require(obj.get("stop_sequence") is None or isinstance(obj["stop_sequence"], str), "stop")
    _require(
        (obj["stop_reason"] == "stop_sequence") == (obj.get("stop_sequence") is not None),
        "stop_sequence goes with stop_reason stop_sequence",
    )
    usage = obj.get("usage")
    _require(isinstance(usage, dict), "usage")
    for field in USAGE_COUNTS:
        _require(_count(usage.get(field)), f"usage.{field}")
    for field in CACHE_COUNTS:
        _require(usage.get(field) is None or _count(usage[field]), f"usage.{field}")
    content = obj.get("content")
    _require(isinstance(content, list), "content")
    ids = set()
    for index, block in enumerate(content):
        _require(isinstance(block, dict), f"content[{index}]")
        kind = block.get("type")
        _require(kind in BLOCK_FIELDS, f"content[{index}].type {kind!r}")
        _require(BLOCK_FIELDS[kind] <= block.keys(), f"content[{index}] lacks fields")
        if kind == "text":
            _require(isinstance(block["text"], str), f"content[{index}].text")
        elif kind == "thinking":
            _require(isinstance(block["thinking"], str), f"content[{index}].thinking")
            _require(isinstance(block["signature"], str) and block["signature"], "signature")
        else:
            _require(_tool_id(block["id"], given), f"content[{index}].id {block['id']!r}")
            _require(block["id"] not in ids, f"content[{index}].id repeated")
            ids.add(block["id"])
            _require(isinstance(block["name"], str) and block["name"], f"content[{index}].name")
            _require(isinstance(block["input"], dict), f"content[{index}].input")
    if obj["stop_reason"] == "tool_use":
        _require(ids, "stop_reason tool_use without a tool_use block")
    return obj

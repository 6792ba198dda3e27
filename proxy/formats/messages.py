"""Anthropic's Messages API on a chat-completions upstream (pure): a Messages request as a
chat body, and a chat answer or stream back as a Message or Messages stream events.

The request is one checked by `proxy.validation.MESSAGES` (or `COUNT_TOKENS`).
"""

import hashlib
import json

from proxy.errors import APIError, bad_request
from proxy.formats.ids import new_id
from proxy.usage import CHARS_PER_TOKEN, Usage

# Claude Code puts this line first in the system prompt, with a random value per
# request: passed on, it would defeat every upstream's prefix cache.
BILLING_HEADER = "x-anthropic-billing-header:"

# A custom tool has no `type` or "custom"; every other type is a server tool
# (`web_search_20250305`, `bash_20250124`, ...), run by Anthropic, not by the model.
CUSTOM_TOOL_TYPES = (None, "custom")

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}

# thinking.budget_tokens as chat's reasoning_effort, by bucket (an approximation:
# chat has no token budget): below 4096 low, below 16384 medium, else high.
EFFORT_BUCKETS = ((4096, "low"), (16384, "medium"))
# output_config.effort: chat's reasoning_effort stops at "high".
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic's error types by status (docs.claude.com/en/api/errors; the SDK's
# types/shared/error_type.py). 503 is the gateway's "busy, retry": Anthropic's
# overloaded_error, which Claude Code retries as such.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# What a tool result's image (or other non-text block) becomes: chat's tool messages
# carry text only, and refusing would make the whole conversation unusable.
OMITTED = "[{} omitted: not supported in tool results here]"
ERROR_PREFIX = "Error: "

# count_tokens for a chat upstream: tokens per message for its role and framing,
# and per image (Anthropic's ~1,600 for a 1092x1092 image; the size is not read).
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 1600

SIGNATURE_PREFIX = "aethergate."


# ----------------------------------------------------------------- request


def to_chat(payload: dict) -> dict:
    """The chat body for the Messages request `payload`; a 400 APIError for what cannot be
    translated (documents, server tools, MCP servers, file sources).

    `model` and `stream` are the client's; no `stream_options`.
    """
    if payload.get("mcp_servers"):
        raise _unsupported("MCP servers are not supported on this model.", "mcp_servers")
    messages = []
    system = system_text(payload.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(payload["messages"]):
        messages.extend(_turn(message, f"messages[{index}]"))
    body = {"model": payload["model"], "messages": messages}
    if payload.get("max_tokens") is not None:
        body["max_tokens"] = payload["max_tokens"]
    for name in ("temperature", "top_p", "top_k", "stream"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    if payload.get("stop_sequences"):
        body["stop"] = list(payload["stop_sequences"])
    user = (payload.get("metadata") or {}).get("user_id")
    if user:
        body["user"] = user
    tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(payload.get("tools") or ())]
    if tools:
        body["tools"] = tools
        # Chat servers refuse a tool_choice without tools: it only goes with them.
        _tool_choice(body, payload.get("tool_choice"))
    effort = _effort(payload)
    if effort:
        body["reasoning_effort"] = effort
    output_format = (payload.get("output_config") or {}).get("format")
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output_format.get("schema") or {}},
        }
    return body


def system_text(system) -> str:
    """The system prompt as one text: a string, or its text blocks joined by a blank line,
    without Claude Code's per-request billing line."""
    if system is None:
        return ""
    if isinstance(system, str):
        return "" if system.startswith(BILLING_HEADER) else system
    texts = []
    for index, block in enumerate(system):
        if block.get("type") != "text":
            raise _unsupported_block(block, f"system[{index}]")
        if not block["text"].startswith(BILLING_HEADER):
            texts.append(block["text"])
    return "\n\n".join(texts)


def _turn(message: dict, param: str) -> list[dict]:
    """The chat messages of one Messages turn: a user turn's tool results first, one tool
    message each, then its other content; an assistant turn's text and tool calls as one."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts, calls, results = [], [], []
    for index, block in enumerate(content):
        where = f"{param}.content[{index}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the upstream's own reasoning cannot be given back to it
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, where)}})
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": _compact(block["input"])},
                }
            )
        elif kind == "tool_result" and role == "user":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": _tool_result(block),
                }
            )
        else:
            raise _unsupported_block(block, where, role)
    turn = results
    if role == "assistant":
        if parts or calls:
            said = {"role": "assistant", "content": _content(parts) if parts else None}
            if calls:
                said["tool_calls"] = calls
            turn.append(said)
    elif parts:
        turn.append({"role": "user", "content": _content(parts)})
    return turn


def _content(parts: list[dict]) -> str | list[dict]:
    """Parts of only text as one string (joined by newlines, as vLLM joins text parts)."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _image_url(block: dict, param: str) -> str:
    source = block["source"]
    if source.get("type") == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    if source.get("type") == "url":
        return source["url"]
    raise bad_request(
        f"Images from a '{source.get('type')}' source are not supported on this model; "
        "send them as base64 or a URL.",
        code="unsupported_content",
        param=f"{param}.source.type",
    )


def _tool_result(block: dict) -> str:
    """A tool result's text: its string, or its text blocks joined by newlines, each other
    block (an image) as a note; an error's prefixed "Error: " (chat's tool messages have
    no error flag)."""
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "\n".join(
            part["text"] if part.get("type") == "text" else OMITTED.format(part.get("type"))
            for part in content
        )
    return ERROR_PREFIX + text if block.get("is_error") else text


def _tool(tool: dict, param: str) -> dict:
    kind = tool.get("type")
    if kind not in CUSTOM_TOOL_TYPES:
        raise _unsupported(
            f"The server tool '{kind}' ('{tool['name']}') is not supported on this model; "
            "only custom tools (name, description, input_schema) are.",
            f"{param}.type",
        )
    function = {"name": tool["name"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(body: dict, choice: dict | None) -> None:
    if choice is None:
        return
    kind = choice["type"]
    if kind == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        body["tool_choice"] = TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


def _effort(payload: dict) -> str | None:
    """reasoning_effort: output_config.effort if given, else from the thinking budget;
    adaptive thinking is "medium", and none or disabled thinking sets nothing."""
    effort = (payload.get("output_config") or {}).get("effort")
    if effort in EFFORTS:
        return EFFORTS[effort]
    thinking = payload.get("thinking") or {}
    if thinking.get("type") == "adaptive":
        return "medium"
    if thinking.get("type") != "enabled":
        return None
    budget = thinking["budget_tokens"]
    return next((name for limit, name in EFFORT_BUCKETS if budget < limit), "high")


def _unsupported(message: str, param: str) -> APIError:
    return bad_request(message, code="unsupported_parameter", param=param)


def _unsupported_block(block: dict, param: str, role: str | None = None) -> APIError:
    where = f" in a {role} turn" if role else ""
    return bad_request(
        f"Content blocks of type '{block.get('type')}' are not supported{where} on this model.",
        code="unsupported_content",
        param=f"{param}.type",
    )


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------- answer


def from_chat(chat: dict, payload: dict, *, message_id: str, model: str, used: Usage) -> dict:
    """The Message for the chat answer `chat` to the Messages request `payload`; ValueError
    for an answer without a first choice holding a message.

    Content: a thinking block for the reasoning (signed by the gateway), a text block,
    then one tool_use block per tool call. Arguments that are not a JSON object become
    `{}`: the call still reaches the client, whose tool then reports the missing input.
    """
    choices = chat.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("an answer without choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ValueError("a choice without a message")
    content = []
    reasoning = _reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": sign(reasoning)})
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise ValueError("a message whose content is not a string")
    text = text or message.get("refusal")
    if text and isinstance(text, str):
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ValueError("tool_calls that are not a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError("a tool call without a function name")
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id")),
                "name": function["name"],
                "input": _input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = stop_of(choice, payload, bool(calls))
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_of(used),
    }


def sign(thinking: str) -> str:
    """The signature of a thinking block the gateway made: opaque, derived from its text.

    Anthropic cannot verify it, so such a block must never go to an Anthropic
    upstream; the gateway drops thinking from the history it translates.
    """
    return SIGNATURE_PREFIX + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def stop_of(choice: dict, payload: dict, called: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished chat choice.

    Tool calls make it tool_use whatever the finish reason (llama.cpp and
    Ollama say "stop"). The stop sequence is known only from vLLM's
    `stop_reason`, the string that stopped it; chat itself does not say.
    """
    if called:
        return "tool_use", None
    reason = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if reason == "stop" and isinstance(matched, str) and matched in _stops(payload):
        return "stop_sequence", matched
    return STOP_REASONS.get(reason, "end_turn"), None


def usage_of(used: Usage) -> dict:
    """Anthropic's usage: its `input_tokens` leaves out the tokens read from or written to
    the cache, which come apart."""
    return {
        "input_tokens": max(used.input - used.cache_read - used.cache_write, 0),
        "output_tokens": used.output,
        "cache_creation_input_tokens": used.cache_write,
        "cache_read_input_tokens": used.cache_read,
    }


def _stops(payload: dict) -> list:
    return payload.get("stop_sequences") or []


def _reasoning(holder: dict) -> str:
    """The reasoning text of a chat message or delta: `reasoning_content` (DeepSeek, vLLM,
    llama.cpp), else `reasoning` (newer vLLM, OpenRouter); never both, which some send
    alike."""
    for name in ("reasoning_content", "reasoning"):
        value = holder.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _tool_id(found) -> str:
    return found if isinstance(found, str) and found else new_id("toolu_")


def _input(arguments) -> dict:
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------- stream


class MessagesStream:
    """Chat chunks as a Messages stream's events: message_start, one block at a time
    (thinking, text, tool_use; indexes from 0), message_delta with the real usage, then
    message_stop; or an error event.

    `input_tokens` is the gateway's estimate for message_start: the upstream
    reports usage only at the end, and message_delta carries it then. Tool call
    arguments are passed on as the upstream streams them; a call's block opens
    once its name is known. Raises ValueError for a chunk not shaped as chat's,
    or deltas for a tool call whose block is already closed.
    """

    def __init__(self, payload: dict, *, message_id: str, model: str, input_tokens: int):
        self.payload = payload
        self.message_id = message_id
        self.model = model
        self.input_tokens = input_tokens
        self.blocks = 0  # blocks started: the next block's index
        self.open: str | None = None  # the open block's type
        self.thinking = ""  # the open thinking block's text, for its signature
        self.tool: int | None = None  # the chat index of the open or pending tool call
        self.tool_id: str | None = None  # and its id
        self.pending: dict | None = None  # a tool call whose name has not come yet
        self.closed_tools: set[int | str] = set()  # the indexes and ids of closed calls
        self.called = False
        self.choice: dict = {}  # the finish_reason (and vLLM's stop_reason) seen

    def start(self) -> list[dict]:
        return [
            {
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": self.input_tokens,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            }
        ]

    def feed(self, chunk: dict) -> list[dict]:
        choices = chunk.get("choices", [])  # none at all: a usage chunk, like `[]`
        if not isinstance(choices, list):
            raise ValueError("a chunk without choices")
        events = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise ValueError("a choice that is not an object")
            if choice.get("index", 0) != 0:
                continue  # one choice is asked for (to_chat sets no `n`)
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ValueError("a delta that is not an object")
            reasoning = _reasoning(delta)
            if reasoning:
                events += self._text("thinking", reasoning)
            text = delta.get("content")
            if isinstance(text, str) and text:
                events += self._text("text", text)
            for call in delta.get("tool_calls") or ():
                events += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self.choice = choice
        return events

    def finish(self, used: Usage) -> list[dict]:
        if self.pending is not None:
            raise ValueError("a tool call without a name")
        events = self._close()
        stop_reason, stop_sequence = stop_of(self.choice, self.payload, self.called)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": usage_of(used),
            }
        )
        events.append({"type": "message_stop"})
        return events

    def fail(self, error: APIError) -> list[dict]:
        return [error_event(error)]

    def _text(self, kind: str, text: str) -> list[dict]:
        events = []
        if self.open != kind:
            events = self._close()
            block = {"type": "text", "text": ""}
            if kind == "thinking":
                block = {"type": "thinking", "thinking": "", "signature": ""}
            events.append(self._begin(kind, block))
        if kind == "thinking":
            self.thinking += text
            delta = {"type": "thinking_delta", "thinking": text}
        else:
            delta = {"type": "text_delta", "text": text}
        events.append(self._delta(delta))
        return events

    def _tool_call(self, call) -> list[dict]:
        if not isinstance(call, dict):
            raise ValueError("a tool call that is not an object")
        index = call.get("index", 0)
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise ValueError("a tool call's function that is not an object")
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        found = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        events = []
        # A new call: another index, or (some servers number every call 0) another id.
        if index != self.tool or (found is not None and found != self.tool_id):
            if found in self.closed_tools or (found is None and index in self.closed_tools):
                raise ValueError("deltas for a tool call already closed")
            if self.pending is not None:
                raise ValueError("a tool call without a name")
            events = self._close()
            self.tool, self.tool_id = index, found or new_id("toolu_")
            self.pending = {"arguments": ""}
        if self.pending is not None:
            self.pending["arguments"] += arguments
            name = function.get("name")
            if not isinstance(name, str) or not name:
                return events
            block = {"type": "tool_use", "id": self.tool_id, "name": name, "input": {}}
            arguments, self.pending = self.pending["arguments"], None
            events += self._close()  # a text block that came before the name
            events.append(self._begin("tool_use", block))
            self.called = True
        if arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def _begin(self, kind: str, block: dict) -> dict:
        self.open = kind
        return {"type": "content_block_start", "index": self.blocks, "content_block": block}

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": self.blocks, "delta": delta}

    def _close(self) -> list[dict]:
        """The events that close the open block (none if none is open)."""
        if self.open is None:
            return []
        events = []
        if self.open == "thinking":
            events.append(
                self._delta({"type": "signature_delta", "signature": sign(self.thinking)})
            )
            self.thinking = ""
        elif self.open == "tool_use":
            self.closed_tools.update((self.tool, self.tool_id))
            self.tool = self.tool_id = None
        events.append({"type": "content_block_stop", "index": self.blocks})
        self.blocks += 1
        self.open = None
        return events


# ----------------------------------------------------------------- errors


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status: other 4xx are invalid requests, other
    5xx api errors."""
    found = ERROR_TYPES.get(status)
    if found:
        return found
    return "invalid_request_error" if status < 500 else "api_error"


def error_event(error: APIError) -> dict:
    """`error` as Anthropic's error object: the body of an error answer, the data of a
    stream's error event."""
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


def error_body(error: APIError) -> bytes:
    return json.dumps(error_event(error)).encode()


# ----------------------------------------------------------------- count_tokens


def estimate_input_tokens(payload: dict) -> int:
    """An estimate of the request's input tokens, for count_tokens on a chat upstream
    (which has no such call): the characters of the system prompt, texts, tool calls,
    tool results and tool definitions over CHARS_PER_TOKEN, rounded up, plus
    MESSAGE_OVERHEAD_TOKENS a message and IMAGE_TOKENS an image. Thinking in the
    history is not counted: it is not sent on.
    """
    chars = len(system_text(payload.get("system")))
    images = 0
    for message in payload["messages"]:
        content = message["content"]
        if isinstance(content, str):
            chars += len(content)
            continue
        for block in content:
            kind = block.get("type")
            if kind == "text":
                chars += len(block["text"])
            elif kind == "image":
                images += 1
            elif kind == "tool_use":
                chars += len(block["name"]) + len(_compact(block["input"]))
            elif kind == "tool_result":
                result = block.get("content")
                if isinstance(result, list):
                    images += sum(1 for part in result if part.get("type") == "image")
                    result = [part for part in result if part.get("type") == "text"]
                    chars += len(_tool_result({"content": result}))
                else:
                    chars += len(_tool_result(block))
    for tool in payload.get("tools") or ():
        chars += len(tool.get("name") or "") + len(tool.get("description") or "")
        chars += len(_compact(tool.get("input_schema") or {}))
    text_tokens = (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    return text_tokens + MESSAGE_OVERHEAD_TOKENS * len(payload["messages"]) + IMAGE_TOKENS * images

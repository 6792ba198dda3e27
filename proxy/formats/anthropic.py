"""Chat Completions to and from an upstream that speaks Anthropic's Messages API.

`from_chat` makes the Messages request of a chat body; `to_chat` and `ChatChunks` make chat
answers and chunks of the Messages answer and stream events.
"""

import json
import re
from typing import Any

from proxy import usage
from proxy.errors import bad_request

# Anthropic's sampling temperature runs from 0 to 1 (OpenAI's to 2).
MAX_TEMPERATURE = 1
# `reasoning_effort` as a thinking budget; Anthropic's floor is 1024 and the budget must stay
# below `max_tokens` (APY `thinking_config_enabled_param.py`).
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET = 1024
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)
TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Chat fields with no Messages counterpart, refused rather than silently ignored because
# the client would get something other than what it asked for.
UNSUPPORTED = ("audio", "logprobs", "top_logprobs", "prediction")


# --------------------------------------------------------------------------- requests


def from_chat(body: dict, *, max_tokens: int) -> dict:
    """The Messages request of a chat request `body`; `max_tokens` when the body sets none
    (Anthropic requires it). Raises `bad_request` for what Messages cannot carry."""
    _refuse_unsupported(body)
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or max_tokens
    system, turns = _turns(body.get("messages") or [])
    request: dict[str, Any] = {"model": body.get("model"), "max_tokens": limit, "messages": turns}
    if system:
        request["system"] = "\n\n".join(system)
    tools = body.get("tools")
    if tools:
        request["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            request["tool_choice"] = choice
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > MAX_TEMPERATURE:
            raise bad_request(
                f"temperature must be at most {MAX_TEMPERATURE} for this model",
                param="temperature",
            )
        request["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            request[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if user:
        request["metadata"] = {"user_id": user}
    thinking = _thinking(body.get("reasoning_effort"), limit)
    if thinking:
        request["thinking"] = thinking
    output_format = _output_format(body.get("response_format"))
    if output_format:
        request["output_config"] = {"format": output_format}
    if isinstance(body.get("stream"), bool):
        request["stream"] = body["stream"]
    return request


def _refuse_unsupported(body: dict) -> None:
    for name in UNSUPPORTED:
        if body.get(name):
            raise bad_request(f"{name} is not supported by this model", param=name)
    if (body.get("n") or 1) > 1:
        raise bad_request("n greater than 1 is not supported by this model", param="n")
    if body.get("modalities") not in (None, ["text"]):
        raise bad_request("only text output is supported by this model", param="modalities")


def _turns(messages: list) -> tuple[list[str], list[dict]]:
    """The system texts and the alternating turns of chat `messages`.

    Consecutive messages of one role make one turn (Anthropic combines them alike), tool
    results a user turn; a message with nothing to send adds no block.
    """
    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            text = _text(message.get("content"), where)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(message.get("content"), where)
        elif role == "assistant":
            blocks = _blocks(message.get("content"), where)
            blocks += _tool_uses(message.get("tool_calls") or [], where)
        elif role == "tool":
            role = "user"
            blocks = [_tool_result(message, where)]
        else:
            raise bad_request(f"{where}: role {role!r} is not supported", param=f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _text(content: Any, where: str) -> str:
    """The text of a content made of text alone (system and tool messages)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise bad_request(
                f"{where}: only text content is supported here", param=f"{where}.content[{j}]"
            )
        texts.append(part.get("text") or "")
    return "".join(texts)


def _blocks(content: Any, where: str) -> list[dict]:
    """The Messages content blocks of a user or assistant `content` (empty texts left out:
    Anthropic refuses them)."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise bad_request(
                f"{where}: content of type {kind!r} is not supported by this model",
                param=f"{where}.content[{j}]",
            )
    return blocks


def _image(image_url: Any, where: str) -> dict:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    url = url if isinstance(url, str) else ""
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = DATA_URL.fullmatch(url)
    if match is None or match[1] not in IMAGE_TYPES:
        raise bad_request(
            f"{where}: an image must be an http(s) URL or a base64 data: URL of "
            + ", ".join(IMAGE_TYPES),
            param=where,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": match[1], "data": match[2]}}


def _tool_uses(calls: list, where: str) -> list[dict]:
    blocks = []
    for j, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"  # "" is how some clients say none
        try:
            parsed = json.loads(arguments)
        except (TypeError, ValueError):
            parsed = None
        if not isinstance(parsed, dict):
            raise bad_request(
                f"{where}: tool call arguments must be a JSON object",
                param=f"{where}.tool_calls[{j}].function.arguments",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": parsed,
            }
        )
    return blocks


def _tool_result(message: dict, where: str) -> dict:
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": _text(message.get("content"), where),
    }


def _tool(tool: dict, i: int) -> dict:
    function = tool.get("function") if tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise bad_request(
            "only function tools are supported by this model", param=f"tools[{i}].type"
        )
    made = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object"},
    }
    if function.get("description"):
        made["description"] = function["description"]
    if function.get("strict") is not None:
        made["strict"] = function["strict"]
    return made


def _tool_choice(choice: Any, parallel: Any) -> dict | None:
    if choice is None:
        made = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, str) and choice in TOOL_CHOICES:
        made = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        made = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise bad_request("this tool_choice is not supported by this model", param="tool_choice")
    # Anthropic's `none` takes no such flag: with no tool used, there is nothing to disable.
    if made and parallel is False and made["type"] != "none":
        made["disable_parallel_tool_use"] = True
    return made


def _thinking(effort: Any, limit: int) -> dict | None:
    """The thinking config of a `reasoning_effort`; None for none, or when `limit` leaves no
    room for the smallest budget (the answer then has no thinking)."""
    if effort is None or effort == "none":
        return None
    if effort not in THINKING_BUDGETS:
        raise bad_request(
            f"reasoning_effort {effort!r} is not supported by this model", param="reasoning_effort"
        )
    budget = min(THINKING_BUDGETS[effort], limit - 1)
    if budget < MIN_THINKING_BUDGET:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _output_format(response_format: Any) -> dict | None:
    """Anthropic's structured output (`output_config.format`, APY `output_config_param.py`)
    of a chat `response_format`: a JSON schema maps; JSON without a schema has no match."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in (None, "text"):
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if kind == "json_schema" and isinstance(schema, dict):
        return {"type": "json_schema", "schema": schema}
    raise bad_request(
        f"response_format {kind!r} is not supported by this model; use json_schema with a schema",
        param="response_format",
    )


# --------------------------------------------------------------------------- answers


def to_chat(message: dict) -> dict:
    """The chat.completion answer of an Anthropic Message (`created` is the caller's to
    set). Raises ValueError for something that is not a Message."""
    if not isinstance(message, dict) or message.get("type") != "message":
        raise ValueError("not an Anthropic message")
    content = message.get("content")
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise ValueError("an Anthropic message without a list of content blocks")
    texts, thoughts, calls = [], [], []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thoughts.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append(_tool_call(block))
    answer_message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
    }
    if thoughts:
        answer_message["reasoning_content"] = "".join(thoughts)
    if calls:
        answer_message["tool_calls"] = calls
    answer = {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": answer_message,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
    }
    used = usage.from_messages(message.get("usage"))
    if used is not None:
        answer["usage"] = chat_usage(used)
    return answer


def _tool_call(block: dict) -> dict:
    arguments = json.dumps(block.get("input") or {}, separators=(",", ":"), ensure_ascii=False)
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": arguments},
    }


def finish_reason(stop_reason: Any) -> str:
    """The chat finish_reason of an Anthropic `stop_reason` ("stop" for one it adds)."""
    return FINISH_REASONS.get(stop_reason, "stop")


def chat_usage(used: usage.Usage) -> dict:
    """`used` as a chat answer's `usage` (what `usage.from_upstream` reads back)."""
    return {
        "prompt_tokens": used.input,
        "completion_tokens": used.output,
        "total_tokens": used.input + used.output,
        "prompt_tokens_details": {
            "cached_tokens": used.cache_read,
            "cache_write_tokens": used.cache_write,
        },
    }


# --------------------------------------------------------------------------- streams


class ChatChunks:
    """Chat chunks of an Anthropic Messages stream, one event (its JSON `data`) at a time.

    `feed(event)` returns the chunks an event makes (often none); `finished` is True once
    `message_stop` came, which made the finish chunk and the usage one (`choices: []`,
    left out when the stream's usage is not sane). Chunks carry `created` only if given.
    An `error` event, or an event that is not an object with a `type`, raises ValueError.
    """

    def __init__(self, *, created: int | None = None):
        self.created = created
        self.finished = False
        self._id: str | None = None
        self._model: str | None = None
        self._usage: dict = {}
        self._stop_reason: str | None = None
        # By content block index: the tool call index of each tool_use block, and whether
        # it has had any arguments yet.
        self._tools: dict[int, int] = {}
        self._argued: set[int] = set()

    def feed(self, event: dict) -> list[dict]:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ValueError("an Anthropic stream event that is not an object with a type")
        kind = event["type"]
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            raise ValueError(f"Anthropic stream error: {error.get('type')}: {error.get('message')}")
        if self.finished:
            return []
        if kind == "message_start":
            return self._start(event.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(event.get("index"), event.get("delta") or {})
        if kind == "content_block_stop":
            return self._block_stop(event.get("index"))
        if kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
            self._take_usage(event.get("usage"))
            return []
        if kind == "message_stop":
            return self._stop()
        return []  # ping, and event types Anthropic adds

    def _start(self, message: dict) -> list[dict]:
        self._id, self._model = message.get("id"), message.get("model")
        self._take_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: Any, block: dict) -> list[dict]:
        kind = block.get("type")
        if kind == "tool_use":
            self._tools[index] = len(self._tools)
            arguments = ""
            if block.get("input"):
                arguments = _tool_call(block)["function"]["arguments"]
                self._argued.add(index)
            call = {
                "index": self._tools[index],
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []

    def _delta(self, index: Any, delta: dict) -> list[dict]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tools:
            self._argued.add(index)
            return [self._arguments(index, delta["partial_json"])]
        return []  # signature_delta, citations_delta, and what Anthropic adds

    def _block_stop(self, index: Any) -> list[dict]:
        # A call without input streams none; chat clients parse its arguments as JSON.
        if index in self._tools and index not in self._argued:
            self._argued.add(index)
            return [self._arguments(index, "{}")]
        return []

    def _arguments(self, index: int, text: str) -> dict:
        return self._chunk(
            {"tool_calls": [{"index": self._tools[index], "function": {"arguments": text}}]}
        )

    def _take_usage(self, reported: Any) -> None:
        # message_delta's usage is cumulative and may restate the input side: the latest wins.
        if isinstance(reported, dict):
            self._usage.update({k: v for k, v in reported.items() if v is not None})

    def _stop(self) -> list[dict]:
        self.finished = True
        chunks = [self._chunk({}, finish_reason(self._stop_reason))]
        used = usage.from_messages(self._usage)
        if used is not None:
            chunks.append({**self._base(), "choices": [], "usage": chat_usage(used)})
        return chunks

    def _base(self) -> dict:
        base: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk"}
        if self.created is not None:
            base["created"] = self.created
        base["model"] = self._model
        return base

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {
            **self._base(),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

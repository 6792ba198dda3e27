"""OpenAI's Responses API on a chat-completions upstream: requests to chat bodies, chat
answers and chunks back to Responses objects and stream events (pure).
"""

import json

from proxy.errors import APIError, bad_request
from proxy.formats.ids import new_id
from proxy.usage import Usage
from proxy.validation import invalid_type, invalid_value, missing

# The id each kind of input item gets when the client gave none.
ITEM_PREFIXES = {
    "message": "msg_",
    "function_call": "fc_",
    "function_call_output": "fco_",
    "reasoning": "rs_",
    "custom_tool_call": "ctc_",
    "custom_tool_call_output": "ctco_",
}
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
TOOL_CHOICES = ("none", "auto", "required")
# The parameter a custom (free-form) tool's input becomes, as a function's only argument.
CUSTOM_INPUT = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
    "additionalProperties": False,
}
# How a chat answer that ended early is reported: Response.incomplete_details.reason.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


# ----------------------------------------------------------------- requests


def input_items(payload: dict) -> list[dict]:
    """The request's `input` as OpenAI's item shapes, each with its `type` and an `id`.

    A string is one user message; message content is always a list of parts.
    The client's ids are kept. Raises the 400 for input that is not items.
    """
    given = payload.get("input")
    if given is None:
        return []
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    elif not isinstance(given, list):
        raise invalid_type("input", "a string or an array", given)
    items = []
    for index, raw in enumerate(given):
        param = f"input[{index}]"
        if type(raw) is not dict:
            raise invalid_type(param, "an object", raw)
        item = dict(raw)
        kind = item.get("type")
        if kind is None:
            if "role" not in item:
                raise missing(f"{param}.type")
            kind = item["type"] = "message"
        elif type(kind) is not str:
            raise invalid_type(f"{param}.type", "a string", kind)
        if kind == "message":
            _message_item(item, param)
        elif kind in ("function_call", "function_call_output"):
            item.setdefault("status", "completed")
        if not (isinstance(item.get("id"), str) and item["id"]):
            item["id"] = new_id(ITEM_PREFIXES.get(kind, "item_"))
        items.append(item)
    return items


def _message_item(item: dict, param: str) -> None:
    role = item.get("role")
    if role is None:
        raise missing(f"{param}.role")
    if role not in ROLES:
        raise invalid_value(f"{param}.role", role, ROLES)
    content = item.get("content")
    if isinstance(content, str):
        if role == "assistant":
            item["content"] = [{"type": "output_text", "text": content, "annotations": []}]
        else:
            item["content"] = [{"type": "input_text", "text": content}]
    elif not isinstance(content, list):
        if content is None:
            raise missing(f"{param}.content")
        raise invalid_type(f"{param}.content", "a string or an array", content)
    item.setdefault("status", "completed")


def to_chat(payload: dict, history: list[dict]) -> dict:
    """The chat-completions body for a Responses request (`model` and `stream` as sent).

    `history` is the items of the responses before this one in its chain,
    oldest first; they come before the request's own input. What the gateway
    keeps (store, metadata, ids, user) is not sent. Raises the 400 for what a
    chat upstream cannot be asked.
    """
    _refuse_unsupported(payload)
    messages = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    own = input_items(payload)
    for item in history:
        try:
            _add_item(messages, item, "previous_response_id")
        except APIError as error:
            error.param = "previous_response_id"  # the chain's item, not the request's
            raise
    for index, item in enumerate(own):
        _add_item(messages, item, f"input[{index}]")
    _finish_assistants(messages)
    if not messages:
        raise bad_request(
            "The request has no input: send 'input', 'instructions' or 'previous_response_id'.",
            code="missing_required_parameter",
            param="input",
        )
    body = {"model": payload["model"], "messages": messages}
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = payload.get("tool_choice")
    if choice is not None:
        body["tool_choice"] = _tool_choice(choice, body)
    # Sampling settings mean the same in both APIs; they are the client's to set.
    for name in ("temperature", "top_p", "parallel_tool_calls", "stream"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    if payload.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = payload["max_output_tokens"]
    _text(payload.get("text"), body)
    reasoning = payload.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        body["reasoning_effort"] = reasoning["effort"]
    return body


def _refuse_unsupported(payload: dict) -> None:
    truncation = payload.get("truncation")
    if truncation not in (None, "disabled"):
        raise _unsupported(
            f"'truncation': '{str(truncation)[:40]}' is not supported by this gateway; "
            "send 'disabled' or leave it out.",
            "truncation",
        )
    if payload.get("background") is True:
        raise _unsupported("Background responses are not supported by this gateway.", "background")
    if payload.get("conversation") is not None:
        raise _unsupported(
            "Conversations are not supported by this gateway; chain responses with "
            "'previous_response_id' or send the whole history in 'input'.",
            "conversation",
        )
    if payload.get("prompt") is not None:
        raise _unsupported(
            "Prompt templates are not supported by this gateway; send 'instructions'.", "prompt"
        )


def _unsupported(message: str, param: str) -> APIError:
    return bad_request(message, code="unsupported_parameter", param=param)


def _add_item(messages: list[dict], item: dict, param: str) -> None:
    """Append the chat message(s) one item stands for, merging assistant turns."""
    kind = item.get("type")
    if kind == "message":
        role = item["role"]
        if role == "assistant":
            _assistant(messages)["_texts"].append(_joined_text(item, param))
        elif role == "user":
            messages.append({"role": "user", "content": _user_content(item, param)})
        else:  # system, developer: the dialect layer makes developer system where needed
            messages.append({"role": role, "content": _joined_text(item, param)})
    elif kind == "function_call":
        name, arguments = _string(item, "name", param), _string(item, "arguments", param)
        _tool_call(messages, _string(item, "call_id", param), name, arguments)
    elif kind == "custom_tool_call":
        name, given = _string(item, "name", param), _string(item, "input", param)
        _tool_call(messages, _string(item, "call_id", param), name, json.dumps({"input": given}))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        messages.append(
            {
                "role": "tool",
                "tool_call_id": _string(item, "call_id", param),
                "content": _output_text(item.get("output"), f"{param}.output"),
            }
        )
    elif kind == "reasoning":
        pass  # a chat upstream takes no reasoning back
    elif kind == "item_reference":
        raise _unsupported(
            "Item references are not supported by this gateway: send the item itself, or "
            "chain with 'previous_response_id'.",
            f"{param}.type",
        )
    else:
        raise _unsupported(
            f"Input items of type '{str(kind)[:40]}' are not supported by this gateway.",
            f"{param}.type",
        )


def _assistant(messages: list[dict]) -> dict:
    """The assistant message the next assistant-side item joins: the last one if it is."""
    if not messages or messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": None, "_texts": []})
    return messages[-1]


def _tool_call(messages: list[dict], call_id: str, name: str, arguments: str) -> None:
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    _assistant(messages).setdefault("tool_calls", []).append(call)


def _finish_assistants(messages: list[dict]) -> None:
    # The texts of each assistant turn, gathered while its items came, become one string.
    for message in messages:
        texts = message.pop("_texts", None)
        if texts is not None:
            joined = "\n".join(text for text in texts if text)
            message["content"] = joined if joined or "tool_calls" not in message else None


def _string(item: dict, name: str, param: str) -> str:
    value = item.get(name)
    if value is None:
        raise missing(f"{param}.{name}")
    if type(value) is not str:
        raise invalid_type(f"{param}.{name}", "a string", value)
    return value


def _parts(item: dict, param: str) -> list[tuple[str, dict]]:
    """The (param, part) pairs of a message item's content, each part an object with a type."""
    pairs = []
    for index, part in enumerate(item["content"]):
        where = f"{param}.content[{index}]"
        if type(part) is not dict:
            raise invalid_type(where, "an object", part)
        if type(part.get("type")) is not str:
            raise (
                missing(f"{where}.type")
                if part.get("type") is None
                else invalid_type(f"{where}.type", "a string", part["type"])
            )
        pairs.append((where, part))
    return pairs


def _joined_text(item: dict, param: str) -> str:
    """A system, developer or assistant message's text: its parts' texts, joined."""
    texts = []
    for where, part in _parts(item, param):
        kind = part["type"]
        if kind in TEXT_PARTS:
            texts.append(_string(part, "text", where))
        elif kind == "refusal" and item["role"] == "assistant":
            texts.append(_string(part, "refusal", where))
        else:
            raise _part_refused(kind, where, item["role"])
    return "".join(texts)


def _user_content(item: dict, param: str) -> str | list[dict]:
    """A user message's chat content: a string for one text part, else chat parts."""
    parts = []
    for where, part in _parts(item, param):
        kind = part["type"]
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": _string(part, "text", where)})
        elif kind == "input_image":
            parts.append(_image(part, where))
        else:
            raise _part_refused(kind, where, "user")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _image(part: dict, where: str) -> dict:
    if part.get("image_url") is None:
        if part.get("file_id") is not None:
            raise _unsupported(
                "Images by 'file_id' are not supported by this gateway: send 'image_url' "
                "(an https or a data: URL).",
                f"{where}.file_id",
            )
        raise missing(f"{where}.image_url")
    image = {"url": _string(part, "image_url", where)}
    if part.get("detail") in IMAGE_DETAILS:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _part_refused(kind: str, where: str, role: str) -> APIError:
    if kind in ("input_file", "input_audio", "input_image"):
        return _unsupported(
            f"Content parts of type '{kind}' are not supported by this gateway in {role} messages.",
            f"{where}.type",
        )
    return invalid_value(f"{where}.type", kind, ("input_text", "input_image", "output_text"))


def _output_text(output, param: str) -> str:
    """A tool result's text: the string, or the text parts of a list (images are lost)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        if output is None:
            raise missing(param)
        raise invalid_type(param, "a string or an array", output)
    texts = []
    for index, part in enumerate(output):
        if type(part) is not dict:
            raise invalid_type(f"{param}[{index}]", "an object", part)
        if part.get("type") in TEXT_PARTS:
            texts.append(_string(part, "text", f"{param}[{index}]"))
    return "\n".join(texts)


def _tool(tool: dict, param: str) -> dict:
    kind = tool.get("type")
    if kind == "function":
        function = {"name": _string(tool, "name", param)}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        return {"type": "function", "function": function}
    if kind == "custom":
        # Free-form input (a grammar or plain text) has no chat form: a function taking one
        # string is the nearest, and its calls come back as function calls.
        function = {"name": _string(tool, "name", param), "parameters": CUSTOM_INPUT}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        return {"type": "function", "function": function}
    raise _unsupported(
        f"Tools of type '{str(kind)[:40]}' are not supported by this gateway; use function tools.",
        "tools",
    )


def _tool_choice(choice, body: dict):
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise invalid_value("tool_choice", choice, TOOL_CHOICES)
        return choice
    kind = choice.get("type")
    if kind in ("function", "custom"):
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    if kind == "allowed_tools":
        # Chat upstreams rarely know allowed_tools: the tools offered are narrowed instead.
        mode = choice.get("mode")
        if mode not in ("auto", "required"):
            raise invalid_value("tool_choice.mode", mode, ("auto", "required"))
        allowed = choice.get("tools")
        if not isinstance(allowed, list):
            raise missing("tool_choice.tools")
        names = {t.get("name") for t in allowed if isinstance(t, dict)}
        body["tools"] = [t for t in body.get("tools", ()) if t["function"]["name"] in names]
        if not body["tools"]:
            del body["tools"]
            return "none"
        return mode
    raise _unsupported(
        f"'tool_choice' of type '{str(kind)[:40]}' is not supported by this gateway.",
        "tool_choice",
    )


def _text(text, body: dict) -> None:
    """`text.format` as the chat `response_format`, `text.verbosity` as `verbosity`."""
    if not isinstance(text, dict):
        return
    if isinstance(text.get("verbosity"), str):
        body["verbosity"] = text["verbosity"]
    given = text.get("format")
    if given is None:
        return
    if type(given) is not dict:
        raise invalid_type("text.format", "an object", given)
    kind = given.get("type")
    if kind == "json_schema":
        schema = {"name": _string(given, "name", "text.format")}
        for name in ("description", "schema", "strict"):
            if given.get(name) is not None:
                schema[name] = given[name]
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise invalid_value("text.format.type", kind, ("text", "json_object", "json_schema"))


# ----------------------------------------------------------------- answers


def usage_object(used: Usage) -> dict:
    """The Response's `usage` (ResponseUsage) of the gateway's counts."""
    return {
        "input_tokens": used.input,
        "input_tokens_details": {
            "cached_tokens": used.cache_read,
            "cache_write_tokens": used.cache_write,
        },
        "output_tokens": used.output,
        "output_tokens_details": {"reasoning_tokens": used.reasoning},
        "total_tokens": used.input + used.output,
    }


def from_chat(
    chat: dict, payload: dict, *, response_id: str, created_at: int, model: str, used: Usage
) -> dict:
    """The Response for a whole chat answer to the request `payload`.

    It is the one a stream of the same answer ends with: the answer is read
    as a single chunk. Raises ValueError for an answer without
    `choices[0].message`.
    """
    choices = chat.get("choices") if isinstance(chat, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("a chat answer without choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("a chat answer without a message")
    delta = {
        name: message[name]
        for name in ("content", "reasoning_content", "reasoning")
        if name in message
    }
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise ValueError("tool_calls that are not an array")
        delta["tool_calls"] = [
            {**call, "index": index} if isinstance(call, dict) else call
            for index, call in enumerate(calls)
        ]
    stream = ResponsesStream(payload, response_id=response_id, created_at=created_at, model=model)
    stream.feed({"choices": [{"delta": delta, "finish_reason": choices[0].get("finish_reason")}]})
    stream.finish(used)
    return stream.response


def response_object(
    payload: dict,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    error: dict | None = None,
    incomplete_details: dict | None = None,
) -> dict:
    """A Response with every field the spec requires, the request's settings echoed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "max_tool_calls": payload.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": payload.get("parallel_tool_calls", True) is not False,
        "previous_response_id": payload.get("previous_response_id"),
        "reasoning": payload.get("reasoning"),
        "store": payload.get("store", True) is not False,
        "temperature": payload.get("temperature"),
        "text": {"format": {"type": "text"}, **(payload.get("text") or {})},
        "tool_choice": payload.get("tool_choice") or "auto",
        "tools": payload.get("tools") or [],
        "top_p": payload.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": payload.get("user"),
        "metadata": payload.get("metadata") or {},
    }


class ResponsesStream:
    """The Responses stream events for a chat stream, one chunk at a time.

    One output item is open at a time, in the order the chat deltas come:
    reasoning, message text, and a function call per tool call (a new
    `index` or `id` closes the one before). `response` is the final Response
    once `finish` (or `fail`) has run.
    """

    def __init__(self, payload: dict, *, response_id: str, created_at: int, model: str):
        self.payload = payload
        self.ids = {"response_id": response_id, "created_at": created_at, "model": model}
        self.response: dict | None = None
        self._sequence = 0
        self._output: list[dict] = []  # the items done
        self._open: dict | None = None  # the item being streamed, as it will be when done
        self._call_index = None  # the chat tool call index of an open function call
        self._closed_calls: set = set()
        self._finish_reason = None

    def start(self) -> list[dict]:
        opening = self._response("in_progress", [])
        return [
            self._event("response.created", response=opening),
            self._event("response.in_progress", response=opening),
        ]

    def feed(self, chunk: dict) -> list[dict]:
        """The events for one chat chunk; ValueError for a chunk not shaped as chat's."""
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list):
            raise ValueError("a chat chunk without choices")
        events = []
        for choice in choices[:1]:  # one choice asked for: n is never sent
            if not isinstance(choice, dict):
                raise ValueError("a choice that is not an object")
            delta = choice.get("delta")
            if delta is None:
                delta = {}
            if not isinstance(delta, dict):
                raise ValueError("a delta that is not an object")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):  # other shapes: another vendor's
                events += self._text("reasoning", reasoning)
            content = _text_of(delta["content"]) if delta.get("content") else ""
            if content:
                events += self._text("message", content)
            calls = delta.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise ValueError("tool_calls that are not an array")
                for call in calls:
                    events += self._call(call)
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self, used: Usage) -> list[dict]:
        reason = INCOMPLETE.get(self._finish_reason)
        events = self._close("incomplete" if reason else "completed")
        status = "incomplete" if reason else "completed"
        self.response = self._response(
            status,
            list(self._output),
            usage=usage_object(used),
            incomplete_details={"reason": reason} if reason else None,
        )
        events.append(self._event(f"response.{status}", response=self.response))
        return events

    def fail(self, error: APIError) -> list[dict]:
        """`response.failed`, the items done so far in its output; nothing open is closed."""
        failed = self._response(
            "failed",
            list(self._output),
            error={"code": error.code or "server_error", "message": error.message},
        )
        self.response = failed
        return [self._event("response.failed", response=failed)]

    # The events of each item kind, its item kept as it will be once done.

    def _text(self, kind: str, piece: str) -> list[dict]:
        events = []
        if self._open is None or self._open["type"] != kind:
            events += self._close("completed")
            events += self._add(kind)
        item = self._open
        part = item["content"][0]
        part["text"] += piece
        delta = {"item_id": item["id"], "output_index": len(self._output), "content_index": 0}
        if kind == "message":
            events.append(
                self._event("response.output_text.delta", **delta, delta=piece, logprobs=[])
            )
        else:
            events.append(self._event("response.reasoning_text.delta", **delta, delta=piece))
        return events

    def _call(self, call) -> list[dict]:
        if not isinstance(call, dict):
            raise ValueError("a tool call that is not an object")
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise ValueError("a tool call function that is not an object")
        index, call_id = call.get("index"), call.get("id")
        name, arguments = function.get("name"), function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            # A whole answer's arguments as an object (some servers): the JSON chat sends.
            arguments = json.dumps(arguments)
        if name is not None and not isinstance(name, str):
            raise ValueError("a tool call name that is not a string")
        item = self._open
        same = (
            item is not None
            and item["type"] == "function_call"
            and (index is None or index == self._call_index)
            and (not call_id or call_id == item["call_id"])
        )
        events = []
        if not same:
            if index is not None and index in self._closed_calls:
                if not (name or arguments or call_id):
                    return []
                raise ValueError("a tool call continued after the next one began")
            events += self._close("completed")
            events += self._add("function_call", call_id=call_id or new_id("call_"), name=name)
            self._call_index = index
            item = self._open
        elif name and not item["name"]:
            item["name"] = name  # a server that names the call after its first delta
        if arguments:
            item["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self._output),
                    delta=arguments,
                )
            )
        return events

    def _add(self, kind: str, call_id: str = "", name: str | None = None) -> list[dict]:
        output_index = len(self._output)
        if kind == "function_call":
            item = {
                "id": new_id("fc_"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call_id,
                "name": name or "",
            }
            return [self._opened(item, output_index)]
        if kind == "message":
            item = {
                "id": new_id("msg_"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {
                "id": new_id("rs_"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
        events = [self._opened(item, output_index)]
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=output_index,
                content_index=0,
                part=dict(part),
            )
        )
        item["content"].append(part)
        return events

    def _opened(self, item: dict, output_index: int) -> dict:
        event = self._event(
            "response.output_item.added", output_index=output_index, item=_copy(item)
        )
        self._open = item
        return event

    def _close(self, status: str) -> list[dict]:
        """The events that finish the open item (none if none is), `status` its own."""
        item = self._open
        if item is None:
            return []
        self._open = None
        output_index = len(self._output)
        where = {"item_id": item["id"], "output_index": output_index}
        events = []
        if item["type"] == "function_call":
            if self._call_index is not None:
                self._closed_calls.add(self._call_index)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        else:
            part = item["content"][0]
            if item["type"] == "message":
                events.append(
                    self._event(
                        "response.output_text.done",
                        **where,
                        content_index=0,
                        text=part["text"],
                        logprobs=[],
                    )
                )
            else:
                events.append(
                    self._event(
                        "response.reasoning_text.done", **where, content_index=0, text=part["text"]
                    )
                )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=dict(part))
            )
        item["status"] = status
        self._output.append(item)
        events.append(
            self._event("response.output_item.done", output_index=output_index, item=_copy(item))
        )
        return events

    def _response(self, status: str, output: list[dict], **fields) -> dict:
        return response_object(
            self.payload, status=status, output=[_copy(i) for i in output], **self.ids, **fields
        )

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return event


def _copy(item: dict) -> dict:
    # Events are serialised later: each must hold the item as it was when sent.
    copied = dict(item)
    if "content" in copied:
        copied["content"] = [dict(part) for part in copied["content"]]
    return copied


def _text_of(value) -> str:
    """Chat content: a string, or (some servers) a list of parts whose texts are joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(text, str) for text in texts):
            return "".join(texts)
    raise ValueError("content that is not text")

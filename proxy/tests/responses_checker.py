"""Strict checks of Responses API streams and objects, as OpenAI's spec and SDKs require them.

`check_stream` takes the decoded events (dicts) of one stream; `check_response` a Response.
"""

PREFIXES = {"message": "msg_", "function_call": "fc_", "reasoning": "rs_"}
STATUSES = ("completed", "failed", "in_progress", "cancelled", "queued", "incomplete")
REQUIRED = (
    "id",
    "object",
    "created_at",
    "status",
    "error",
    "incomplete_details",
    "instructions",
    "model",
    "tools",
    "output",
    "parallel_tool_calls",
    "metadata",
    "tool_choice",
    "temperature",
    "top_p",
)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
PART_TYPES = {"message": "output_text", "reasoning": "reasoning_text"}
TEXT_EVENTS = {"response.output_text": "message", "response.reasoning_text": "reasoning"}


def check_response(obj: dict) -> dict:
    """Assert `obj` is a complete Response: required fields, id prefixes, items, usage."""
    assert isinstance(obj, dict), f"a response must be an object, got {obj!r}"
    absent = [name for name in REQUIRED if name not in obj]
    assert not absent, f"response lacks required fields {absent}"
    assert obj["object"] == "response", f"response.object is {obj['object']!r}"
    assert _prefixed(obj["id"], "resp_"), f"response.id {obj['id']!r} lacks the resp_ prefix"
    assert type(obj["created_at"]) is int, f"created_at {obj['created_at']!r} is not an integer"
    assert obj["status"] in STATUSES, f"unknown status {obj['status']!r}"
    assert isinstance(obj["output"], list), "output is not an array"
    assert isinstance(obj["tools"], list), "tools is not an array"
    assert isinstance(obj["metadata"], dict), "metadata is not an object"
    assert isinstance(obj["parallel_tool_calls"], bool), "parallel_tool_calls is not a boolean"
    for index, item in enumerate(obj["output"]):
        check_item(item, f"output[{index}]")
    status = obj["status"]
    if status == "failed":
        error = obj["error"]
        assert isinstance(error, dict), "a failed response has no error object"
        assert isinstance(error.get("code"), str) and error["code"], f"error.code: {error!r}"
        assert isinstance(error.get("message"), str), f"error.message: {error!r}"
    else:
        assert obj["error"] is None, f"a {status} response has an error: {obj['error']!r}"
    if status == "incomplete":
        details = obj["incomplete_details"]
        assert isinstance(details, dict), "an incomplete response has no incomplete_details"
        assert details.get("reason") in ("max_output_tokens", "content_filter"), (
            f"incomplete_details.reason is {details.get('reason')!r}"
        )
    else:
        assert obj["incomplete_details"] is None, (
            f"a {status} response has incomplete_details {obj['incomplete_details']!r}"
        )
    if status in ("completed", "incomplete"):
        check_usage(obj.get("usage"))
    return obj


def check_usage(usage) -> None:
    assert isinstance(usage, dict), f"usage must be an object, got {usage!r}"
    for name in ("input_tokens", "output_tokens", "total_tokens"):
        assert _count(usage.get(name)), f"usage.{name} is {usage.get(name)!r}"
    details = usage.get("input_tokens_details")
    assert isinstance(details, dict), "usage.input_tokens_details is missing"
    for name in ("cached_tokens", "cache_write_tokens"):
        assert _count(details.get(name)), f"usage.input_tokens_details.{name} is missing"
    details = usage.get("output_tokens_details")
    assert isinstance(details, dict), "usage.output_tokens_details is missing"
    assert _count(details.get("reasoning_tokens")), "output_tokens_details.reasoning_tokens"
    total = usage["input_tokens"] + usage["output_tokens"]
    assert usage["total_tokens"] == total, (
        f"usage.total_tokens {usage['total_tokens']} != input + output ({total})"
    )


def check_item(item: dict, where: str) -> None:
    """Assert `item` is a complete output item of a kind the gateway makes."""
    assert isinstance(item, dict), f"{where} is not an object"
    kind = item.get("type")
    assert kind in PREFIXES, f"{where} has an unexpected type {kind!r}"
    assert _prefixed(item.get("id"), PREFIXES[kind]), (
        f"{where}.id {item.get('id')!r} lacks the {PREFIXES[kind]} prefix"
    )
    if kind == "message":
        assert item.get("role") == "assistant", f"{where}.role is {item.get('role')!r}"
        assert item.get("status") in ("in_progress", "completed", "incomplete"), (
            f"{where}.status is {item.get('status')!r}"
        )
        assert isinstance(item.get("content"), list), f"{where}.content is not an array"
        for index, part in enumerate(item["content"]):
            at = f"{where}.content[{index}]"
            assert part.get("type") in ("output_text", "refusal"), f"{at}.type: {part!r}"
            if part["type"] == "output_text":
                assert isinstance(part.get("text"), str), f"{at}.text is not a string"
                assert isinstance(part.get("annotations"), list), f"{at} lacks annotations"
    elif kind == "function_call":
        for name in ("call_id", "name"):
            assert isinstance(item.get(name), str) and item[name], f"{where}.{name} is empty"
        assert isinstance(item.get("arguments"), str), f"{where}.arguments is not a string"
    else:
        assert isinstance(item.get("summary"), list), f"{where}.summary is not an array"
        for part in item.get("content") or ():
            assert part.get("type") == "reasoning_text", f"{where}.content part {part!r}"
            assert isinstance(part.get("text"), str), f"{where}.content text is not a string"


def check_stream(events: list[dict]) -> dict:
    """Assert `events` are one well-formed Responses stream; its terminal Response.

    Lifecycle: created, in_progress, items, one terminal event, last.
    Sequence numbers count from 0 by 1. Each item is added at the next
    output_index, one open at a time, its content parts added before their
    deltas, and done exactly once with the text or arguments its deltas made;
    the terminal response's output is the done items, in order.
    """
    assert events, "an empty stream"
    for index, event in enumerate(events):
        assert isinstance(event, dict) and isinstance(event.get("type"), str), (
            f"event {index} has no type: {event!r}"
        )
        assert event.get("sequence_number") == index, (
            f"event {index} ({event['type']}) has sequence_number "
            f"{event.get('sequence_number')!r}, expected {index}"
        )
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created", f"the first event is {kinds[0]}, not response.created"
    assert kinds[1:2] == ["response.in_progress"], "the second event is not response.in_progress"
    terminals = [k for k in kinds if k in TERMINAL]
    assert len(terminals) == 1, f"expected exactly one terminal event, got {terminals}"
    assert kinds[-1] in TERMINAL, f"the last event is {kinds[-1]}, not a terminal one"
    opening = events[0]["response"]
    response_id = opening["id"]
    for event in events[:2]:
        response = event["response"]
        check_response(response)
        assert response["status"] == "in_progress", f"{event['type']}: {response['status']!r}"
        assert response["output"] == [], f"{event['type']} has output {response['output']!r}"
    state = _State()
    for index, event in enumerate(events[2:-1], start=2):
        state.take(event, f"event {index} ({event['type']})")
    final = events[-1]
    response = final["response"]
    assert response["id"] == response_id, f"the response id changed to {response['id']!r}"
    check_response(response)
    expected = {"response.completed": "completed", "response.incomplete": "incomplete"}.get(
        final["type"], "failed"
    )
    assert response["status"] == expected, f"{final['type']} has status {response['status']!r}"
    if expected != "failed":
        assert state.open is None, f"{final['type']} while item {state.open['id']} is open"
    assert response["output"] == state.done, (
        f"{final['type']}: response.output differs from the items done:\n"
        f"{response['output']!r}\n!=\n{state.done!r}"
    )
    return response


class _State:
    """The items of a stream so far: `done` in order, and the one `open`."""

    def __init__(self):
        self.done: list[dict] = []
        self.open: dict | None = None  # {"id", "type", "index", "item", "parts", "arguments"...}

    def take(self, event: dict, where: str) -> None:
        kind = event["type"]
        assert kind not in ("response.created", "response.in_progress"), f"{where}: repeated"
        if kind == "response.output_item.added":
            self._added(event, where)
            return
        if kind == "response.output_item.done":
            self._item_done(event, where)
            return
        known = kind.startswith("response.content_part.") or kind.rsplit(".", 1)[0] in (
            *TEXT_EVENTS,
            "response.function_call_arguments",
        )
        assert known, f"{where}: an event type the gateway does not send"
        item = self._current(event, where)
        if kind.startswith("response.content_part."):
            self._part(event, item, where)
        elif kind.rsplit(".", 1)[0] in TEXT_EVENTS:
            self._text(event, item, where)
        elif kind == "response.function_call_arguments.delta":
            assert item["type"] == "function_call", f"{where}: for a {item['type']} item"
            assert not item["arguments_done"], f"{where}: after the arguments were done"
            assert isinstance(event.get("delta"), str), f"{where}: delta is not a string"
            item["arguments"] += event["delta"]
        elif kind == "response.function_call_arguments.done":
            assert item["type"] == "function_call", f"{where}: for a {item['type']} item"
            assert not item["arguments_done"], f"{where}: arguments done twice"
            assert event.get("arguments") == item["arguments"], (
                f"{where}: arguments {event.get('arguments')!r} != deltas {item['arguments']!r}"
            )
            assert event.get("name") == item["item"]["name"], (
                f"{where}: name {event.get('name')!r} != the item's {item['item']['name']!r}"
            )
            item["arguments_done"] = True
        else:
            raise AssertionError(f"{where}: an event type the gateway does not send")

    def _added(self, event: dict, where: str) -> None:
        assert self.open is None, f"{where}: while item {self.open and self.open['id']} is open"
        assert event.get("output_index") == len(self.done), (
            f"{where}: output_index {event.get('output_index')!r}, expected {len(self.done)}"
        )
        item = event.get("item")
        check_item(item, where + ".item")
        assert item.get("status") == "in_progress", f"{where}: status {item.get('status')!r}"
        if item["type"] == "function_call":
            assert item["arguments"] == "", f"{where}: arguments {item['arguments']!r} not empty"
        else:
            assert item.get("content") == [], f"{where}: content {item.get('content')!r}"
        ids = {i["id"] for i in self.done}
        assert item["id"] not in ids, f"{where}: item id {item['id']} used twice"
        self.open = {
            "id": item["id"],
            "type": item["type"],
            "index": event["output_index"],
            "item": item,
            "parts": [],  # [{"part", "text", "text_done", "done"}]
            "arguments": "",
            "arguments_done": False,
        }

    def _current(self, event: dict, where: str) -> dict:
        item = self.open
        assert item is not None, f"{where}: no item is open (output_item.added missing)"
        assert event.get("output_index") == item["index"], (
            f"{where}: output_index {event.get('output_index')!r} != open item's {item['index']}"
        )
        assert event.get("item_id") == item["id"], (
            f"{where}: item_id {event.get('item_id')!r} != open item's {item['id']!r}"
        )
        return item

    def _part(self, event: dict, item: dict, where: str) -> None:
        assert item["type"] in PART_TYPES, f"{where}: content part in a {item['type']} item"
        part = event.get("part")
        assert isinstance(part, dict), f"{where}: no part"
        assert part.get("type") == PART_TYPES[item["type"]], f"{where}: part type {part!r}"
        content_index = event.get("content_index")
        parts = item["parts"]
        if event["type"] == "response.content_part.added":
            assert content_index == len(parts), (
                f"{where}: content_index {content_index!r}, expected {len(parts)}"
            )
            assert part.get("text") == "", f"{where}: an added part with text {part!r}"
            if part["type"] == "output_text":
                assert part.get("annotations") == [], f"{where}: annotations {part!r}"
            parts.append({"part": part, "text": "", "text_done": False, "done": False})
            return
        assert event["type"] == "response.content_part.done", f"{where}: unknown part event"
        state = self._part_state(item, content_index, where)
        assert state["text_done"], f"{where}: before its text was done"
        assert part.get("text") == state["text"], (
            f"{where}: part text {part.get('text')!r} != deltas {state['text']!r}"
        )
        state["done"] = True
        state["part"] = part

    def _text(self, event: dict, item: dict, where: str) -> None:
        family, suffix = event["type"].rsplit(".", 1)
        assert item["type"] == TEXT_EVENTS[family], f"{where}: for a {item['type']} item"
        state = self._part_state(item, event.get("content_index"), where)
        assert not state["text_done"], f"{where}: after the part's text was done"
        if suffix == "delta":
            assert isinstance(event.get("delta"), str), f"{where}: delta is not a string"
            if family == "response.output_text":
                assert isinstance(event.get("logprobs"), list), f"{where}: logprobs missing"
            state["text"] += event["delta"]
        else:
            assert suffix == "done", f"{where}: unknown text event"
            assert event.get("text") == state["text"], (
                f"{where}: text {event.get('text')!r} != deltas {state['text']!r}"
            )
            state["text_done"] = True

    def _part_state(self, item: dict, content_index, where: str) -> dict:
        parts = item["parts"]
        assert isinstance(content_index, int) and 0 <= content_index < len(parts), (
            f"{where}: content_index {content_index!r} before its content_part.added"
        )
        state = parts[content_index]
        assert not state["done"], f"{where}: after content_part.done"
        return state

    def _item_done(self, event: dict, where: str) -> None:
        item = self.open
        assert item is not None, f"{where}: no item is open"
        assert event.get("output_index") == item["index"], (
            f"{where}: output_index {event.get('output_index')!r} != {item['index']}"
        )
        final = event.get("item")
        check_item(final, where + ".item")
        assert final["id"] == item["id"], f"{where}: id {final['id']!r} != {item['id']!r}"
        assert final["type"] == item["type"], f"{where}: type changed to {final['type']!r}"
        assert final.get("status") in ("completed", "incomplete"), (
            f"{where}: status {final.get('status')!r}"
        )
        if item["type"] == "function_call":
            assert item["arguments_done"], f"{where}: before function_call_arguments.done"
            assert final["arguments"] == item["arguments"], (
                f"{where}: arguments {final['arguments']!r} != deltas {item['arguments']!r}"
            )
            for name in ("call_id", "name"):
                assert final[name] == item["item"][name], f"{where}: {name} changed"
        else:
            undone = [i for i, part in enumerate(item["parts"]) if not part["done"]]
            assert not undone, f"{where}: content parts {undone} not done"
            assert final["content"] == [part["part"] for part in item["parts"]], (
                f"{where}: content {final['content']!r} differs from the parts done"
            )
        self.done.append(final)
        self.open = None


def _prefixed(value, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix) and len(value) > len(prefix)


def _count(value) -> bool:
    return type(value) is int and value >= 0

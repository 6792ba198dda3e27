"""Hostile bodies at the agent APIs, in process: every field of a rich valid body, and every
item of its arrays, replaced by each JSON type (or removed) in turn. Each variant is either
served or refused with a 4xx in the API's error shape, never a 500, and a refused one
reaches no upstream.

test_hostile_bodies.py does the same for OpenAI's own operations over a live gateway, from
the spec; the agent APIs' translations are what a wrong shape would trip here.
"""

import copy

import pytest

from proxy import stored
from proxy.tests import fakes

RESPONSES = {
    "model": "gpt-test",
    "store": False,
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]},
    ],
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    "tool_choice": {"type": "function", "name": "lookup"},
    "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
    "reasoning": {"effort": "low"},
    "max_output_tokens": 100,
    "metadata": {"team": "a"},
}
MESSAGES = {
    "model": "gpt-test",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "aGk="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                }
            ],
        },
    ],
    "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "lookup"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stop_sequences": ["STOP"],
    "metadata": {"user_id": "u"},
}
COUNT = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
BODIES = {"/v1/responses": RESPONSES, "/v1/messages": MESSAGES, "/v1/messages/count_tokens": COUNT}
REMOVED = object()
VALUES = (REMOVED, None, "text", 7, -1, 2.5, True, [], {}, [7], {"type": 7}, {"type": "x"})


def places(value, at=()):
    """The path of every field and array item inside `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*at, key)
            yield from places(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*at, index)
            yield from places(item, (*at, index))


def variant(body: dict, place: tuple, value) -> dict:
    changed = copy.deepcopy(body)
    holder = changed
    for step in place[:-1]:
        holder = holder[step]
    if value is REMOVED:
        del holder[place[-1]]
    else:
        holder[place[-1]] = value
    return changed


def problem(path: str, answer, reached: int) -> str | None:
    """What is wrong with `answer` to a variant (None if nothing)."""
    if answer.status is None or answer.status >= 500:
        return f"status {answer.status}"
    if answer.status < 400:
        return None
    if reached:
        return f"refused ({answer.status}) but sent upstream"
    error = answer.json()
    if path.startswith("/v1/messages"):
        if error.get("type") != "error" or not isinstance(error.get("error"), dict):
            return f"not Anthropic's error shape: {error}"
        return None
    if not isinstance(error.get("error"), dict) or not error["error"].get("message"):
        return f"not OpenAI's error shape: {error}"
    return None


@pytest.mark.parametrize("path", BODIES)
@pytest.mark.parametrize("stream", [False, True])
def test_every_variant_of_a_body_is_served_or_refused_never_a_500(path, stream, monkeypatch):
    def unknown(**_found):
        raise stored.NotFound

    # The store is the database's (test_stored.py): here nothing is stored or found.
    monkeypatch.setattr(stored, "save", lambda **_saved: None)
    monkeypatch.setattr(stored, "history", unknown)
    upstream = fakes.FakeUpstream()
    rt = fakes.runtime(upstream=upstream)
    body = {**BODIES[path], **({"stream": True} if stream and "count" not in path else {})}
    assert fakes.call(rt, "POST", path, body).status == 200, "the body itself must be served"
    found = []
    for place in places(body):
        for value in VALUES:
            before = len(upstream.calls)
            answer = fakes.call(rt, "POST", path, variant(body, place, value))
            wrong = problem(path, answer, len(upstream.calls) - before)
            if wrong:
                found.append(f"{'.'.join(map(str, place))} = {value!r}: {wrong}")
    assert not found, "\n".join(found)

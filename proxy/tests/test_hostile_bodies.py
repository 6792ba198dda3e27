"""Hostile and malformed bodies at every `/v1` POST operation, over a live gateway: each is
refused with a 4xx in OpenAI's error shape, never a 500, and reaches no upstream.

test_validation.py tries some of these bodies in process, on the chat path; here every
operation is tried through real HTTP in front of the stand-in, whose `received` shows
what got past the gateway. The wrong types for each field are read from OpenAI's spec
(`proxy.tests.spec`), so a field the spec adds is tried without a change here.

Each test sends all its bodies and lists every one that was not refused as it should be,
so that one run names them all.
"""

import json

import httpx
import pytest

from proxy.tests import spec
from proxy.tests.fakes import REQUEST_ID

MODEL, EMBEDDING_MODEL = "gpt-test", "embed-test"
MESSAGES = [{"role": "user", "content": "hi there"}]
# The smallest valid body of each operation, and its request schema in the spec.
OPERATIONS = {
    "/v1/chat/completions": ({"model": MODEL, "messages": MESSAGES}, "CreateChatCompletionRequest"),
    "/v1/completions": ({"model": MODEL, "prompt": "hi there"}, "CreateCompletionRequest"),
    "/v1/embeddings": ({"model": EMBEDDING_MODEL, "input": "hi there"}, "CreateEmbeddingRequest"),
}
CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
# One value of each JSON type, to put where the spec wants another type.
VALUE_OF_TYPE = {
    "string": "a string",
    "integer": 12345,
    "number": 1.5,
    "boolean": True,
    "array": ["an", "array"],
    "object": {"an": "object"},
}
DEPTH = 10_000
HUGE = 100_000
BODY_LIMIT = 256 * 1024  # AETHERGATE_MAX_BODY_BYTES for the body-limit test


@pytest.fixture
def served(gateway, upstream, make_model, make_key):
    """`(client, upstream)`: an httpx client on the gateway with a key; models on the stand-in."""
    make_model(name=MODEL)
    make_model(name=EMBEDDING_MODEL, upstream_name="echo-embed", capability="EMBEDDING")
    _, secret = make_key()
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as client:
        yield client, upstream


def problems_with_refusal(response: httpx.Response, reached: list, statuses, param=None) -> list:
    """What is wrong with `response` as a refusal (empty when it is one): its status is one
    of `statuses`, its body OpenAI's error (naming `param` if given), and nothing reached
    the upstream (`reached`: what the stand-in received meanwhile)."""
    problems = []
    if response.status_code not in statuses:
        problems.append(f"status {response.status_code}")
    if reached:
        problems.append("reached the stand-in")
    if response.status_code < 400:
        return problems  # served: what the answer is like does not matter here
    if not REQUEST_ID.match(response.headers.get("x-request-id", "")):
        problems.append(f"x-request-id {response.headers.get('x-request-id')!r}")
    if response.headers.get("content-type") != "application/json":
        problems.append(f"content-type {response.headers.get('content-type')!r}")
    try:
        body = response.json()
    except ValueError:
        return [*problems, f"body not JSON: {response.text[:120]!r}"]
    error = body.get("error") if isinstance(body, dict) else None
    if list(body) != ["error"] or not isinstance(error, dict):
        return [*problems, f"body not {{'error': ...}}: {response.text[:120]}"]
    if set(error) != {"message", "type", "param", "code"}:
        problems.append(f"error keys {sorted(error)}")
    if not isinstance(error.get("message"), str) or not error.get("message"):
        problems.append("no message")
    if not isinstance(error.get("type"), str):
        problems.append(f"type {error.get('type')!r}")
    if not isinstance(error.get("code"), str | None) or not isinstance(
        error.get("param"), str | None
    ):
        problems.append(f"code {error.get('code')!r}, param {error.get('param')!r}")
    if not reached and str(error.get("code")).startswith("upstream_"):
        # The stand-in (aiohttp) refuses a body over 1 MB before it records it.
        problems.append(f"reached the upstream ({error.get('code')}: {error.get('message')})")
    if param is not None and error.get("param") != param:
        problems.append(f"param {error.get('param')!r} (code {error.get('code')!r})")
    return problems


def send(served, path: str, body, *, headers=None, statuses=frozenset({400}), param=None):
    """POST `body` (bytes as they are, anything else as JSON); its problems as a refusal."""
    client, upstream = served
    before = len(upstream.received)
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers=headers or JSON)
    else:
        response = client.post(path, json=body, headers=headers)
    return problems_with_refusal(response, upstream.received[before:], statuses, param)


def assert_all_refused(results: dict) -> None:
    failed = {name: problems for name, problems in results.items() if problems}
    if failed:
        pytest.fail(
            f"{len(failed)} of {len(results)} not refused as they should be:\n"
            + "\n".join(f"- {name}: {', '.join(problems)}" for name, problems in failed.items())
        )


def test_the_valid_bodies_reach_the_upstream(served):
    # Without this, "the stand-in received nothing" would prove nothing.
    client, upstream = served

    for path, (body, _) in OPERATIONS.items():
        response = client.post(path, json=body)
        assert response.status_code == 200, (path, response.text)

    assert [r.path for r in upstream.received] == list(OPERATIONS)


# --------------------------------------------------------------------------- what the spec says


def json_types(schema: dict, document: dict, seen=()) -> set[str] | None:
    """The JSON types `schema` admits (`integer` inside `number`), or None if it says none."""
    ref = schema.get("$ref")
    if ref:
        if ref in seen:
            return None
        name = ref.removeprefix("#/components/schemas/")
        return json_types(document["components"]["schemas"][name], document, (*seen, ref))
    if "type" in schema:
        types = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
    elif "anyOf" in schema or "oneOf" in schema:
        members = [json_types(s, document, seen) for s in schema.get("anyOf", schema.get("oneOf"))]
        if any(m is None for m in members):
            return None
        types = set().union(*members)
    elif "allOf" in schema:
        members = [t for s in schema["allOf"] if (t := json_types(s, document, seen)) is not None]
        if not members:
            return None
        types = set.intersection(*members)
    elif "enum" in schema:
        types = {_type_of(v) for v in schema["enum"]}
    else:
        return None
    if "number" in types:
        types.add("integer")
    if schema.get("nullable"):
        types.add("null")
    return types


def _type_of(value) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str)):
        if isinstance(value, kind):
            return name
    return {list: "array", dict: "object", type(None): "null"}[type(value)]


def request_properties(schema_name: str) -> dict:
    """The top-level properties of a request schema (its `allOf` parts merged)."""
    document = spec.load()
    schema = document["components"]["schemas"][schema_name]
    properties, pending = {}, [schema]
    while pending:
        part = pending.pop()
        if "$ref" in part:
            pending.append(document["components"]["schemas"][part["$ref"].split("/")[-1]])
        properties.update(part.get("properties", {}))
        pending.extend(part.get("allOf", []))
    return properties


def wrong_types(schema_name: str) -> list[tuple[str, object]]:
    """`(field, value)` for each field of the request and each JSON type it does not admit."""
    document = spec.load()
    cases = []
    for field, schema in request_properties(schema_name).items():
        types = json_types(schema, document)
        if types is None:
            continue  # the spec admits anything here
        cases.extend((field, v) for t, v in VALUE_OF_TYPE.items() if t not in types)
    return cases


def test_wrong_types_are_read_from_the_spec():
    cases = dict.fromkeys(f"{f}={v!r}" for f, v in wrong_types("CreateChatCompletionRequest"))

    assert {"model=12345", "messages='a string'", "stream='a string'", "n=1.5"} <= set(cases)
    assert "n=True" in cases and "temperature='a string'" in cases
    assert not any(c.startswith("messages=['an'") for c in cases)  # an array is its type
    assert len(wrong_types("CreateEmbeddingRequest")) >= 10


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_it_refuses_a_wrong_type_for_each_field_the_spec_types(served, path):
    base, schema_name = OPERATIONS[path]
    results = {}

    for field, value in wrong_types(schema_name):
        body = {**base, field: value}
        results[f"{field}={json.dumps(value)}"] = send(served, path, body, param=field)

    assert_all_refused(results)


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_it_refuses_a_body_without_a_required_field(served, path):
    base, schema_name = OPERATIONS[path]
    required = spec.schema(schema_name).get("required") or [
        name for part in spec.schema(schema_name)["allOf"] for name in part.get("required", [])
    ]
    assert "model" in required and len(required) == 2
    results = {}

    for field in required:
        body = {name: value for name, value in base.items() if name != field}
        results[f"without {field}"] = send(served, path, body, param=field)

    assert_all_refused(results)


# --------------------------------------------------------------------------- not a JSON object


def raw_bodies(base: dict) -> dict[str, bytes]:
    """Bodies that are not one well-formed JSON object, each named, built on `base`."""
    text = json.dumps(base)
    inner = text[1:-1]
    return {
        "empty": b"",
        "whitespace": b"  \n",
        "invalid JSON": text[:-3].encode(),
        "trailing comma": (text[:-1] + ",}").encode(),
        "trailing garbage": (text + " {}").encode(),
        "single quotes": text.replace('"', "'").encode(),
        "a JSON array": f"[{text}]".encode(),
        "a JSON string": json.dumps(text).encode(),
        "a JSON number": b"42",
        "JSON null": b"null",
        "JSON true": b"true",
        "non-UTF-8 bytes": ("{" + inner + ', "user": "').encode() + b'\xff\xfe\xc3"}',
        "UTF-16": text.encode("utf-16"),
        "a lone surrogate": ("{" + inner + ', "user": "\\ud800"}').encode(),
        "NaN": ("{" + inner + ', "temperature": NaN}').encode(),
        "Infinity": ("{" + inner + ', "temperature": Infinity}').encode(),
        "-Infinity": ("{" + inner + ', "top_p": -Infinity}').encode(),
        "1e999 (past a double)": ("{" + inner + ', "temperature": 1e999}').encode(),
        f"an array {DEPTH:,} deep": b"[" * DEPTH + b"]" * DEPTH,
        f"an object {DEPTH:,} deep in a field": (
            "{" + inner + ', "metadata": ' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "}"
        ).encode(),
    }


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_it_refuses_a_body_that_is_not_one_well_formed_json_object(served, path):
    base, _ = OPERATIONS[path]
    results = {}

    for name, body in raw_bodies(base).items():
        results[name] = send(served, path, body)

    assert_all_refused(results)


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_it_refuses_a_body_that_is_not_sent_as_json(served, path):
    base, _ = OPERATIONS[path]
    text = json.dumps(base)
    results = {}

    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        results[content_type] = send(
            served,
            path,
            text.encode(),
            headers={"Content-Type": content_type},
            statuses={400, 415},
        )

    assert_all_refused(results)


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize("path", list(OPERATIONS))
def test_it_refuses_a_body_past_the_limit_with_413_and_a_wrong_one_under_it_with_400(
    settings, served, path
):
    settings.AETHERGATE_MAX_BODY_BYTES = BODY_LIMIT
    base, _ = OPERATIONS[path]
    field = {CHAT: "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}[path]
    client, upstream = served

    def body_of_size(size: int, *, as_spec_says: bool = True) -> bytes:
        # Exactly `size` bytes: the text in `field` as the spec wants it, or a bare string.
        def body(text: str) -> bytes:
            value = [{"role": "user", "content": text}] if as_spec_says and path == CHAT else text
            return json.dumps({**base, field: value}).encode()

        return body("x" * (size - len(body(""))))

    fits = body_of_size(BODY_LIMIT)
    assert len(fits) == BODY_LIMIT
    # The limit is where it says: a valid body of exactly the limit is served.
    assert client.post(path, content=fits, headers=JSON).status_code == 200
    upstream.reset()
    results = {
        # A trailing space keeps it valid JSON: only its size is wrong.
        "one byte past the limit": send(served, path, fits + b" ", statuses={413}),
        "ten times the limit": send(served, path, body_of_size(10 * BODY_LIMIT), statuses={413}),
    }
    if path == CHAT:
        # Just under the limit, `messages` a huge string instead of an array.
        results["a huge string for messages"] = send(
            served, path, body_of_size(BODY_LIMIT - 10, as_spec_says=False), param="messages"
        )

    assert_all_refused(results)


def test_it_refuses_huge_arrays_past_the_specs_bounds(served):
    results = {
        # The spec: at most 2048 inputs, 4 stop sequences, 128 functions.
        f"{HUGE:,} inputs to embed": send(
            served,
            "/v1/embeddings",
            {"model": EMBEDDING_MODEL, "input": ["hi"] * HUGE},
            param="input",
        ),
        f"{HUGE:,} stop sequences": send(
            served, CHAT, {"model": MODEL, "messages": MESSAGES, "stop": ["x"] * HUGE}, param="stop"
        ),
        f"{HUGE:,} functions": send(
            served,
            CHAT,
            {"model": MODEL, "messages": MESSAGES, "functions": [{"name": "f"}] * HUGE},
            param="functions",
        ),
    }

    assert_all_refused(results)


def test_huge_arrays_the_spec_does_not_bound_are_served_whole_under_the_body_limit(served):
    # The spec bounds neither messages nor prompts: the body limit does (test above).
    client, upstream = served
    bodies = {
        CHAT: {"model": MODEL, "messages": MESSAGES * HUGE},
        "/v1/completions": {"model": MODEL, "prompt": ["hi"] * HUGE},
    }

    for path, body in bodies.items():
        upstream.reset()
        assert client.post(path, json=body).status_code == 200
        (received,) = upstream.received
        field = "messages" if path == CHAT else "prompt"
        assert received.json[field] == body[field]


def test_a_repeated_key_counts_with_its_last_value_as_json_parsers_read_it(served):
    # RFC 8259 leaves duplicate names to the parser; orjson, Python's json and
    # JavaScript's JSON.parse all keep the last one, so that is what is checked and sent.
    client, upstream = served
    base = json.dumps({"model": MODEL, "messages": MESSAGES})

    refused = client.post(
        CHAT, content=(base[:-1] + ', "n": "x", "n": 2.5}').encode(), headers=JSON
    )
    served_once = client.post(
        CHAT, content=(base[:-1] + ', "user": "a", "user": "b"}').encode(), headers=JSON
    )

    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    assert served_once.status_code == 200
    assert [r.json["user"] for r in upstream.received] == ["b"]


# --------------------------------------------------------------------------- chat messages


def test_it_refuses_messages_that_are_not_chat_messages(served):
    bodies = {
        "messages: []": ([], "messages"),
        "messages: a string": ("hi", "messages"),
        "messages: an object": ({"role": "user", "content": "hi"}, "messages"),
        "a message a string": (["hi"], "messages[0]"),
        "a message a number": ([1], "messages[0]"),
        "a message null": ([None], "messages[0]"),
        "a message an array": ([[]], "messages[0]"),
        "the second message a string": ([*MESSAGES, "hi"], "messages[1]"),
        "role: wizard": ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        "no role": ([{"content": "hi"}], "messages[0].role"),
        "role a number": ([{"role": 1, "content": "hi"}], "messages[0].role"),
        "user content a number": ([{"role": "user", "content": 5}], "messages[0].content"),
        "user without content": ([{"role": "user"}], "messages[0].content"),
        "a content part without type": (
            [{"role": "user", "content": [{"text": "hi"}]}],
            "messages[0].content[0].type",
        ),
        "a tool message without tool_call_id": (
            [*MESSAGES, {"role": "tool", "content": "42"}],
            "messages[1].tool_call_id",
        ),
    }
    results = {}

    for name, (messages, param) in bodies.items():
        results[name] = send(served, CHAT, {"model": MODEL, "messages": messages}, param=param)

    assert_all_refused(results)

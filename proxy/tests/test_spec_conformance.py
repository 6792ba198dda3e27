"""`/v1` against OpenAI's published spec (`proxy.tests.spec`), by schemathesis, over a live
gateway in front of the stand-in.

Per operation: the spec's edge cases (boundary values, missing and mistyped fields: the
coverage phase), methods the spec does not declare, and generated valid and invalid
requests (fuzzing); then generated valid streams, event by event. Every run is bounded and
derandomized, so CI sees the same requests each time.

Valid requests must reach the stand-in and come back as the spec describes; invalid ones
must be refused by the gateway (4xx, OpenAI's error shape) without reaching it. Where the
spec itself is wrong or says something in a way schemathesis cannot read, `conformance_spec`
adjusts it, each exception with its reason; what the gateway answers differently from the
spec is left to fail.
"""

import copy
import json
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.meta import CoverageScenario

from proxy.tests import spec
from proxy.tests.test_upstream_standin import sse_events

CHAT_MODEL = "gpt-4o"
COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
EMBEDDING_MODEL = "text-embedding-3-small"
# The spec's model names are OpenAI's; each request's `model`, when it is a string, becomes
# the one the test registered for that operation, so that valid requests are served.
MODEL_FOR_PATH = {
    "/chat/completions": CHAT_MODEL,
    "/completions": COMPLETION_MODEL,
    "/embeddings": EMBEDDING_MODEL,
    "/models/{model}": CHAT_MODEL,
}
MEDIA_PATHS = (
    "/images/generations",
    "/audio/speech",
    "/audio/transcriptions",
    "/audio/translations",
)
FUZZ_EXAMPLES = 40
STREAM_EXAMPLES = 15
# Exception 4 below: CreateCompletionResponse as a stream chunk.
COMPLETION_CHUNK = "CreateCompletionStreamChunk"
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # see "no-shrink" below
SLOW_RUN = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]

# Checks of every run; each run adds its own.
RESPONSE_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


def sse_item_schema(ref: str) -> dict:
    """The OpenAPI 3.2 form of "each event's data is `ref` as JSON, then `[DONE]`"."""
    return {
        "itemSchema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "if": {"const": "[DONE]"},
                    "else": {
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": ref},
                    },
                }
            },
        }
    }


def conformance_spec() -> dict:
    """The extracted spec with the deliberate exceptions below, each for the reason given."""
    raw = spec.load()
    schemas = raw["components"]["schemas"]
    # 0. The image and audio operations are not run here: their answers are the upstream's
    # own (audio bytes, an image server's URLs) and their uploads multipart, which this run
    # does not generate. Their request tables are held to the spec field by field
    # (test_validation_spec.py); the routes are driven with the SDK in test_media.py.
    for path in MEDIA_PATHS:
        del raw["paths"][path]
    for item in raw["paths"].values():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            # 1. The spec documents only 200 (and 429), yet OpenAI answers a bad request, key
            # or model with 400/401/403/404 in the `ErrorResponse` shape. Without this every
            # refusal would be an "undocumented status" and its body never checked.
            op["responses"].setdefault(
                "4XX",
                {
                    "description": "An error in OpenAI's shape",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    },
                },
            )
            # 2. OpenAI's spec gives a stream's `schema` as the JSON of each event's data,
            # ended by `data: [DONE]` (said in prose); schemathesis reads an OpenAPI 3.1 SSE
            # `schema` as the event object itself ({"data": "...", "event": ...}). Said in
            # the 3.2 form it reads, the same promise is checked event by event.
            content = op["responses"].get("200", {}).get("content", {})
            if "text/event-stream" in content:
                ref = content["text/event-stream"]["schema"]["$ref"]
                content["text/event-stream"] = sse_item_schema(ref)
    # 3. createCompletion documents only JSON, yet `stream: true` (in its own request schema)
    # answers a stream; the spec says streamed and plain answers share CreateCompletionResponse.
    completion = raw["paths"]["/completions"]["post"]["responses"]["200"]["content"]
    completion["text/event-stream"] = sse_item_schema("#/components/schemas/" + COMPLETION_CHUNK)
    # 4. ... and its `finish_reason` is a required string, which a stream cannot give before
    # it ends: OpenAI sends null until the last chunk, as the chat chunk schema says.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [finish, {"type": "null"}]
    }
    schemas[COMPLETION_CHUNK] = chunk
    # 5. `Embedding.embedding` is documented as floats only, yet `encoding_format: "base64"`
    # (in the request schema) answers a base64 string, which OpenAI's SDKs decode.
    vector = schemas["Embedding"]["properties"]["embedding"]
    schemas["Embedding"]["properties"]["embedding"] = {
        "anyOf": [vector, {"type": "string", "contentEncoding": "base64"}]
    }
    # 6. Some request objects say `additionalProperties: false` (no response object does);
    # DESIGN.md: "unknown fields pass through", for upstreams' extensions.
    _allow_unknown_fields(raw)
    # 7 (nested). Likewise inside: a content part's cache breakpoint, a custom tool's
    # grammar (the gateway checks only the tool's name and type).
    _unread_inside(schemas)
    # 8 (nested). A content part's `type` and values (`detail`, audio `format`) are left to
    # the upstream: vLLM takes `video_url` and `audio_url` parts, OpenAI adds new ones.
    # A user's part of a type the gateway does not know passes as the upstream's too.
    for name in [f"ChatCompletionRequestMessageContentPart{k}" for k in ("Image", "Audio", "File")]:
        schemas[name] = _without_enums(schemas[name], schemas)
        schemas[name]["properties"]["type"].pop("format", None)
        for field in schemas[name]["properties"].values():
            for inner in field.get("properties", {}).values():
                inner.pop("format", None)  # image_url.url as a URI: the upstream fetches it
    for name in ["ChatCompletionRequestUserMessageContentPart"]:
        union = schemas[name]
        parts = union["oneOf"]
        known = [resolve_type(part, schemas) for part in parts]
        other = {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "not": {"enum": known}}},
        }
        schemas[name] = {"anyOf": [*parts, other]}
    for name in REQUESTS:
        fields = _properties(schemas[name], schemas)
        required = _required(schemas[name], schemas)
        # 7. The insides of objects the gateway does not read are the upstream's to check:
        # servers extend them, and OpenAI changes them (proxy/validation.py).
        for field in UNREAD_OBJECTS:
            if field in fields:
                fields[field] = {"type": "object"}
        # 8. Enumerations of values the gateway does not act on are left to the upstream,
        # which may know more than OpenAI (vLLM's and Ollama's reasoning efforts, tiers).
        for field in OPEN_ENUMS:
            if field in fields:
                fields[field] = _without_enums(fields[field], schemas)
        # 9. null stands for an absent optional field, as the SDKs and LangChain send it.
        for field, node in list(fields.items()):
            if field not in required:
                fields[field] = {"anyOf": [node, {"type": "null"}]}
    return raw


REQUESTS = ("CreateChatCompletionRequest", "CreateCompletionRequest", "CreateEmbeddingRequest")
OPEN_ENUMS = (
    "service_tier",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "prompt_cache_retention",
)
UNREAD_OBJECTS = (
    "audio",
    "prediction",
    "web_search_options",
    "moderation",
    "prompt_cache_options",
    "metadata",
)


def _unread_inside(value) -> None:
    if isinstance(value, dict):
        properties = value.get("properties")
        if isinstance(properties, dict):
            for name in ("prompt_cache_breakpoint",):
                if name in properties:
                    properties[name] = {"type": "object"}
            custom = properties.get("custom")
            if isinstance(custom, dict) and "format" in custom.get("properties", {}):
                custom["properties"]["format"] = {"type": "object"}
        for child in value.values():
            _unread_inside(child)
    elif isinstance(value, list):
        for child in value:
            _unread_inside(child)


def resolve_type(part: dict, schemas: dict) -> str:
    """The `type` value a content part's schema (a reference) is named by."""
    node = schemas[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
    return node["properties"]["type"].get("enum", [node["properties"]["type"].get("const")])[0]


def _merged(node: dict, schemas: dict) -> list[dict]:
    """`node` and every `allOf` part it is made of, references followed."""
    while "$ref" in node:
        node = schemas[node["$ref"].rsplit("/", 1)[1]]
    parts = [node]
    for part in node.get("allOf", ()):
        parts += _merged(part, schemas)
    return parts


class _Fields(dict):
    """A request's field name → schema, where setting a field writes to the part defining it."""

    def __init__(self, owners: dict):
        super().__init__({name: owner[name] for name, owner in owners.items()})
        self._owners = owners

    def __setitem__(self, name, value):
        self._owners[name][name] = value
        super().__setitem__(name, value)


def _properties(request: dict, schemas: dict) -> _Fields:
    owners = {}
    for part in _merged(request, schemas):
        for name in part.get("properties", {}):
            owners.setdefault(name, part["properties"])
    return _Fields(owners)


def _required(request: dict, schemas: dict) -> set:
    return {name for part in _merged(request, schemas) for name in part.get("required", ())}


def _without_enums(node, schemas):
    """`node` (references followed) with no `enum` anywhere in it."""
    if isinstance(node, list):
        return [_without_enums(child, schemas) for child in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _without_enums(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
    return {k: _without_enums(v, schemas) for k, v in node.items() if k != "enum"}


def _allow_unknown_fields(value) -> None:
    if isinstance(value, dict):
        if value.get("additionalProperties") is False:
            del value["additionalProperties"]
        for child in value.values():
            _allow_unknown_fields(child)
    elif isinstance(value, list):
        for child in value:
            _allow_unknown_fields(child)


def run_config(
    phase: str, mode: str, checks: tuple[str, ...], *, keys: bool = True, **coverage
) -> schemathesis.Config:
    """One phase in one generation mode with `checks`, bounded and reproducible.

    With `keys`, the key is one of the parameters schemathesis varies (left out, spoilt);
    without, every case carries the test's key and varies only what it sends.
    """
    phases = {name: {"enabled": name == phase} for name in ("examples", "coverage", "fuzzing")}
    phases["stateful"] = {"enabled": False}
    phases["coverage"].update(coverage)
    generation = {
        "mode": mode,
        "deterministic": True,
        "database": "none",
        "with-security-parameters": keys,
        # Shrinking a failure costs hundreds of requests (minutes); the failing case is
        # reported as found, with a curl line to replay it.
        "no-shrink": True,
    }
    if phase == "fuzzing":
        generation["max-examples"] = FUZZ_EXAMPLES
    return schemathesis.Config.from_dict(
        {
            "generation": generation,
            "phases": phases,
            "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        }
    )


RAW = conformance_spec()
edges = schemathesis.openapi.from_dict(
    RAW,
    config=run_config(
        "coverage",
        "all",
        (
            *RESPONSE_CHECKS,
            "positive_data_acceptance",
            "negative_data_rejection",
            "missing_required_header",
            "ignored_auth",
        ),
        **{"unexpected-methods": []},
    ),
)
# Schemathesis makes its undeclared-method cases in negative mode only.
methods = schemathesis.openapi.from_dict(
    RAW,
    config=run_config(
        "coverage",
        "negative",
        ("not_a_server_error", "unsupported_method", "allow_header_conformance"),
    ),
)
valid = schemathesis.openapi.from_dict(
    RAW,
    config=run_config(
        "fuzzing",
        "positive",
        (*RESPONSE_CHECKS, "positive_data_acceptance", "ignored_auth"),
        keys=False,
    ),
)
invalid = schemathesis.openapi.from_dict(
    # Without the key as a parameter: else most generated cases are only about the key,
    # which the edges test covers.
    RAW,
    config=run_config(
        "fuzzing", "negative", (*RESPONSE_CHECKS, "negative_data_rejection"), keys=False
    ),
    # The two GETs take nothing that could be invalid but the key (any string is a model id).
).include(method="POST")


# What schemathesis puts in `Authorization`, replaced by the test's key when the case is sent:
# cases are made (and their credentials set) when the module loads, before any key exists.
KEY_PLACEHOLDER = "the-test-gateway-key"


class GatewayKey:
    """Schemathesis' credential provider, so that it knows which cases carry a valid key
    and can leave it out, or spoil it, for the cases about a missing or wrong one."""

    def get(self, case, context):
        return KEY_PLACEHOLDER

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


for _schema in (edges, methods, valid, invalid):
    _schema.auth()(GatewayKey)


@dataclass
class Served:
    """The live gateway, the stand-in behind it and a key for both schemathesis and httpx."""

    gateway: object
    upstream: object
    secret: str


@pytest.fixture
def unthrottled(settings):
    # Schemathesis sends hundreds of requests without a key, or with a wrong one, from one
    # address: the invalid-key throttle would answer everything after the 30th with 429,
    # which every check accepts, and hide what the gateway would have answered.
    settings.AETHERGATE_INVALID_KEY_LIMIT = 1_000_000


@pytest.fixture
def served(unthrottled, gateway, upstream, make_model, make_key):
    """A key and the three models the spec's requests are mapped to, all on the stand-in."""
    make_model(name=CHAT_MODEL)
    make_model(name=COMPLETION_MODEL)
    make_model(name=EMBEDDING_MODEL, upstream_name="echo-embed", capability="EMBEDDING")
    return Served(gateway, upstream, make_key()[1])


def use_registered_model(case) -> None:
    """Point a string `model` (body or path) at the model registered for the operation."""
    model = MODEL_FOR_PATH.get(case.operation.path)
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = model
    if case.path_parameters and isinstance(case.path_parameters.get("model"), str):
        case.path_parameters["model"] = model


def lone_surrogates(value) -> bool:
    """Whether a string in `value` (keys included) holds half of a UTF-16 surrogate pair."""
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(lone_surrogates(k) or lone_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(lone_surrogates(item) for item in value)
    return False


def call(case, served: Served):
    """Send `case` and run its checks; a refusal must not have reached the stand-in, and
    an inference call served must have reached it once."""
    use_registered_model(case)
    if lone_surrogates(case.body):
        # 10. A string the spec allows may hold a lone surrogate (`"\ud800"`), which is no
        # text: UTF-8 cannot carry it, and the gateway refuses it as invalid JSON.
        response = case.call(
            base_url=served.gateway.v1, headers={"Authorization": f"Bearer {served.secret}"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json"
        return response
    if (case.headers or {}).get("Authorization") == f"Bearer {KEY_PLACEHOLDER}":
        case.headers["Authorization"] = f"Bearer {served.secret}"
    before = len(served.upstream.received)
    try:
        response = case.call_and_validate(base_url=served.gateway.v1)
    except FailureGroup as failures:
        # A FailureGroup is not an Exception, so Hypothesis would stop at the first failing
        # edge case; as an AssertionError each failing one is reported.
        raise AssertionError(failures.message) from None
    reached = served.upstream.received[before:]
    if response.status_code < 300 and case.method == "POST":
        assert len(reached) == 1, f"served after {len(reached)} upstream requests"
    if 400 <= response.status_code < 500:
        assert not reached, (
            f"refused with {response.status_code} after the stand-in received "
            f"{[(r.method, r.path, r.body[:200]) for r in reached]}: {response.text[:300]}"
        )
    return response


@edges.parametrize()
@settings(suppress_health_check=SLOW_RUN)
def test_it_keeps_to_the_spec_at_its_edges(case, served):
    call(case, served)


@methods.parametrize()
@settings(suppress_health_check=SLOW_RUN)
def test_it_answers_methods_the_spec_does_not_declare_with_405_and_allow(case, served):
    # The other negative edge cases are the edges test's.
    if case.meta.phase.data.scenario == CoverageScenario.UNSPECIFIED_HTTP_METHOD:
        call(case, served)


@valid.parametrize()
@settings(suppress_health_check=SLOW_RUN)
def test_it_serves_valid_requests_as_the_spec_describes(case, served):
    call(case, served)


@invalid.parametrize()
@settings(suppress_health_check=SLOW_RUN)
def test_it_refuses_invalid_requests_before_the_upstream(case, served):
    call(case, served)


# --------------------------------------------------------------------------- streams

STREAMS = {
    "/chat/completions": "CreateChatCompletionStreamResponse",
    "/completions": COMPLETION_CHUNK,
}


def stream_strategy(path: str):
    return valid[path]["POST"].as_strategy()


def stream_events(served: Served, case) -> tuple[httpx.Response, list[str], dict]:
    use_registered_model(case)
    # With the usage chunk, whose `choices` is empty, checked too.
    options = {**(case.body.get("stream_options") or {}), "include_usage": True}
    body = {**case.body, "stream": True, "stream_options": options}
    with httpx.stream(
        "POST",
        served.gateway.v1 + case.operation.path,
        json=body,
        headers={"Authorization": f"Bearer {served.secret}"},
        timeout=10,
    ) as response:
        response.read()
        return response, sse_events(response), body


def assert_events_conform(response, events: list[str], body: dict, schema_name: str):
    # Hypothesis shows a case as `case=`: the body is in each message instead.
    sent = f"\nfor the body {json.dumps(body)[:1000]}"
    assert response.status_code == 200, response.text[:500] + sent
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events, "the stream sent no events" + sent
    assert events[-1] == "[DONE]", f"the stream ended with {events[-1][:200]!r}" + sent
    validator = spec.validator(schema_name, RAW)
    for index, event in enumerate(events[:-1]):
        assert event != "[DONE]", f"event {index} is a [DONE] before the end" + sent
        chunk = json.loads(event)
        errors = [
            f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
            for e in validator.iter_errors(chunk)
        ]
        assert not errors, (
            f"event {index} of {len(events)} breaks {schema_name}: {errors}\n{event}" + sent
        )


# No deadline: how long a request takes on a shared machine is not what is tested.
STREAM_RUN = settings(
    max_examples=STREAM_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=NO_SHRINK,
    suppress_health_check=SLOW_RUN,
)


@given(case=stream_strategy("/chat/completions"))
@STREAM_RUN
def test_each_event_of_a_valid_chat_stream_is_a_spec_chunk(case, served):
    response, events, body = stream_events(served, case)

    assert_events_conform(response, events, body, STREAMS["/chat/completions"])


@given(case=stream_strategy("/completions"))
@STREAM_RUN
def test_each_event_of_a_valid_completion_stream_is_a_spec_completion(case, served):
    response, events, body = stream_events(served, case)

    assert_events_conform(response, events, body, STREAMS["/completions"])

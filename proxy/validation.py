"""What a client's JSON body must be before anything is spent on it (pure).

The body is walked once, without recursion: nesting is bounded and fields
that could redirect the upstream call are removed. Then each operation's
`Schema` checks what the official OpenAI spec (`openai-openapi.yaml`) says
of its fields: required ones present, types, numeric ranges, array lengths,
and the shape of each chat message. A field the spec does not name passes
through as sent (upstreams have extensions); enumerations other than the
gateway's own are left to the upstream, which may know more values than
OpenAI. proxy/tests/test_validation_spec.py holds the table to the spec.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.codec import MAX_CLIENT_DEPTH
from proxy.errors import APIError, bad_request

# Fields that would let a client choose where or how the gateway calls out.
# They are removed at any depth, except inside what is data for the model.
ROUTING_FIELDS = frozenset(
    {"api_base", "base_url", "api_key", "api_version", "headers", "extra_headers"}
)
MODEL_DATA_FIELDS = frozenset(
    {"messages", "tools", "functions", "tool_choice", "response_format", "prompt", "input"}
)

# JSON's types by Python's: a bool is not an integer here, as in JSON Schema.
_KINDS = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}
_NAMES = {
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
NUMBER = ("number", "integer")


def kind(value) -> str:
    return _KINDS.get(type(value), "other")


@dataclass(frozen=True, slots=True)
class Rule:
    """One field: its JSON types, the spec's bounds, and a check of each item of an array."""

    types: tuple[str, ...]
    minimum: float | None = None
    maximum: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    items: Callable[[str, object], None] | None = None
    shape: Callable[[str, object], None] | None = None  # a check of the whole value


@dataclass(frozen=True, slots=True)
class Schema:
    """An operation's body: `required` fields (null allowed for those in `nullable`) and rules."""

    required: tuple[str, ...]
    rules: dict[str, Rule]
    nullable: frozenset[str] = field(default_factory=frozenset)


def check_body(payload: dict, schema: Schema) -> None:
    """Raise a 400 APIError unless `payload` is fit to forward; strip routing fields in place."""
    _walk(payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        if model is not None:
            raise invalid_type("model", "a string", model)
        raise bad_request(
            "You must provide a model parameter.", code="missing_model", param="model"
        )
    for name in schema.required:
        if payload.get(name) is None and not (name in schema.nullable and name in payload):
            raise missing(name)
    rules = schema.rules
    for name, value in payload.items():
        rule = rules.get(name)
        if rule is not None and value is not None:
            check(name, value, rule)
    options = payload.get("stream_options")
    if isinstance(options, dict) and "stream_options" in rules:
        check_field(options, "include_usage", BOOLEAN, "stream_options.include_usage")
    encoding = payload.get("encoding_format")
    if "encoding_format" in rules and encoding is not None and encoding not in ENCODINGS:
        raise invalid_value("encoding_format", encoding, ENCODINGS)


def check(param: str, value, rule: Rule) -> None:
    """Raise the 400 for `value` of `param` unless it meets `rule`."""
    found = kind(value)
    if found not in rule.types and not (found == "integer" and "number" in rule.types):
        raise invalid_type(param, " or ".join(_NAMES[t] for t in rule.types), value)
    if found in NUMBER:
        if rule.minimum is not None and value < rule.minimum:
            raise out_of_range(param, value, found, "below", "minimum", ">=", rule.minimum)
        if rule.maximum is not None and value > rule.maximum:
            raise out_of_range(param, value, found, "above", "maximum", "<=", rule.maximum)
    elif found == "array":
        if rule.min_items is not None and len(value) < rule.min_items:
            raise bad_request(
                f"Invalid '{param}': empty array. Expected an array with minimum length "
                f"{rule.min_items}, but got an array with length {len(value)} instead.",
                code="empty_array" if not value else "array_below_min_length",
                param=param,
            )
        if rule.max_items is not None and len(value) > rule.max_items:
            raise bad_request(
                f"Invalid '{param}': array too long. Expected an array with maximum length "
                f"{rule.max_items}, but got an array with length {len(value)} instead.",
                code="array_above_max_length",
                param=param,
            )
        if rule.items is not None:
            check_item = rule.items
            for index, item in enumerate(value):
                check_item(f"{param}[{index}]", item)
    if rule.shape is not None:
        rule.shape(param, value)


def check_field(body: dict, name: str, rule: Rule, param: str) -> None:
    value = body.get(name)
    if value is not None:
        check(param, value, rule)


def _walk(payload: dict) -> None:
    """Bound nesting depth and remove routing fields outside model data, iteratively."""
    stack = [(payload, 1, True)]
    while stack:
        value, depth, strip = stack.pop()
        if depth > MAX_CLIENT_DEPTH:
            raise bad_request(
                f"The request body is nested more than {MAX_CLIENT_DEPTH} levels deep.",
                code="invalid_json",
            )
        if isinstance(value, dict):
            if strip:
                for name in ROUTING_FIELDS.intersection(value):
                    del value[name]
            for name, child in value.items():
                if isinstance(child, dict | list):
                    keep = strip and not (depth == 1 and name in MODEL_DATA_FIELDS)
                    stack.append((child, depth + 1, keep))
        else:
            for child in value:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, strip))


# ----------------------------------------------------------------- errors


def invalid_type(param: str, expected: str, value) -> APIError:
    got = _NAMES.get(kind(value), "a value of another type")
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_type",
        param=param,
    )


def missing(param: str) -> APIError:
    return bad_request(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def invalid_value(param: str, value, supported) -> APIError:
    shown = str(value)[:40]
    names = ", ".join(f"'{s}'" for s in supported)
    return bad_request(
        f"Invalid value for '{param}': '{shown}'. Supported values are: {names}.",
        code="invalid_value",
        param=param,
    )


def out_of_range(param, value, found, side, bound, sign, limit) -> APIError:
    what = "integer" if found == "integer" else "decimal"
    shown = repr(value) if found == "number" else str(value)
    limit = int(limit) if float(limit).is_integer() else limit
    return bad_request(
        f"Invalid '{param}': {what} {side} {bound} value. Expected a value {sign} {limit}, "
        f"but got {shown[:40]} instead.",
        code=f"{what}_{side}_{bound[:3]}_value",
        param=param,
    )


# ----------------------------------------------------------------- items


def _string(param: str, item) -> None:
    if not isinstance(item, str):
        raise invalid_type(param, "a string", item)


def _token(param: str, item) -> None:
    if kind(item) != "integer":
        raise invalid_type(param, "an integer", item)


def _token_array(param: str, item) -> None:
    check(param, item, Rule(("array",), min_items=1, items=_token))


def _texts_or_tokens(param: str, value) -> None:
    """A prompt or input: a string, or an array all of strings, of tokens or of token arrays."""
    if isinstance(value, str) or not value:
        return
    first = kind(value[0])
    item = {"string": _string, "integer": _token, "array": _token_array}.get(first)
    if item is None:
        raise invalid_type(f"{param}[0]", "a string, an integer or an array of integers", value[0])
    for index, piece in enumerate(value):
        item(f"{param}[{index}]", piece)


def _content_part(param: str, part) -> None:
    if not isinstance(part, dict):
        raise invalid_type(param, "an object", part)
    kind_of_part = part.get("type")
    if kind_of_part is None:
        raise missing(f"{param}.type")
    if type(kind_of_part) is not str:
        raise invalid_type(f"{param}.type", "a string", kind_of_part)


ROLES = ("system", "assistant", "user", "function", "tool", "developer")
STRING, ARRAY, BOOLEAN = Rule(("string",)), Rule(("array",)), Rule(("boolean",))
CONTENT = Rule(("string", "array"), items=_content_part)
# The roles whose content the spec requires (assistant: optional with tool calls).
CONTENT_REQUIRED = frozenset({"system", "user", "tool", "developer", "function"})


def _message(param: str, message) -> None:
    """One chat message as the spec's ChatCompletionRequestMessage has it.

    Every request passes here once a message: the usual case (a known role,
    string content) is checked without building a name or a rule.
    """
    if type(message) is not dict:
        raise invalid_type(param, "an object", message)
    role = message.get("role")
    if type(role) is not str or role not in ROLES:
        if role is None:
            raise missing(f"{param}.role")
        if not isinstance(role, str):
            raise invalid_type(f"{param}.role", "a string", role)
        raise invalid_value(f"{param}.role", role, ROLES)
    content = message.get("content")
    if content is None:
        # The function role's content is nullable; it must still be there.
        if role in CONTENT_REQUIRED and not (role == "function" and "content" in message):
            raise missing(f"{param}.content")
    elif type(content) is not str:
        check(f"{param}.content", content, CONTENT)
    name = message.get("name")
    if name is not None and type(name) is not str:
        raise invalid_type(f"{param}.name", "a string", name)
    if role == "tool":
        _required_string(message, "tool_call_id", param)
    elif role == "function":
        _required_string(message, "name", param)
    elif role == "assistant":
        check_field(message, "tool_calls", ARRAY, f"{param}.tool_calls")


def _required_string(body: dict, name: str, param: str) -> None:
    if body.get(name) is None:
        raise missing(f"{param}.{name}")
    check(f"{param}.{name}", body[name], STRING)


# ----------------------------------------------------------------- the operations

PENALTY = Rule(NUMBER, minimum=-2, maximum=2)
STOP = Rule(("string", "array"), min_items=1, max_items=4, items=_string)
COMMON = {
    "frequency_penalty": PENALTY,
    "presence_penalty": PENALTY,
    "temperature": Rule(NUMBER, minimum=0, maximum=2),
    "top_p": Rule(NUMBER, minimum=0, maximum=1),
    "n": Rule(("integer",), minimum=1, maximum=128),
    "stop": STOP,
    "seed": Rule(("integer",)),
    "logit_bias": Rule(("object",)),
    "stream": Rule(("boolean",)),
    "stream_options": Rule(("object",)),
    "user": Rule(("string",)),
}

CHAT = Schema(
    required=("model", "messages"),
    rules={
        **COMMON,
        "messages": Rule(("array",), min_items=1, items=_message),
        "max_tokens": Rule(("integer",)),
        "max_completion_tokens": Rule(("integer",)),
        "logprobs": Rule(("boolean",)),
        "top_logprobs": Rule(("integer",), minimum=0, maximum=20),
        "store": Rule(("boolean",)),
        "parallel_tool_calls": Rule(("boolean",)),
        "tools": Rule(("array",)),
        "functions": Rule(("array",), min_items=1, max_items=128),
        "tool_choice": Rule(("string", "object")),
        "function_call": Rule(("string", "object")),
        "response_format": Rule(("object",)),
        "metadata": Rule(("object",)),
        "modalities": Rule(("array",)),
        "audio": Rule(("object",)),
        "prediction": Rule(("object",)),
        "web_search_options": Rule(("object",)),
        "reasoning_effort": Rule(("string",)),
        "service_tier": Rule(("string",)),
        "verbosity": Rule(("string",)),
    },
)

COMPLETIONS = Schema(
    required=("model", "prompt"),
    nullable=frozenset({"prompt"}),
    rules={
        **COMMON,
        "prompt": Rule(("string", "array"), shape=_texts_or_tokens),
        "best_of": Rule(("integer",), minimum=0, maximum=20),
        "echo": Rule(("boolean",)),
        "logprobs": Rule(("integer",), minimum=0, maximum=5),
        "max_tokens": Rule(("integer",), minimum=0),
        "suffix": Rule(("string",)),
    },
)

ENCODINGS = ("float", "base64")
EMBEDDINGS = Schema(
    required=("model", "input"),
    rules={
        "input": Rule(("string", "array"), min_items=1, max_items=2048, shape=_texts_or_tokens),
        "encoding_format": Rule(("string",)),
        "dimensions": Rule(("integer",), minimum=1),
        "user": Rule(("string",)),
    },
)

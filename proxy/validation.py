"""What a client's JSON body must be before anything is spent on it (pure).

The body is walked once, without recursion: nesting is bounded, fields that
could redirect the upstream call are removed, and the fields the gateway
itself reads must have the types the OpenAI spec gives them. Fields the
gateway does not read pass through as sent.
"""

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

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def check_body(payload: dict, *, stream_allowed: bool) -> None:
    """Raise a 400 APIError unless `payload` is fit to forward; strip routing fields in place.

    `stream_allowed` is False for operations without streaming (embeddings),
    which ignore `stream` as the gateway always has.
    """
    _walk(payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        if model is not None:
            raise invalid_type("model", "a string", model)
        raise bad_request(
            "You must provide a model parameter.", code="missing_model", param="model"
        )
    if stream_allowed:
        _expect(payload, "stream", bool)
        options = _expect(payload, "stream_options", dict)
        if options:
            _expect(options, "include_usage", bool, param="stream_options.include_usage")
    messages = _expect(payload, "messages", list)
    for index, message in enumerate(messages or ()):
        if not isinstance(message, dict):
            raise invalid_type(f"messages[{index}]", "an object", message)
    _expect(payload, "prompt", (str, list))
    _expect(payload, "input", (str, list))
    encoding = _expect(payload, "encoding_format", str)
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request(
            f"Invalid value for 'encoding_format': '{encoding[:40]}'. "
            "Supported values are: 'float' and 'base64'.",
            code="invalid_value",
            param="encoding_format",
        )


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


def _expect(body: dict, name: str, types, *, param: str | None = None):
    """The value of `name` in `body` if absent, null or of `types`; else a 400."""
    value = body.get(name)
    if value is None or isinstance(value, types):
        return value
    expected = types if isinstance(types, tuple) else (types,)
    raise invalid_type(param or name, " or ".join(_TYPE_NAMES[t] for t in expected), value)


def invalid_type(param: str, expected: str, value) -> APIError:
    got = _TYPE_NAMES.get(type(value), "a value of another type")
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_type",
        param=param,
    )

"""What a client's JSON body must be before anything is spent on it (pure).

The body is walked once, without recursion: nesting is bounded and fields
that could redirect the upstream call are removed. Then each operation's
`Schema` checks what the official OpenAI spec (proxy/tests/spec/openai.yaml)
says of its fields: required ones present, types, numeric ranges, array and
string lengths, and inside the objects the spec defines (messages, content
parts, tools, tool calls, tool choice, response format). A field the spec
does not name passes through as sent (upstreams have extensions), as do the
insides of objects the gateway does not read (audio, prediction, web search
and moderation options); enumerations other than the gateway's own are left
to the upstream, which may know more values than OpenAI. null stands for an
absent optional field. proxy/tests/test_validation_spec.py holds the table
to the spec.
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
    max_length: int | None = None  # of a string
    nullable: bool = False  # inside an object: whether null is allowed (top level: always)
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
    encoding = payload.get("encoding_format")
    if "encoding_format" in rules and encoding is not None and encoding not in ENCODINGS:
        raise invalid_value("encoding_format", encoding, ENCODINGS)


def check(param: str, value, rule: Rule) -> None:
    """Raise the 400 for `value` of `param` unless it meets `rule`."""
    found = kind(value)
    if found == "number" and "integer" in rule.types and value.is_integer():
        # 3.0 is an integer to JSON Schema, and to OpenAI; the parser reads an integer
        # past 64 bits as a float too, rounded, so past int64 it is beyond any bound.
        found = "integer"
        limit = rule.minimum if value < 0 else rule.maximum
        if abs(value) >= 2**63 and limit is not None:
            side, bound, sign = (
                ("below", "minimum", ">=") if value < 0 else ("above", "maximum", "<=")
            )
            raise out_of_range(param, value, found, side, bound, sign, limit)
    if found not in rule.types and not (found == "integer" and "number" in rule.types):
        raise invalid_type(param, " or ".join(_NAMES[t] for t in rule.types), value)
    if found in NUMBER:
        if rule.minimum is not None and value < rule.minimum:
            raise out_of_range(param, value, found, "below", "minimum", ">=", rule.minimum)
        if rule.maximum is not None and value > rule.maximum:
            raise out_of_range(param, value, found, "above", "maximum", "<=", rule.maximum)
    elif found == "string":
        if rule.max_length is not None and len(value) > rule.max_length:
            raise bad_request(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{rule.max_length}, but got a string with length {len(value)} instead.",
                code="string_above_max_length",
                param=param,
            )
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
    if type(item) is not int and not (type(item) is float and item.is_integer()):
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


def shape(required: tuple[str, ...] = (), /, **rules: Rule):
    """The check of an object: `required` fields present (not null), each of `rules` met."""

    def check_object(param: str, value) -> None:
        if type(value) is not dict:
            raise invalid_type(param, "an object", value)
        for name in required:
            if value.get(name) is None:
                raise missing(f"{param}.{name}")
        for name, rule in rules.items():
            field_value = value.get(name)
            if field_value is not None:
                check(f"{param}.{name}", field_value, rule)
            elif name in value and not rule.nullable:
                check(f"{param}.{name}", field_value, rule)  # refused: null is not its type

    return check_object


def one_of(values: tuple[str, ...], check_object=None):
    """A string among `values`, or an object `check_object` accepts."""

    def check_value(param: str, value) -> None:
        if type(value) is str:
            if value not in values:
                raise invalid_value(param, value, values)
        elif check_object is not None:
            check_object(param, value)

    return check_value


def by_type(shapes: dict, *, closed: bool = False):
    """The check of an object with a string `type`, then of the shape its type names.

    A type the gateway does not know is the upstream's to judge (OpenAI adds
    new ones, servers have their own), unless the set is `closed`. A value
    that is not an object (a `tool_choice` string) is left to its rule's types.
    """

    def check_typed(param: str, value) -> None:
        if type(value) is not dict:
            return
        kind_of = value.get("type")
        if kind_of is None:
            raise missing(f"{param}.type")
        if type(kind_of) is not str:
            raise invalid_type(f"{param}.type", "a string", kind_of)
        found = shapes.get(kind_of)
        if found is not None:
            found(param, value)
        elif closed:
            raise invalid_value(f"{param}.type", kind_of, tuple(shapes))

    return check_typed


def each(rule: Rule):
    """An `items` check: every item meets `rule`."""
    return lambda param, item: check(param, item, rule)


def objects(check_object) -> Rule:
    return Rule(("object",), shape=check_object)


ROLES = ("system", "assistant", "user", "function", "tool", "developer")
STRING, BOOLEAN = Rule(("string",)), Rule(("boolean",))
OBJECT, INTEGER = Rule(("object",)), Rule(("integer",))

# The objects inside a chat request that the spec defines (ChatCompletionTool,
# ChatCompletionMessageToolCall, the content parts, ResponseFormatJsonSchema, ...).
NULLABLE_BOOLEAN = Rule(("boolean",), nullable=True)
FUNCTION = shape(
    ("name",), name=STRING, description=STRING, parameters=OBJECT, strict=NULLABLE_BOOLEAN
)
NAMED = objects(shape(("name",), name=STRING))
TOOL = by_type(
    {
        "function": shape(("function",), function=objects(FUNCTION)),
        "custom": shape(
            ("custom",),
            custom=objects(shape(("name",), name=STRING, description=STRING, format=OBJECT)),
        ),
    },
    closed=True,  # chat tools are functions or custom ones, at OpenAI as at vLLM or Ollama
)
CALLED = objects(shape(("name", "arguments"), name=STRING, arguments=STRING))
TOOL_CALL = by_type(
    {
        "function": shape(("id", "function"), id=STRING, function=CALLED),
        "custom": shape(
            ("id", "custom"),
            id=STRING,
            custom=objects(shape(("name", "input"), name=STRING, input=STRING)),
        ),
    },
    closed=True,
)
TOOL_CHOICE = one_of(
    ("none", "auto", "required"),
    by_type(
        {
            "function": shape(("function",), function=NAMED),
            "custom": shape(("custom",), custom=NAMED),
            "allowed_tools": shape(
                ("allowed_tools",),
                allowed_tools=objects(
                    shape(
                        ("mode", "tools"),
                        mode=Rule(("string",), shape=one_of(("auto", "required"))),
                        tools=Rule(("array",), items=each(OBJECT)),
                    )
                ),
            ),
        },
        closed=True,
    ),
)
FUNCTION_CALL = one_of(("none", "auto"), NAMED.shape)
BREAKPOINT = OBJECT  # prompt_cache_breakpoint, on any part: its insides are the upstream's
TEXT_PART = shape(("text",), text=STRING, prompt_cache_breakpoint=BREAKPOINT)
USER_PART = by_type(
    {
        "text": TEXT_PART,
        "image_url": shape(
            ("image_url",),
            image_url=objects(shape(("url",), url=STRING, detail=STRING)),
            prompt_cache_breakpoint=BREAKPOINT,
        ),
        "input_audio": shape(
            ("input_audio",),
            input_audio=objects(shape(("data", "format"), data=STRING, format=STRING)),
            prompt_cache_breakpoint=BREAKPOINT,
        ),
        "file": shape(
            ("file",),
            file=objects(shape((), file_data=STRING, file_id=STRING, filename=STRING)),
            prompt_cache_breakpoint=BREAKPOINT,
        ),
    }
)  # open: vLLM takes video_url and audio_url parts, OpenAI adds kinds


def _content(part_check) -> Rule:
    return Rule(("string", "array"), min_items=1, items=each(objects(part_check)))


# What each role's content parts may be, as the spec has it: text only but for the user's
# and the assistant's (which may hold a refusal).
CONTENT = {
    "user": _content(USER_PART),
    "assistant": _content(
        by_type({"text": TEXT_PART, "refusal": shape(("refusal",), refusal=STRING)}, closed=True)
    ),
}
TEXT_CONTENT = _content(by_type({"text": TEXT_PART}, closed=True))
RESPONSE_FORMAT = by_type(
    {
        "text": shape(),
        "json_object": shape(),
        "json_schema": shape(
            ("json_schema",),
            json_schema=objects(
                shape(
                    ("name",),
                    name=STRING,
                    description=STRING,
                    schema=OBJECT,
                    strict=NULLABLE_BOOLEAN,
                )
            ),
        ),
        "structural_tag": shape(),  # vLLM's structured output
    },
    closed=True,
)
ASSISTANT = shape(
    (),
    refusal=Rule(("string",), nullable=True),
    tool_calls=Rule(("array",), items=each(objects(TOOL_CALL))),
    function_call=Rule(("object",), shape=CALLED.shape, nullable=True),
    audio=Rule(("object",), shape=shape(("id",), id=STRING), nullable=True),
)
STREAM_OPTIONS = shape((), include_usage=BOOLEAN, include_obfuscation=BOOLEAN)


def _integers(param: str, value: dict) -> None:
    for name, bias in value.items():
        check(f"{param}.{name}", bias, INTEGER)


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
        check(f"{param}.content", content, CONTENT.get(role, TEXT_CONTENT))
    name = message.get("name", "")
    if type(name) is not str:  # null too: inside a message, only content may be null
        raise invalid_type(f"{param}.name", "a string", name)
    if role == "tool":
        _required_string(message, "tool_call_id", param)
    elif role == "function":
        _required_string(message, "name", param)
    elif role == "assistant":
        ASSISTANT(param, message)


def _required_string(body: dict, name: str, param: str) -> None:
    if body.get(name) is None:
        raise missing(f"{param}.{name}")
    check(f"{param}.{name}", body[name], STRING)


# ----------------------------------------------------------------- the operations

PENALTY = Rule(NUMBER, minimum=-2, maximum=2)
INT64 = Rule(("integer",), minimum=-(2**63), maximum=2**63 - 1)
STOP = Rule(("string", "array"), min_items=1, max_items=4, items=_string)
COMMON = {
    "frequency_penalty": PENALTY,
    "presence_penalty": PENALTY,
    "temperature": Rule(NUMBER, minimum=0, maximum=2),
    "top_p": Rule(NUMBER, minimum=0, maximum=1),
    "n": Rule(("integer",), minimum=1, maximum=128),
    "stop": STOP,
    "logit_bias": Rule(("object",), shape=_integers),
    "stream": Rule(("boolean",)),
    "stream_options": objects(STREAM_OPTIONS),
    "user": Rule(("string",)),
}

CHAT = Schema(
    required=("model", "messages"),
    rules={
        **COMMON,
        "messages": Rule(("array",), min_items=1, items=_message),
        "seed": INT64,
        "max_tokens": Rule(("integer",)),
        "max_completion_tokens": Rule(("integer",)),
        "logprobs": Rule(("boolean",)),
        "top_logprobs": Rule(("integer",), minimum=0, maximum=20),
        "store": Rule(("boolean",)),
        "parallel_tool_calls": Rule(("boolean",)),
        "tools": Rule(("array",), items=each(objects(TOOL))),
        "functions": Rule(("array",), min_items=1, max_items=128, items=each(objects(FUNCTION))),
        "tool_choice": Rule(("string", "object"), shape=TOOL_CHOICE),
        "function_call": Rule(("string", "object"), shape=FUNCTION_CALL),
        "response_format": objects(RESPONSE_FORMAT),
        "metadata": Rule(("object",)),
        "modalities": Rule(("array",), items=_string),
        "audio": Rule(("object",)),
        "prediction": Rule(("object",)),
        "web_search_options": Rule(("object",)),
        "reasoning_effort": Rule(("string",)),
        "safety_identifier": Rule(("string",), max_length=64),
        "prompt_cache_key": Rule(("string",)),
        "prompt_cache_retention": Rule(("string",)),
        "prompt_cache_options": Rule(("object",)),
        "moderation": Rule(("object",)),
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
        "seed": INT64,
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


def _no_stream(param: str, value) -> None:
    if value is True:
        raise bad_request(
            "Streamed image generation is not supported by this gateway; leave 'stream' out.",
            code="unsupported_parameter",
            param=param,
        )


IMAGES = Schema(
    required=("prompt",),
    rules={
        "prompt": STRING,
        "n": Rule(("integer",), minimum=1, maximum=10),
        "quality": STRING,
        "response_format": STRING,
        "output_format": STRING,
        "output_compression": INTEGER,
        "stream": Rule(("boolean",), shape=_no_stream),
        "partial_images": Rule(("integer",), minimum=0, maximum=3),
        "size": STRING,
        "moderation": STRING,
        "background": STRING,
        "style": STRING,
        "user": STRING,
    },
)


def _voice(param: str, value) -> None:
    if type(value) is dict:
        shape(("id",), id=STRING)(param, value)


SPEECH = Schema(
    required=("model", "input", "voice"),
    rules={
        "input": Rule(("string",), max_length=4096),
        "instructions": Rule(("string",), max_length=4096),
        "voice": Rule(("string", "object"), shape=_voice),
        "response_format": STRING,
        "speed": Rule(("number",), minimum=0.25, maximum=4),
        "stream_format": STRING,
    },
)


# The audio forms, read as JSON bodies (proxy.forms.Form.payload): `file` is the
# form reader's to check, so no rule here.
_AUDIO = {
    "prompt": STRING,
    "response_format": STRING,
    "temperature": Rule(("number",)),
}
TRANSCRIPTION = Schema(
    required=("file", "model"),
    rules={
        **_AUDIO,
        "language": STRING,
        "languages": Rule(("array",), min_items=1, items=_string),
        "keywords": Rule(("array",), items=_string),
        "include": Rule(("array",), items=_string),
        "timestamp_granularities": Rule(("array",), items=_string),
        "stream": BOOLEAN,
        "chunking_strategy": Rule(("string", "object")),
        "known_speaker_names": Rule(("array",), max_items=4, items=_string),
        "known_speaker_references": Rule(("array",), max_items=4, items=_string),
    },
)
TRANSLATION = Schema(required=("file", "model"), rules=_AUDIO)


# ----------------------------------------------------------------- Anthropic Messages

# The blocks of a Messages request as Anthropic's SDK types them (message_create_params):
# the fields the gateway reads must be there with their types; a block type it does not
# know is proxy.formats.messages' to refuse, with a message naming it.
_IMAGE_SOURCE = by_type(
    {
        "base64": shape(("media_type", "data"), media_type=STRING, data=STRING),
        "url": shape(("url",), url=STRING),
    }
)
_TEXT_BLOCK = shape(("text",), text=STRING)
_TOOL_RESULT_CONTENT = Rule(
    ("string", "array"),
    items=each(objects(by_type({"text": _TEXT_BLOCK, "image": shape(("source",), source=OBJECT)}))),
)
ANTHROPIC_BLOCK = by_type(
    {
        "text": _TEXT_BLOCK,
        "image": shape(("source",), source=objects(_IMAGE_SOURCE)),
        "tool_use": shape(("id", "name", "input"), id=STRING, name=STRING, input=OBJECT),
        "tool_result": shape(
            ("tool_use_id",),
            tool_use_id=STRING,
            content=_TOOL_RESULT_CONTENT,
            is_error=BOOLEAN,
        ),
    }
)
_ANTHROPIC_MESSAGE = shape(
    ("role", "content"),
    role=Rule(("string",), shape=one_of(("user", "assistant"))),
    content=Rule(("string", "array"), items=each(objects(ANTHROPIC_BLOCK))),
)
_ANTHROPIC_TOOL = shape(
    ("name",),
    name=STRING,
    type=STRING,
    description=STRING,
    input_schema=OBJECT,
)
_ANTHROPIC_TOOL_CHOICE = by_type(
    {
        "auto": shape((), disable_parallel_tool_use=BOOLEAN),
        "any": shape((), disable_parallel_tool_use=BOOLEAN),
        "none": shape(),
        "tool": shape(("name",), name=STRING, disable_parallel_tool_use=BOOLEAN),
    },
    closed=True,
)
_THINKING = by_type(
    {
        "enabled": shape(("budget_tokens",), budget_tokens=Rule(("integer",), minimum=1)),
        "disabled": shape(),
        "adaptive": shape(),
    },
    closed=True,
)
_UNIT = Rule(NUMBER, minimum=0, maximum=1)
_MESSAGES_RULES = {
    "messages": Rule(("array",), min_items=1, items=each(objects(_ANTHROPIC_MESSAGE))),
    "system": Rule(("string", "array"), items=each(objects(by_type({"text": _TEXT_BLOCK})))),
    "tools": Rule(("array",), items=each(objects(_ANTHROPIC_TOOL))),
    "tool_choice": objects(_ANTHROPIC_TOOL_CHOICE),
    "stop_sequences": Rule(("array",), items=_string),
    "temperature": _UNIT,
    "top_p": _UNIT,
    "top_k": Rule(("integer",), minimum=0),
    "metadata": objects(shape((), user_id=Rule(("string",), nullable=True))),
    "thinking": objects(_THINKING),
    "output_config": OBJECT,
}

# POST /v1/messages (Anthropic's MessageCreateParams).
MESSAGES = Schema(
    required=("model", "max_tokens", "messages"),
    rules={
        **_MESSAGES_RULES,
        "max_tokens": Rule(("integer",), minimum=1),
        "stream": BOOLEAN,
    },
)

# POST /v1/messages/count_tokens (MessageCountTokensParams): no max_tokens, no stream.
COUNT_TOKENS = Schema(required=("model", "messages"), rules=_MESSAGES_RULES)


def _metadata(param: str, value: dict) -> None:
    """The spec's Metadata: at most 16 pairs, keys of at most 64 characters, string values
    of at most 512."""
    if len(value) > 16:
        raise bad_request(
            f"Invalid '{param}': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(value)} properties instead.",
            code="object_above_max_properties",
            param=param,
        )
    for name, item in value.items():
        if len(name) > 64:
            raise bad_request(
                f"Invalid '{param}': a key longer than 64 characters.",
                code="string_above_max_length",
                param=param,
            )
        check(f"{param}.{name}", item, Rule(("string",), max_length=512))


# POST /v1/responses (the spec's CreateResponse): what proxy.formats.responses reads.
RESPONSES = Schema(
    required=("model",),
    rules={
        "input": Rule(("string", "array"), items=each(OBJECT)),
        "instructions": STRING,
        "tools": Rule(("array",), items=each(objects(shape(("type",), type=STRING)))),
        "tool_choice": Rule(("string", "object")),
        "parallel_tool_calls": BOOLEAN,
        "max_output_tokens": Rule(("integer",), minimum=16),
        "max_tool_calls": Rule(("integer",), minimum=1),
        "temperature": Rule(NUMBER, minimum=0, maximum=2),
        "top_p": Rule(NUMBER, minimum=0, maximum=1),
        "top_logprobs": Rule(("integer",), minimum=0, maximum=20),
        "stream": BOOLEAN,
        "stream_options": OBJECT,
        "store": BOOLEAN,
        "background": BOOLEAN,
        "previous_response_id": STRING,
        "conversation": Rule(("string", "object")),
        "truncation": STRING,
        "metadata": Rule(("object",), shape=_metadata),
        "text": OBJECT,
        "reasoning": OBJECT,
        "include": Rule(("array",), items=_string),
        "prompt_cache_key": STRING,
        "safety_identifier": Rule(("string",), max_length=64),
        "service_tier": STRING,
        "user": STRING,
    },
)

"""What each kind of upstream server does differently from OpenAI, and the adjustment it needs.

An endpoint's `kind` (Endpoint.Kind) names its server software; each kind
is one `Dialect` row below, with its sources in ../shared/UPSTREAMS.md. The
request side is `adapt` (a copy of the client's body made fit for that
server, or a 400 for what it cannot do); the answer side reads the flags
(`rewrites_ids`, `faults_as_500`). "generic" must suit any
OpenAI-compatible server, so it changes only what every server accepts.
"""

from dataclasses import dataclass

from proxy.errors import APIError, bad_request


@dataclass(frozen=True, slots=True)
class Dialect:
    """One server kind's departures from OpenAI (the defaults are OpenAI's own behaviour)."""

    name: str
    # The `developer` role: llama-cpp-python and older llama.cpp templates
    # answer 500; every server takes `system`, which means the same.
    developer_role: bool = False
    # `max_completion_tokens`: ignored by llama-cpp-python, Ollama and LM Studio,
    # which read `max_tokens`; OpenAI's reasoning models refuse `max_tokens`.
    max_completion_tokens: bool = False
    # `n` > 1: llama-cpp-python answers one choice, Ollama ignores it.
    several_choices: bool = True
    # An assistant message with `content: null` (after tool calls): llama-cpp-python 500s.
    null_content: bool = True
    # Content as an array of text parts: llama-cpp-python takes parts on user messages
    # only, and GGUF chat templates that join strings fail on them there too (500).
    text_parts: bool = True
    # `response_format: json_schema`: llama-cpp-python 500s.
    json_schema: bool = True
    # `response_format: json_object`: LM Studio refuses it, and takes a json_schema instead.
    json_object: bool = True
    # `dimensions` for embeddings: llama.cpp and llama-cpp-python ignore it silently.
    dimensions: bool = True
    # Token arrays as embedding input: llama-cpp-python and Ollama refuse them.
    token_input: bool = True
    # `parallel_tool_calls` absent means true at OpenAI, false at llama.cpp.
    parallel_tools_default: bool = True
    # Ids that collide across answers (Ollama: chatcmpl-<0..998>): the gateway makes its own.
    rewrites_ids: bool = False
    # A malformed request answered with 500 and an error body (llama.cpp, llama-cpp-python):
    # a 400 for the client, neither retried nor a reason to fall back.
    faults_as_500: bool = False
    # A streamed transcript's usage: vLLM sends it only when the form asks for it.
    transcript_usage_field: bool = False


DIALECTS = {
    d.name: d
    for d in (
        Dialect("openai", developer_role=True, max_completion_tokens=True),
        Dialect("generic"),
        Dialect("vllm", max_completion_tokens=True, transcript_usage_field=True),
        Dialect("ollama", several_choices=False, token_input=False, rewrites_ids=True),
        Dialect(
            "llama_cpp",
            max_completion_tokens=True,
            dimensions=False,
            parallel_tools_default=False,
            faults_as_500=True,
        ),
        Dialect(
            "llama_cpp_python",
            several_choices=False,
            null_content=False,
            text_parts=False,
            json_schema=False,
            dimensions=False,
            token_input=False,
            faults_as_500=True,
        ),
        Dialect("lmstudio", several_choices=False, json_object=False),
        # Not OpenAI-compatible: its requests are made by proxy.formats.anthropic, which
        # refuses what it cannot translate; only the answer-side flags apply to it.
        Dialect("anthropic"),
    )
}
GENERIC = DIALECTS["generic"]


def of(endpoint) -> Dialect:
    """The dialect of `endpoint` (an EndpointInfo); generic for a kind this version lacks."""
    return DIALECTS.get(endpoint.kind, GENERIC)


def adapt_generation(body: dict, dialect: Dialect) -> None:
    """Make a chat or completions `body` (a shallow copy of the client's) fit `dialect`, in place.

    Raises a 400 APIError for what the server cannot do and would get wrong silently.
    """
    if not dialect.max_completion_tokens and body.get("max_completion_tokens") is not None:
        limit = body.pop("max_completion_tokens")
        body.setdefault("max_tokens", limit)
    n = body.get("n")
    if not dialect.several_choices and isinstance(n, int) and n > 1:
        raise unsupported(dialect, "n", "more than one choice (n > 1)")
    messages = body.get("messages")
    if isinstance(messages, list) and not (
        dialect.developer_role and dialect.null_content and dialect.text_parts
    ):
        body["messages"] = [_adapt_message(m, dialect) for m in messages]
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema" and not dialect.json_schema:
        raise unsupported(dialect, "response_format", "structured output (json_schema)")
    if kind == "json_object" and not dialect.json_object:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "json_object", "schema": {"type": "object"}},
        }
    if not dialect.parallel_tools_default and body.get("tools"):
        body.setdefault("parallel_tool_calls", True)


def _adapt_message(message: dict, dialect: Dialect) -> dict:
    role, content = message.get("role"), message.get("content")
    changed = {}
    if role == "developer" and not dialect.developer_role:
        changed["role"] = "system"
    if role == "assistant" and content is None and not dialect.null_content:
        changed["content"] = ""
    elif isinstance(content, list) and not dialect.text_parts and _only_text(content):
        # The same text: the parts' texts joined as OpenAI's models read them.
        changed["content"] = "".join(part["text"] for part in content)
    return {**message, **changed} if changed else message


def _only_text(parts: list) -> bool:
    return all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in parts
    )


def adapt_embeddings(body: dict, dialect: Dialect) -> None:
    """Refuse what `dialect` would silently get wrong in an embeddings `body`."""
    if not dialect.dimensions and body.get("dimensions") is not None:
        raise unsupported(dialect, "dimensions", "embeddings of a chosen size (dimensions)")
    value = body.get("input")
    if (
        not dialect.token_input
        and isinstance(value, list)
        and value
        and not isinstance(value[0], str)
    ):
        raise unsupported(dialect, "input", "token arrays as input")


def unsupported(dialect: Dialect, param: str, what: str) -> APIError:
    return bad_request(
        f"This model's upstream server ({dialect.name}) does not support {what}.",
        code="unsupported_parameter",
        param=param,
    )

"""The `/v1` operations, one row each: method, path, what it needs and how its bodies are made.

Adding an endpoint is one row here plus, if its format is new, one adapter
in `proxy.formats`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from proxy import bridges, counting, errors, listing, me, pipeline, relay, retrieval, validation
from proxy.formats import messages, openai


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the `/v1` API.

    `handler(runtime, op, ex, scope, receive, responder)` answers it.
    Inference operations also name the model `capability` they need,
    whether they `streams`, how the client's body is `read` (JSON, or a
    form) and the `schema` it must meet, the list an answer must hold
    (`answer_items`), `prepare(payload, model, deployment, stream)` for the upstream
    body, how the answer is relayed (`relay`), `count(data, payload, ex)`
    for its usage (returning the text a log keeps), `finish(data, payload,
    ex)` to make a JSON answer the spec's shape in place before it is sent,
    and, for streams, `chunk_shaper(ex)`, the function that does the same to
    each chunk and says whether it finishes a choice. An agent API names its
    `bridge(runtime, ex, payload, scope)`, which translates it (proxy.bridges),
    and how its errors are written (`error_body`, `error_event`).
    """

    method: str
    path: str
    handler: Callable
    capability: str = ""
    streams: bool = False
    answer_items: str = ""
    read: Callable = pipeline.read_json
    prepare: Callable | None = None
    relay: Callable = relay.relay_answer
    count: Callable = openai.count_generation
    finish: Callable = openai.unchanged
    chunk_shaper: Callable | None = None
    upstream_path: str = ""  # default: `path` without its /v1
    schema: validation.Schema | None = None  # what its body must be
    accept: str = "application/json"  # what the upstream is asked to answer in
    bridge: Callable | None = None
    error_body: Callable = errors.APIError.body
    error_event: Callable = errors.data_event

    def __post_init__(self):
        if not self.upstream_path:
            object.__setattr__(self, "upstream_path", self.path.removeprefix("/v1"))


def _generation(path: str, schema: validation.Schema, finish, chunk_shaper) -> Operation:
    return Operation(
        "POST",
        path,
        pipeline.infer,
        capability="TEXT",
        streams=True,
        answer_items="choices",
        prepare=openai.prepare_generation,
        finish=finish,
        chunk_shaper=chunk_shaper,
        schema=schema,
    )


OPERATIONS = (
    _generation("/v1/chat/completions", validation.CHAT, openai.finish_chat, openai.chat_chunks),
    _generation(
        "/v1/completions",
        validation.COMPLETIONS,
        openai.finish_completion,
        openai.completion_chunks,
    ),
    Operation(
        "POST",
        "/v1/embeddings",
        pipeline.infer,
        capability="EMBEDDING",
        answer_items="data",
        prepare=openai.prepare_embeddings,
        finish=openai.finish_embeddings,
        schema=validation.EMBEDDINGS,
    ),
    Operation(
        "POST",
        "/v1/images/generations",
        pipeline.infer,
        capability="IMAGE",
        answer_items="data",
        prepare=openai.prepare_media,
        count=openai.count_images,
        finish=openai.finish_images,
        schema=validation.IMAGES,
    ),
    Operation(
        "POST",
        "/v1/audio/speech",
        pipeline.infer,
        capability="AUDIO_TTS",
        prepare=openai.prepare_media,
        relay=relay.relay_bytes,
        count=openai.count_speech,
        schema=validation.SPEECH,
        accept="*/*",
    ),
    *(
        Operation(
            "POST",
            path,
            pipeline.infer,
            capability="AUDIO_STT",
            streams=streams,
            read=pipeline.read_form,
            prepare=openai.prepare_form,
            relay=relay.relay_transcript,
            count=openai.count_transcript,
            schema=schema,
            accept="*/*",
        )
        for path, schema, streams in (
            ("/v1/audio/transcriptions", validation.TRANSCRIPTION, True),
            ("/v1/audio/translations", validation.TRANSLATION, False),
        )
    ),
    Operation(
        "POST",
        "/v1/responses",
        pipeline.infer,
        capability="TEXT",
        streams=True,
        schema=validation.RESPONSES,
        bridge=bridges.responses_bridge,
    ),
    Operation(
        "POST",
        "/v1/messages",
        pipeline.infer,
        capability="TEXT",
        streams=True,
        schema=validation.MESSAGES,
        bridge=bridges.messages_bridge,
        error_body=messages.error_body,
        error_event=bridges.anthropic_error_event,
    ),
    Operation(
        "POST",
        "/v1/messages/count_tokens",
        counting.count_tokens,
        capability="TEXT",
        schema=validation.COUNT_TOKENS,
        error_body=messages.error_body,
    ),
    Operation("GET", "/v1/models", listing.list_models),
    Operation("GET", "/v1/me", me.describe),
)
RETRIEVE_MODEL = Operation("GET", listing.PREFIX + "{model}", listing.retrieve_model)
# /v1/responses/{id} and /v1/responses/{id}/input_items
STORED = (
    Operation("GET", retrieval.PREFIX + "{id}", retrieval.retrieve),
    Operation("DELETE", retrieval.PREFIX + "{id}", retrieval.delete),
)

_BY_ROUTE = {(op.method, op.path): op for op in OPERATIONS}
_METHODS: dict[str, list[str]] = {}
for _op in OPERATIONS:
    _METHODS.setdefault(_op.path, []).append(_op.method)


def resolve(method: str, path: str) -> Operation:
    """The operation for `method` and `path` (a trailing slash ignored).

    A known path asked with another method is a 405 naming the methods it
    serves; any other path a 404.
    """
    path = path.rstrip("/")
    op = _BY_ROUTE.get((method, path))
    if op is not None:
        return op
    if path.startswith(listing.PREFIX):
        if method == "GET":
            return RETRIEVE_MODEL
        raise errors.method_not_allowed(method, path, [RETRIEVE_MODEL.method])
    if path.startswith(retrieval.PREFIX) and "/" not in path[len(retrieval.PREFIX) :].removesuffix(
        retrieval.ITEMS
    ):
        for op in STORED:
            if op.method == method:
                return op
        raise errors.method_not_allowed(method, path, [op.method for op in STORED])
    if path in _METHODS:
        raise errors.method_not_allowed(method, path, _METHODS[path])
    raise errors.unknown_url(method, path)

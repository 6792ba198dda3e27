"""OpenAI's own formats (chat, completions, embeddings): the gateway only sets what it owns.

`prepare_*` build the upstream body from the client's, adapted to the
endpoint's dialect; `finish_*` make an upstream answer the official schema
in place before it is sent; `*_text` read what a log keeps.
"""

import base64
import struct

from proxy import dialects, forms, usage
from proxy.codec import dumps
from proxy.errors import bad_request
from proxy.snapshot import DeploymentInfo, ModelInfo


def prepare_generation(
    payload: dict, model: ModelInfo, deployment: DeploymentInfo, stream: bool
) -> bytes:
    """Chat and completions: the upstream's name, usage always asked for on streams.

    `stream_options` goes only with a stream (vLLM refuses it otherwise), and
    the endpoint's dialect adapts the rest.
    """
    body = dict(payload)
    body["model"] = deployment.upstream_name
    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    else:
        body.pop("stream_options", None)
    dialects.adapt_generation(body, dialects.of(deployment.endpoint))
    return dumps(body)


def prepare_embeddings(
    payload: dict, model: ModelInfo, deployment: DeploymentInfo, stream: bool
) -> bytes:
    body = dict(payload)
    body["model"] = deployment.upstream_name
    dialects.adapt_embeddings(body, dialects.of(deployment.endpoint))
    # Floats are what every upstream speaks; base64 is made here if asked for.
    body["encoding_format"] = "float"
    return dumps(body)


def prepare_media(
    payload: dict, model: ModelInfo, deployment: DeploymentInfo, stream: bool
) -> bytes:
    """Images and speech: the client's body, with the upstream's model name."""
    body = dict(payload)
    body["model"] = deployment.upstream_name
    return dumps(body)


def prepare_form(
    payload: forms.FormPayload, model: ModelInfo, deployment: DeploymentInfo, stream: bool
) -> forms.FormBody:
    """Transcriptions and translations: the client's form, with the upstream's model name.

    A model billed per minute takes only audio whose length the gateway can
    measure: upstreams report it only in some answer formats, and a charge
    must never silently be nothing.
    """
    upload = payload.form.upload
    if model.billing_unit == "MINUTE" and upload.seconds() is None:
        raise bad_request(
            f"The model '{payload['model']}' is billed per minute of audio, and the length of "
            "this file cannot be measured: send MP3, MP4/M4A, Ogg (Vorbis, Opus, FLAC), FLAC, "
            "WAV, AIFF or WMA audio.",
            code="unmeasurable_audio",
            param="file",
        )
    extra = ()
    if stream and dialects.of(deployment.endpoint).transcript_usage_field:
        extra = (("stream_include_usage", "true"),)
    return forms.upstream_body(payload.form, deployment.upstream_name, extra)


# Answers are made the official schema whatever the server sent: the fields
# a client may rely on are always there, with the gateway's values where the
# server's cannot be trusted. `ex` is the request's Exchange, its usage counted
# first by the operation's `count_*`, which returns the text a log keeps.


def finish_chat(data: dict, payload: dict, ex) -> None:
    _identify(data, ex, "chat.completion")
    for index, choice in enumerate(data["choices"]):
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ValueError("a choice without a message")
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        _choice(choice, index)
    _usage(data, ex)


def finish_completion(data: dict, payload: dict, ex) -> None:
    _identify(data, ex, "text_completion")
    for index, choice in enumerate(data["choices"]):
        if not isinstance(choice.get("text"), str):
            raise ValueError("a choice without text")
        _choice(choice, index)
    _usage(data, ex)


def finish_embeddings(data: dict, payload: dict, ex) -> None:
    """The spec's list of embeddings, vectors as the client asked: floats as they came, or
    base64 of little-endian float32.

    Raises struct.error or TypeError for a vector that is not numbers.
    """
    data["object"] = "list"
    base64_wanted = payload.get("encoding_format") == "base64"
    for index, item in enumerate(data["data"]):
        vector = item.get("embedding")
        # llama.cpp adds a stray `encoding_format` to each item: only the spec's fields go on.
        for name in item.keys() - {"object", "index", "embedding"}:
            del item[name]
        item["object"] = "embedding"
        item.setdefault("index", index)
        if base64_wanted and isinstance(vector, list):
            packed = struct.pack(f"<{len(vector)}f", *vector)
            item["embedding"] = base64.b64encode(packed).decode()
    if ex.estimated or not isinstance(data.get("usage"), dict):
        data["usage"] = {"prompt_tokens": ex.input_units, "total_tokens": ex.input_units}


def count_generation(data: dict, payload: dict, ex) -> str:
    """Name the public model in `data`, count its usage into `ex`; the text a log keeps."""
    data["model"] = ex.model_name
    text = answer_text(data)
    counted = usage.from_upstream(data.get("usage"), data.get("timings"))
    ex.set_usage(*usage.count(counted, payload, text))
    return text


def _choice(choice: dict, index: int) -> None:
    choice.setdefault("index", index)
    choice.setdefault("logprobs", None)
    if choice.get("finish_reason") is None:
        choice["finish_reason"] = "stop"


def _identify(data: dict, ex, kind: str) -> None:
    """`id`, `object` and `created` as the spec has them (`model` is set by the relay)."""
    answer = data.get("id")
    if (
        not isinstance(answer, str)
        or not answer
        or dialects.of(ex.deployment.endpoint).rewrites_ids
    ):
        data["id"] = answer_id(ex, kind)
    data["object"] = kind
    if type(data.get("created")) is not int:
        data["created"] = int(ex.created_at.timestamp())


def answer_id(ex, kind: str) -> str:
    prefix = "cmpl-" if kind == "text_completion" else "chatcmpl-"
    return prefix + ex.request_id.removeprefix("req_")


def _usage(data: dict, ex) -> None:
    """The upstream's usage when it was used; else the gateway's counts."""
    if ex.estimated or not isinstance(data.get("usage"), dict):
        data["usage"] = usage_object(ex)


def usage_object(ex) -> dict:
    return {
        "prompt_tokens": ex.input_units,
        "completion_tokens": ex.output_units,
        "total_tokens": ex.input_units + ex.output_units,
    }


def chat_chunks(ex):
    """The function that makes each chat stream chunk of `ex` the spec's shape, in place,
    and says whether the chunk finishes a choice."""
    return _chunk_shaper(ex, "chat.completion.chunk", "delta")


def completion_chunks(ex):
    return _chunk_shaper(ex, "text_completion", "text")


def _chunk_shaper(ex, kind: str, part: str):
    # Made once a stream: per chunk, only what each chunk may lack is looked at.
    own_id = answer_id(ex, kind)
    rewrite = dialects.of(ex.deployment.endpoint).rewrites_ids
    created = int(ex.created_at.timestamp())

    def shape(chunk: dict) -> bool:
        if rewrite or type(chunk.get("id")) is not str:
            chunk["id"] = own_id
        chunk["object"] = kind
        if type(chunk.get("created")) is not int:
            chunk["created"] = created
        finished = False
        for index, choice in enumerate(chunk["choices"]):
            if type(choice) is not dict:
                raise ValueError("a choice that is not an object")
            if "index" not in choice:
                choice["index"] = index
            if part not in choice:
                choice[part] = {} if part == "delta" else ""
            if choice.get("finish_reason") is not None:
                finished = True
            elif "finish_reason" not in choice:
                choice["finish_reason"] = None
            if part == "text" and "logprobs" not in choice:
                choice["logprobs"] = None  # required in a completion's choices
        return finished

    return shape


def usage_chunk(last: dict, ex) -> dict:
    """The closing chunk OpenAI sends with `stream_options.include_usage`, after `last`."""
    return {
        "id": last["id"],
        "object": last["object"],
        "created": last["created"],
        "model": ex.model_name,
        "choices": [],
        "usage": usage_object(ex),
    }


def answer_text(data: dict) -> str:
    """The generated text of a whole (non-streamed) answer."""
    parts = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            parts.append(message.get("content") or choice.get("text") or "")
    return "".join(p for p in parts if isinstance(p, str))


def chunk_text(chunk: dict) -> str:
    """The generated text a stream chunk carries ("" for none)."""
    text = ""
    for choice in chunk.get("choices") or ():
        piece = (choice.get("delta") or {}).get("content") or choice.get("text")
        if piece and isinstance(piece, str):
            text += piece
    return text


# Images and audio: counted in the model's billing unit (proxy.usage), passed on as
# the upstream made them.


def count_images(data: dict, payload: dict, ex) -> str:
    ex.set_usage(*usage.of_images(ex.model, data, str(payload.get("prompt") or "")))
    return ""


def finish_images(data: dict, payload: dict, ex) -> None:
    if type(data.get("created")) is not int:
        data["created"] = int(ex.created_at.timestamp())


def count_transcript(answer: dict | str, payload: dict, ex) -> str:
    """A transcript's units (a JSON answer, a stream's done event, or text); its text."""
    if isinstance(answer, dict) and not isinstance(answer.get("text"), str):
        raise ValueError("a transcript without text")
    ex.set_usage(*usage.of_transcript(ex.model, answer, payload.form.upload))
    return answer if isinstance(answer, str) else answer["text"]


def count_speech(data, payload: dict, ex) -> str:
    """Speech is counted from its input text, estimated: audio carries no usage."""
    ex.set_usage(usage.Usage(usage.estimate_tokens(payload["input"])), estimated=True)
    return ""


def unchanged(data, payload: dict, ex) -> None:
    """An answer passed on as the upstream sent it."""


def transcript_delta(chunk: dict) -> dict | None:
    """A chat-shaped transcript chunk (vLLM's `transcription.chunk`) as OpenAI's
    `transcript.text.delta` event; None for one without text (a usage chunk)."""
    text = chunk_text(chunk)
    return {"type": "transcript.text.delta", "delta": text} if text else None


def transcript_done(text: str, counted: usage.Usage | None) -> dict:
    """The `transcript.text.done` event that ends a stream of chat-shaped chunks."""
    done = {"type": "transcript.text.done", "text": text}
    if counted is not None:
        done["usage"] = {
            "type": "tokens",
            "input_tokens": counted.input,
            "output_tokens": counted.output,
            "total_tokens": counted.input + counted.output,
        }
    return done

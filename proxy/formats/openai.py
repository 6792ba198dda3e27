"""OpenAI's own formats (chat, completions, embeddings): the gateway only sets what it owns.

`prepare_*` build the upstream body from the client's; `finish_*` adjust an
upstream answer in place before it is sent; `*_text` read what a log keeps.
"""

import base64
import struct

from proxy.codec import dumps
from proxy.snapshot import ModelInfo


def prepare_generation(payload: dict, model: ModelInfo, stream: bool) -> bytes:
    """Chat and completions: the upstream's model name, and usage always reported on streams."""
    body = dict(payload)
    body["model"] = model.upstream_name
    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return dumps(body)


def prepare_embeddings(payload: dict, model: ModelInfo, stream: bool) -> bytes:
    body = dict(payload)
    body["model"] = model.upstream_name
    # Floats are what every upstream speaks; base64 is made here if asked for.
    body["encoding_format"] = "float"
    return dumps(body)


def finish_embeddings(data: dict, payload: dict) -> None:
    """Vectors as the client asked: floats as they came, or base64 of little-endian float32.

    Raises struct.error or TypeError for a vector that is not numbers.
    """
    if payload.get("encoding_format") != "base64":
        return
    for item in data.get("data") or ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list):
            packed = struct.pack(f"<{len(vector)}f", *vector)
            item["embedding"] = base64.b64encode(packed).decode()


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

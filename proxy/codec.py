"""JSON for the `/v1` hot path: orjson, with the standard library for what orjson refuses.

Every request parses and writes JSON several times, and a stream once per
chunk; orjson does each in a fraction of the standard library's time. It
refuses a few things the standard library takes (NaN and Infinity in input,
integers beyond 64 bits in output): from upstreams those go through `json`;
from clients they are errors (`loads_client`).
"""

import json

import orjson

# The deepest JSON a client may send. orjson parses at most 1,024 levels and
# writes at most 254; the gateway re-encodes what it forwards and logs, so a
# body must stay well inside the smaller limit, with room for what wraps it.
MAX_CLIENT_DEPTH = 128


def loads(data: bytes | str):
    """Parse an upstream's JSON; raises ValueError when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):
            raise  # the standard library would only recurse until it fails
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def loads_client(data: bytes):
    """Parse a client's JSON strictly: ValueError with a reason for anything but plain JSON.

    Refused: invalid JSON or UTF-8, lone surrogates, NaN and Infinity, and
    nesting past orjson's limit (the caller bounds depth further).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ValueError(str(error)) from None


def dumps(value) -> bytes:
    """Compact UTF-8 JSON; raises ValueError for what cannot be written (too deep, say)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (RecursionError, ValueError, TypeError) as error:
            raise ValueError(f"cannot be written as JSON: {type(error).__name__}") from None

"""JSON for the `/v1` hot path: orjson, with the standard library for what orjson refuses.

Every request parses and writes JSON several times, and a stream once per
chunk; orjson does each in a fraction of the standard library's time. It
refuses a few things the standard library takes (NaN and Infinity in input,
integers beyond 64 bits in output): those go through `json` as before.
"""

import json

import orjson


def loads(data: bytes | str):
    """Parse JSON; raises ValueError when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

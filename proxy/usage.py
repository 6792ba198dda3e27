"""Usage and cost: from the upstream's `usage` when given and sane, estimated otherwise.

Every number here ends up in a `RequestLog` column and a user's balance, so
each is kept within what those columns hold: an upstream's absurd count must
never make a record the database refuses.
"""

import math
from decimal import Decimal

from accounts.models import MONEY
from proxy.snapshot import ModelInfo

# Without the model's tokenizer (none is downloadable here), ~4 characters a
# token is the usual estimate for English text; rows using it are flagged.
CHARS_PER_TOKEN = 4

# The range Django guarantees a PositiveIntegerField on every backend
# (IntegerFieldRangeMixin: 0..2**31-1, PostgreSQL's `integer`); the unit,
# latency and time-to-first-token columns are all PositiveIntegerField.
MAX_COUNT = 2**31 - 1

SECONDS_PER_MINUTE = 60

# Largest amount a MONEY column holds (20 digits, 10 of them decimals).
MAX_COST = Decimal(10) ** (MONEY["max_digits"] - MONEY["decimal_places"]) - Decimal(10) ** (
    -MONEY["decimal_places"]
)


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return min((len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN, MAX_COUNT)


def is_count(value) -> bool:
    """Whether `value` is a usage count the log can store: an int (not a bool) in 0..MAX_COUNT.

    Floats are refused, even integral ones: OpenAI, vLLM, llama.cpp and
    Ollama all send JSON integers, so `12.0` means an upstream that is not
    counting the way it says.
    """
    return type(value) is int and 0 <= value <= MAX_COUNT


def from_upstream(usage) -> tuple[int, int] | None:
    """(input, output) tokens from an OpenAI `usage` object; None if it has none or is not sane.

    `prompt_tokens` must be a count (`is_count`); `completion_tokens` may be
    absent (embeddings: 0) but, if present, must be a count too. Any other
    value makes the whole object untrustworthy, and the caller estimates.
    """
    if not isinstance(usage, dict) or not is_count(usage.get("prompt_tokens")):
        return None
    output = usage.get("completion_tokens", 0)
    if output is None:
        output = 0
    if not is_count(output):
        return None
    return usage["prompt_tokens"], output


def count(counted: tuple[int, int] | None, payload: dict, completion: str) -> tuple[int, int, bool]:
    """(input, output, estimated): the upstream's `counted` usage, or estimates from the text."""
    if counted:
        return *counted, False
    return estimate_tokens(prompt_text(payload)), estimate_tokens(completion), True


def milliseconds(seconds: float) -> int:
    """`seconds` (a duration) as whole milliseconds, at most MAX_COUNT (~24.8 days)."""
    ms = int(seconds * 1000)
    return ms if ms <= MAX_COUNT else MAX_COUNT


def prompt_text(payload: dict) -> str:
    """The text a request sends the model: messages, prompt or input, flattened."""
    parts = []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    for field in ("prompt", "input"):
        value = payload.get(field)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


def _counts(usage, names: tuple[str, str]) -> tuple[int, int] | None:
    """(input, output) under `names` in an upstream's usage object, if both are counts."""
    if not isinstance(usage, dict):
        return None
    found = usage.get(names[0]), usage.get(names[1])
    return found if all(is_count(n) for n in found) else None


def of_images(model: ModelInfo, data: dict, prompt: str) -> tuple[int, int, bool]:
    """(input, output, estimated) of an images answer in the model's unit: IMAGE (and
    REQUEST) count the images returned; TOKEN the upstream's tokens, else the prompt's
    estimated."""
    if model.billing_unit != "TOKEN":
        return 0, len(data["data"]), False
    reported = _counts(data.get("usage"), ("input_tokens", "output_tokens"))
    if reported:
        return *reported, False
    return estimate_tokens(prompt), 0, True


def of_transcript(model: ModelInfo, answer: dict | str, upload) -> tuple[int, int, bool]:
    """(input, output, estimated) of a transcript (a JSON answer or done event, or text):
    TOKEN the upstream's tokens, else the text's estimated; MINUTE (and REQUEST) the
    seconds of audio the upstream reports (`duration`, or usage of type duration),
    else those the gateway measured in the upload (`upload.seconds()`)."""
    data = answer if isinstance(answer, dict) else {}
    text = answer if isinstance(answer, str) else str(data.get("text") or "")
    reported = data.get("usage")
    if model.billing_unit == "TOKEN":
        tokens = _counts(reported, ("input_tokens", "output_tokens"))
        if tokens:
            return *tokens, False
        return 0, estimate_tokens(text), True
    seconds = data.get("duration")
    if seconds is None and isinstance(reported, dict) and reported.get("type") == "duration":
        seconds = reported.get("seconds")
    if type(seconds) is str:  # vLLM's verbose_json: "90.2"
        try:
            seconds = float(seconds)
        except ValueError:
            seconds = None
    if type(seconds) in (int, float) and 0 <= seconds < MAX_COUNT:
        return math.ceil(seconds), 0, False
    return upload.seconds() or 0, 0, True


def cost(model: ModelInfo, input_units: int, output_units: int) -> Decimal:
    """What the request costs in the model's unit, capped at MAX_COST so that it fits the
    MONEY column.

    TOKEN: input price per input token, output price per output token; IMAGE:
    output price per image returned; MINUTE: input price per minute of input
    audio, the units being seconds (90 s cost 1.5 times the price); REQUEST:
    the input price, once.

    The cap matters only for absurd prices times large counts (prices are
    MONEY too, so 2**31 units at the top price overflow the column, which
    PostgreSQL refuses); a capped cost is still far beyond any balance.
    Decimals past the column's 10 are rounded by the database, and a value
    at most MAX_COST never rounds past it.
    """
    unit = model.billing_unit
    if unit == "REQUEST":
        return model.price_in
    if unit == "MINUTE":
        amount = input_units * model.price_in / SECONDS_PER_MINUTE
    elif unit == "IMAGE":
        amount = output_units * model.price_out
    else:
        amount = input_units * model.price_in + output_units * model.price_out
    return amount if amount <= MAX_COST else MAX_COST

"""Usage and cost: from the upstream's `usage` when given and sane, estimated otherwise.

Every number here ends up in a `RequestLog` column and a user's balance, so
each is kept within what those columns hold: an upstream's absurd count must
never make a record the database refuses.
"""

import math
from decimal import Decimal
from typing import NamedTuple

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


class Usage(NamedTuple):
    """What one answer used, in the log's columns: `input` counts every input unit, cached
    tokens included, of which `cache_read` were read from and `cache_write` written to the
    upstream's prompt cache; `output` every output unit, of which `reasoning` were tokens
    spent reasoning (billed as output, recorded for information).

    The parsers below keep `cache_read + cache_write <= input` and
    `reasoning <= output`, every count within MAX_COUNT. Units other than
    tokens (images, seconds of audio) have no components.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


NOTHING = Usage()


def _totals(usage, names: tuple[str, str]) -> tuple[int, int] | None:
    """(input, output) of an upstream's usage object under `names`; None if it is none.

    The input must be a count; the output may be absent or null (embeddings
    report none: 0) but is otherwise a count too. Any other value makes the
    whole object untrustworthy, and the caller estimates.
    """
    if not isinstance(usage, dict) or not is_count(usage.get(names[0])):
        return None
    output = usage.get(names[1])
    if output is None:
        output = 0
    return (usage[names[0]], output) if is_count(output) else None


def _reported(*places: tuple[object, str]):
    """The first value present (not null) in `places`, (object, key) pairs; None if none is.

    The first one present decides: a nonsense value there is not made up
    for by a field of another upstream's naming.
    """
    for found, key in places:
        if isinstance(found, dict) and found.get(key) is not None:
            return found[key]
    return None


def _part(value, room: int) -> int:
    """`value` as a component of a total that has `room` for it: itself if it is a count
    that fits, else 0.

    A component that is negative, not an integer, or larger than what is left
    of its total is dropped, not trusted: the total stays billed, at the plain
    input or output price, and the record stays one the database takes.
    """
    return value if is_count(value) and value <= room else 0


def _split(total: int, output: int, *, read, write, reasoning) -> Usage:
    """The usage of `total` input and `output` tokens, with the `read`, `write` and
    `reasoning` components reported (raw values, None when absent) that fit (`_part`)."""
    read = _part(read, total)
    write = _part(write, total - read)
    return Usage(total, output, read, write, _part(reasoning, output))


_PLAIN_USAGE = frozenset(("prompt_tokens", "completion_tokens", "total_tokens"))


def from_upstream(usage, timings=None) -> Usage | None:
    """The usage of an OpenAI chat, completions or embeddings answer (or stream chunk);
    None if it has none or its totals are not sane.

    `prompt_tokens` and `completion_tokens` are judged by `_totals`;
    `prompt_tokens` counts every input token, cached ones included (OpenAI,
    vLLM, llama.cpp, Ollama).

    The components, each the first of its names that is present:

    - cache read: `prompt_tokens_details.cached_tokens` (OpenAI; vLLM with
      `--enable-prompt-tokens-details`; llama.cpp server; Ollama since it
      reports them), `prompt_cache_hit_tokens` (DeepSeek, whose
      `prompt_tokens` is hits plus misses), `cache_read_input_tokens`
      (Anthropic's name, which some OpenAI-compatible proxies put here), or
      `timings.cache_n`, which llama.cpp server sends beside the usage (for
      a server that reports no details);
    - cache write: `prompt_tokens_details.cache_write_tokens` (OpenAI's spec,
      OpenRouter), or `cache_creation_input_tokens` (Anthropic's name);
    - reasoning: `completion_tokens_details.reasoning_tokens`.

    Each is taken as a part of its total, never added to it; one that does not
    fit is dropped (`_part`).
    """
    totals = _totals(usage, ("prompt_tokens", "completion_tokens"))
    if totals is None:
        return None
    if timings is None and _PLAIN_USAGE.issuperset(usage):
        return Usage(*totals)  # the three totals alone (most local servers): no components
    details = usage.get("prompt_tokens_details")
    return _split(
        *totals,
        read=_reported(
            (details, "cached_tokens"),
            (usage, "prompt_cache_hit_tokens"),
            (usage, "cache_read_input_tokens"),
            (timings, "cache_n"),
        ),
        write=_reported((details, "cache_write_tokens"), (usage, "cache_creation_input_tokens")),
        reasoning=_reported((usage.get("completion_tokens_details"), "reasoning_tokens")),
    )


def from_responses(usage) -> Usage | None:
    """The usage of an OpenAI Responses answer (`response.usage`); None if it has none or
    its totals are not sane.

    `input_tokens` counts every input token, cached ones included, as chat's
    `prompt_tokens` does; its parts are `input_tokens_details.cached_tokens`
    and `.cache_write_tokens`, and `output_tokens_details.reasoning_tokens`
    is part of `output_tokens`. Totals and components are judged as in
    `from_upstream`.
    """
    totals = _totals(usage, ("input_tokens", "output_tokens"))
    if totals is None:
        return None
    details = usage.get("input_tokens_details")
    return _split(
        *totals,
        read=_reported((details, "cached_tokens")),
        write=_reported((details, "cache_write_tokens")),
        reasoning=_reported((usage.get("output_tokens_details"), "reasoning_tokens")),
    )


def from_messages(usage) -> Usage | None:
    """The usage of an Anthropic Messages answer (or a stream's cumulative usage); None if
    it has none or its totals are not sane.

    Anthropic's `input_tokens` leaves the cache out: the tokens read from it
    (`cache_read_input_tokens`) and written to it (`cache_creation_input_tokens`,
    which also breaks them down by lifetime in `cache_creation`, priced here
    alike) come on top, so all input is the three added. `input_tokens` must
    be a count, and `output_tokens` as `_totals` has it; a cache count that
    is not a count, or would take the sum past MAX_COUNT, is dropped. Thinking
    tokens are not reported apart from `output_tokens`: reasoning is 0.
    """
    totals = _totals(usage, ("input_tokens", "output_tokens"))
    if totals is None:
        return None
    uncached, output = totals
    read = _part(usage.get("cache_read_input_tokens"), MAX_COUNT - uncached)
    write = _part(usage.get("cache_creation_input_tokens"), MAX_COUNT - uncached - read)
    return Usage(uncached + read + write, output, read, write)


def count(counted: Usage | None, payload: dict, completion: str) -> tuple[Usage, bool]:
    """(usage, estimated): the upstream's `counted` usage, or estimates from the text."""
    if counted is not None:
        return counted, False
    return Usage(estimate_tokens(prompt_text(payload)), estimate_tokens(completion)), True


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


def _counts(usage, names: tuple[str, str]) -> Usage | None:
    """The usage under `names` (input, output) in an upstream's usage object, if both are
    counts."""
    if not isinstance(usage, dict):
        return None
    found = usage.get(names[0]), usage.get(names[1])
    return Usage(*found) if all(is_count(n) for n in found) else None


def of_images(model: ModelInfo, data: dict, prompt: str) -> tuple[Usage, bool]:
    """(usage, estimated) of an images answer in the model's unit: IMAGE (and REQUEST)
    count the images returned; TOKEN the upstream's tokens, else the prompt's estimated."""
    if model.billing_unit != "TOKEN":
        return Usage(0, len(data["data"])), False
    reported = _counts(data.get("usage"), ("input_tokens", "output_tokens"))
    if reported:
        return reported, False
    return Usage(estimate_tokens(prompt), 0), True


def of_transcript(model: ModelInfo, answer: dict | str, upload) -> tuple[Usage, bool]:
    """(usage, estimated) of a transcript (a JSON answer or done event, or text):
    TOKEN the upstream's tokens, else the text's estimated; MINUTE (and REQUEST) the
    seconds of audio the upstream reports (`duration`, or usage of type duration),
    else those the gateway measured in the upload (`upload.seconds()`)."""
    data = answer if isinstance(answer, dict) else {}
    text = answer if isinstance(answer, str) else str(data.get("text") or "")
    reported = data.get("usage")
    if model.billing_unit == "TOKEN":
        tokens = _counts(reported, ("input_tokens", "output_tokens"))
        if tokens:
            return tokens, False
        return Usage(0, estimate_tokens(text)), True
    seconds = data.get("duration")
    if seconds is None and isinstance(reported, dict) and reported.get("type") == "duration":
        seconds = reported.get("seconds")
    if type(seconds) is str:  # vLLM's verbose_json: "90.2"
        try:
            seconds = float(seconds)
        except ValueError:
            seconds = None
    if type(seconds) in (int, float) and 0 <= seconds < MAX_COUNT:
        return Usage(math.ceil(seconds)), False
    return Usage(upload.seconds() or 0), True


def cost(
    model: ModelInfo,
    input_units: int,
    output_units: int,
    *,
    cache_read: int = 0,
    cache_write: int = 0,
) -> Decimal:
    """What the request costs in the model's unit, capped at MAX_COST so that it fits the
    MONEY column.

    TOKEN: the input price per uncached input token (`input_units` less the
    `cache_read` and `cache_write` tokens among them), the cache-read and
    cache-write prices per token read from and written to the upstream's
    prompt cache (ModelInfo has them as the input price when none is set),
    and the output price per output token (reasoning tokens among them);
    IMAGE: output price per image returned; MINUTE: input price per minute of
    input audio, the units being seconds (90 s cost 1.5 times the price);
    REQUEST: the input price, once.

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
        # The parsers keep the cache counts within the input; a caller's may not be.
        uncached = max(input_units - cache_read - cache_write, 0)
        amount = (
            uncached * model.price_in
            + cache_read * model.price_cache_read
            + cache_write * model.price_cache_write
            + output_units * model.price_out
        )
    return amount if amount <= MAX_COST else MAX_COST

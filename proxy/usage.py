"""Usage and cost: from the upstream's `usage` when given, estimated otherwise."""

from decimal import Decimal

from proxy.catalog import ModelInfo

# Without the model's tokenizer (none is downloadable here), ~4 characters a
# token is the usual estimate for English text; rows using it are flagged.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN if text else 0


def from_upstream(usage) -> tuple[int, int] | None:
    """(input, output) tokens from an OpenAI `usage` object, or None if it has none."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    output = usage.get("completion_tokens")
    return usage["prompt_tokens"], output if isinstance(output, int) else 0


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


def cost(model: ModelInfo, input_units: int, output_units: int) -> Decimal:
    if model.billing_unit == "REQUEST":
        return model.price_in
    return input_units * model.price_in + output_units * model.price_out

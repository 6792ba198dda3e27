"""Rate-limit specs: `"60/m"`, `"1000/h"`, `"5000/d"`, several comma-separated."""

import re
from typing import NamedTuple

from django.core.exceptions import ValidationError

UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


class Rate(NamedTuple):
    """At most `limit` requests in any window of `seconds`."""

    limit: int
    seconds: int


def parse_spec(spec: str) -> tuple[Rate, ...]:
    """Parse a spec into rates; an empty spec means no limit. Raises ValueError."""
    rates = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        match = _RATE.match(part.lower())
        if not match or match[2] not in UNIT_SECONDS:
            raise ValueError(
                f'"{part}" is not a rate: write COUNT/UNIT with UNIT one of s, m, h, d '
                '(for example "60/m" or "60/m,1000/d")'
            )
        if int(match[1]) < 1:
            raise ValueError(f'"{part}" allows no request: the count must be at least 1')
        rates.append(Rate(int(match[1]), UNIT_SECONDS[match[2]]))
    return tuple(rates)


def validate_spec(spec: str) -> None:
    """Django validator for spec fields."""
    try:
        parse_spec(spec)
    except ValueError as exc:
        raise ValidationError(str(exc), code="invalid_rate_limit") from None

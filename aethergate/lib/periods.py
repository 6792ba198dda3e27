"""Budget periods: when the current one started and when the next starts (pure).

A period starts at midnight in the budget time zone (AETHERGATE_BUDGET_TIME_ZONE):
every day, every Monday, or on the 1st of every month; "none" is one period
that never ends. Times in and out are aware datetimes.
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

# The start of the one period a budget without a period has.
EVER = datetime(1970, 1, 1, tzinfo=UTC)


def bounds(period: str, now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime | None]:
    """(start, end) of the `period` ("none", "day", "week", "month") that holds `now`.

    Midnights are taken in `zone`, so a period is a calendar day, week or
    month there, whatever its length in hours (a day with a clock change
    lasts 23 or 25 hours). `end` is None for "none".
    """
    if period == "none":
        return EVER, None
    local = now.astimezone(zone)
    day = local.date()
    if period == "day":
        first, following = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return _midnight(first, zone), _midnight(following, zone)


def current(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """`bounds` in the configured budget zone (AETHERGATE_BUDGET_TIME_ZONE): the one way
    the proxy, the admin and the API find a budget's period."""
    return bounds(period, now, ZoneInfo(settings.AETHERGATE_BUDGET_TIME_ZONE))


def _midnight(day, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, in UTC (a midnight a clock change skips is
    the instant after the gap, as zoneinfo resolves it)."""
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    return local.astimezone(UTC)

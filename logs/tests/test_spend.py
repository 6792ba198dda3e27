"""What a budget has spent since its period began, from the rollups and the logs."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from aethergate.testing import make_key, make_user, request_record
from logs.models import RequestLog
from logs.services import budget_spent, prune_logs, spend_since, write_batch

pytestmark = pytest.mark.django_db

# 18:30 UTC: midnight in Asia/Kolkata, a period start that is not a whole hour.
START = datetime(2026, 11, 29, 18, 30, tzinfo=UTC)


def spend(key, *costs_at):
    write_batch(
        [
            request_record(key, request_id=f"r{i}", created_at=at, cost=Decimal(cost))
            for i, (cost, at) in enumerate(costs_at)
        ]
    )


def test_it_sums_whole_hours_from_the_rollups_and_the_first_part_hour_from_the_logs():
    alice = make_user("alice")
    key, _ = make_key(alice)
    other, _ = make_key(make_user("bob"))
    spend(
        key,
        ("1.00", START - timedelta(minutes=1)),  # before the period
        ("0.25", START),  # its first instant counts
        ("0.50", START + timedelta(minutes=20)),  # in the part hour before 19:00
        ("2.00", START + timedelta(hours=3)),
    )
    spend(other, ("9.00", START + timedelta(hours=1)))

    assert spend_since("api_key_id", [key.pk, other.pk], START) == {
        key.pk: Decimal("2.75"),
        other.pk: Decimal("9.00"),
    }
    assert spend_since("user_id", [alice.pk], START) == {alice.pk: Decimal("2.75")}


def test_spend_outlives_pruned_logs_for_whole_hours():
    key, _ = make_key(make_user("alice"))
    at = datetime(2026, 10, 1, 12, tzinfo=UTC)
    spend(key, ("3.00", at), ("4.00", at + timedelta(days=3)))
    prune_logs(older_than=timedelta(days=1), now=at + timedelta(days=40))

    assert not RequestLog.objects.exists()
    assert spend_since("api_key_id", [key.pk], datetime(2026, 10, 1, tzinfo=UTC)) == {
        key.pk: Decimal("7.00")
    }


def test_a_budget_period_is_read_in_the_budget_time_zone(settings):
    settings.AETHERGATE_BUDGET_TIME_ZONE = "Asia/Kolkata"
    key, _ = make_key(make_user("alice"))
    spend(key, ("1.00", START - timedelta(minutes=5)), ("0.40", START + timedelta(minutes=5)))

    start, end, spent = budget_spent("api_key_id", key.pk, "day", START + timedelta(hours=2))

    assert (start, end, spent) == (START, START + timedelta(days=1), Decimal("0.40"))

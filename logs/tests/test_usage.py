"""Usage rollups (kept by the writer, rebuilt from rows, kept past pruning) and usage reports."""

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.forms.models import model_to_dict
from django.utils import timezone

from aethergate.testing import make_key, make_user, request_record
from logs.models import DailyUsageRollup, RequestLog, UsageRollup
from logs.services import (
    UsageQuery,
    log_totals,
    prune_logs,
    rebuild_usage,
    usage_report,
    write_batch,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def keys():
    """alice's keys "laptop" and "ci", bob's key "phone"."""
    alice, bob = make_user("alice"), make_user("bob")
    return {
        "laptop": make_key(alice, name="laptop")[0],
        "ci": make_key(alice, name="ci")[0],
        "phone": make_key(bob, name="phone")[0],
    }


def at(minutes: float):
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def traffic(keys):
    """Eight requests over three hours of 2026-11-30 (10:00, 11:00, 13:00 UTC)."""
    laptop, ci, phone = keys["laptop"], keys["ci"], keys["phone"]
    write_batch(
        [
            request_record(laptop, created_at=at(5), input_units=100, output_units=10,
                           cost=Decimal("0.0100000001"), latency_ms=40, ttft_ms=20,
                           cache_read_units=60, cache_write_units=10, reasoning_units=4),
            request_record(laptop, created_at=at(50), input_units=200, output_units=20,
                           cost=Decimal("0.02"), latency_ms=120, ttft_ms=90),
            request_record(ci, created_at=at(70), input_units=300, output_units=30,
                           cost=Decimal("0.03"), latency_ms=450, model="qwen"),
            request_record(phone, created_at=at(75), input_units=1000, output_units=100,
                           cost=Decimal("0.5"), latency_ms=900, endpoint="cloud",
                           cache_read_units=800, reasoning_units=20),
            request_record(phone, created_at=at(80), outcome="upstream_error", status=502,
                           latency_ms=70000),
        ]
    )  # fmt: skip
    write_batch(
        [
            request_record(laptop, created_at=at(59), input_units=1, output_units=1,
                           cost=Decimal("0.001"), latency_ms=45),
            request_record(ci, created_at=at(185), outcome="rate_limited", status=429,
                           model="qwen"),
            request_record(phone, created_at=at(190), input_units=10, output_units=5,
                           cost=Decimal("0.004"), latency_ms=210, ttft_ms=150,
                           endpoint="cloud"),
        ]
    )  # fmt: skip
    return keys


def rollups() -> list[dict]:
    rows = UsageRollup.objects.order_by(*UsageRollup.DIMENSIONS)
    return [model_to_dict(row, exclude=["id"]) for row in rows]


def test_it_sums_each_hour_user_key_model_endpoint_and_outcome_into_one_rollup_row(traffic):
    laptop = traffic["laptop"]

    row = UsageRollup.objects.get(hour=T0, api_key_id=laptop.pk)

    assert (row.user_id, row.username, row.key_prefix) == (laptop.owner_id, "alice", laptop.prefix)
    assert (row.model, row.endpoint, row.outcome) == ("llama3", "local", "ok")
    assert (row.requests, row.input_units, row.output_units) == (3, 301, 31)
    assert (row.cache_read_units, row.cache_write_units, row.reasoning_units) == (60, 10, 4)
    assert (row.cost, row.cost_unknown_requests) == (Decimal("0.0310000001"), 0)
    assert (row.latency_count, row.latency_sum_ms) == (3, 205)
    assert (row.latency_le_50, row.latency_le_200) == (2, 1)
    assert (row.ttft_count, row.ttft_sum_ms, row.ttft_le_50, row.ttft_le_100) == (2, 110, 1, 1)
    assert UsageRollup.objects.count() == 6


def test_it_counts_a_latency_past_the_last_bound_in_the_last_bin(traffic):
    row = UsageRollup.objects.get(outcome="upstream_error")

    assert (row.latency_over_60000, row.latency_le_60000, row.latency_sum_ms) == (1, 0, 70000)


def test_a_rebuild_from_the_rows_gives_what_the_writer_kept(traffic):
    kept = rollups()
    UsageRollup.objects.all().delete()

    written = rebuild_usage()

    assert written == 6
    assert rollups() == kept


def test_a_rebuild_of_some_hours_leaves_the_others_and_pruned_hours_alone(traffic):
    kept = rollups()
    RequestLog.objects.filter(created_at__lt=at(60)).delete()  # 10:00's rows pruned
    UsageRollup.objects.filter(hour=T0 + timedelta(hours=3)).update(requests=99)

    written = rebuild_usage(since=at(61), until=at(190))  # widened to 11:00 … 14:00

    assert written == 5  # 11:00's 3 slots and 13:00's 2 (one set right again); 10:00 untouched
    assert rollups() == kept


def test_pruning_request_logs_keeps_the_spend_history(traffic):
    before = usage_report(UsageQuery(since=T0, until=at(240)))

    deleted = prune_logs(older_than=timedelta(days=1), now=at(60 * 24 * 30))

    assert deleted == 8 and not RequestLog.objects.exists()
    after = usage_report(UsageQuery(since=T0, until=at(240)))
    assert after == before
    assert after["totals"]["cost"] == Decimal("0.5650000001")


def test_a_row_whose_user_and_key_went_is_rolled_up_under_no_one(keys):
    write_batch([request_record(None, username="gone", key_prefix="ag-Gone", created_at=T0)])

    row = UsageRollup.objects.get()
    assert (row.user_id, row.api_key_id, row.username, row.requests) == (0, 0, "gone", 1)


def test_the_report_has_the_exact_totals_breakdowns_and_timings(traffic):
    laptop, ci, phone = traffic["laptop"], traffic["ci"], traffic["phone"]

    report = usage_report(UsageQuery(since=at(1), until=at(181), bucket="hour"))

    assert (report["since"], report["until"]) == (T0, T0 + timedelta(hours=4))
    assert report["totals"] == {
        "requests": 8,
        "input_units": 1611,
        "output_units": 166,
        "cost": Decimal("0.5650000001"),
        "errors": 2,
        "error_rate": 0.25,
        "cache_read_units": 860,
        "cache_write_units": 10,
        "reasoning_units": 24,
        "cost_unknown_requests": 0,
    }
    assert [(s["start"], s["requests"], s["cost"]) for s in report["series"]] == [
        (T0, 3, Decimal("0.0310000001")),
        (T0 + timedelta(hours=1), 3, Decimal("0.53")),
        (T0 + timedelta(hours=2), 0, Decimal(0)),
        (T0 + timedelta(hours=3), 2, Decimal("0.004")),
    ]
    assert [(g["model"], g["requests"], g["cost"], g["errors"]) for g in report["by_model"]] == [
        ("llama3", 6, Decimal("0.5350000001"), 1),
        ("qwen", 2, Decimal("0.03"), 1),
    ]
    assert [(g["endpoint"], g["requests"]) for g in report["by_endpoint"]] == [
        ("cloud", 2),
        ("local", 6),
    ]
    assert [(g["username"], g["cost"]) for g in report["by_user"]] == [
        ("bob", Decimal("0.504")),
        ("alice", Decimal("0.0610000001")),
    ]
    assert report["top_spenders"] == report["by_user"]
    by_key = [
        (g["api_key_id"], g["name"], g["key_prefix"], g["input_units"]) for g in report["by_key"]
    ]
    assert by_key == [
        (phone.pk, "phone", phone.prefix, 1010),
        (laptop.pk, "laptop", laptop.prefix, 301),
        (ci.pk, "ci", ci.prefix, 300),
    ]
    assert report["by_outcome"] == [
        {"outcome": "ok", "requests": 6, "share": 0.75},
        {"outcome": "rate_limited", "requests": 1, "share": 0.125},
        {"outcome": "upstream_error", "requests": 1, "share": 0.125},
    ]
    # Latencies 40 45 120 210 450 900 70000 ms: bins ≤50 ≤50 ≤200 ≤300 ≤500 ≤1000 >60000.
    latency = report["latency"]
    assert (latency["count"], latency["mean_ms"]) == (7, 10252)
    assert (latency["p50_ms"], latency["p90_ms"], latency["p99_ms"]) == (300, None, None)
    assert latency["histogram"][0] == {"le_ms": 50, "count": 2}
    assert latency["histogram"][-1] == {"le_ms": None, "count": 1}
    assert (report["ttft"]["count"], report["ttft"]["p50_ms"], report["ttft"]["p95_ms"]) == (
        3, 100, 200,
    )  # fmt: skip


def test_requests_with_their_cost_unknown_are_counted_apart(keys):
    laptop = keys["laptop"]
    write_batch(
        [
            request_record(laptop, created_at=at(5), model="free-by-accident", input_units=9,
                           cost_unknown=True),
            request_record(laptop, created_at=at(6), model="free-by-accident", cost_unknown=True,
                           outcome="upstream_error", status=502),
            request_record(laptop, created_at=at(7), input_units=9, cost=Decimal("0.1")),
        ]
    )  # fmt: skip

    report = usage_report(UsageQuery(since=T0, until=at(60)))

    assert (report["totals"]["cost_unknown_requests"], report["totals"]["cost"]) == (
        2,
        Decimal("0.1"),
    )
    assert [(g["model"], g["cost_unknown_requests"]) for g in report["by_model"]] == [
        ("llama3", 0),
        ("free-by-accident", 2),
    ]
    assert log_totals(RequestLog.objects.all())["cost_unknown_requests"] == 2


def test_the_report_keeps_to_its_filters(traffic):
    phone = traffic["phone"]
    since, until = T0, T0 + timedelta(days=1)

    by_key = usage_report(UsageQuery(since=since, until=until, api_key_id=phone.pk))
    by_user = usage_report(UsageQuery(since=since, until=until, user_id=traffic["ci"].owner_id))
    by_model = usage_report(UsageQuery(since=since, until=until, model="qwen", endpoint="local"))
    later = usage_report(UsageQuery(since=at(120), until=until))

    assert by_key["totals"]["requests"] == 3 and by_key["totals"]["cost"] == Decimal("0.504")
    assert by_user["totals"]["requests"] == 5
    assert by_model["totals"]["requests"] == 2 and by_model["totals"]["errors"] == 1
    assert later["totals"]["requests"] == 2


def test_day_and_week_buckets_start_at_local_midnight(traffic, settings):
    settings.TIME_ZONE = "America/New_York"  # 10:00 UTC on 2026-11-30 is 05:00 there
    zone = timezone.get_current_timezone()

    with timezone.override(zone):
        days = usage_report(
            UsageQuery(since=T0 - timedelta(days=1), until=T0 + timedelta(days=1), bucket="day")
        )
        weeks = usage_report(UsageQuery(since=T0, until=T0 + timedelta(days=1), bucket="week"))

    local = datetime(2026, 11, 30, tzinfo=zone)
    assert [(s["start"], s["requests"]) for s in days["series"]] == [
        (local - timedelta(days=1), 0),
        (local, 8),
        (local + timedelta(days=1), 0),
    ]
    assert [(s["start"], s["requests"]) for s in weeks["series"]] == [(local, 8)]  # a Monday


def test_an_empty_range_reports_zeros():
    report = usage_report(UsageQuery(since=T0, until=at(120), bucket="hour"))

    assert report["totals"]["requests"] == 0 and report["totals"]["error_rate"] == 0.0
    assert [s["requests"] for s in report["series"]] == [0, 0]
    assert report["latency"]["p50_ms"] is None and report["by_user"] == []


def test_a_bad_question_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="bucket must be one of hour, day, week"):
        UsageQuery(since=T0, until=at(60), bucket="month")
    with pytest.raises(ValueError, match="until must be after since"):
        UsageQuery(since=T0, until=T0)


def test_the_report_costs_the_same_queries_for_one_row_or_many(
    keys, django_assert_num_queries, django_assert_max_num_queries
):
    query = UsageQuery(since=T0, until=T0 + timedelta(days=3), bucket="day")
    write_batch([request_record(keys["laptop"], created_at=T0)])
    with django_assert_max_num_queries(15) as few:  # 2 parts: daily rows, and the hours around
        usage_report(query)

    write_batch(
        [
            request_record(key, created_at=at(n * 7), model=f"m{n % 5}", endpoint=f"e{n % 3}")
            for n in range(200)
            for key in keys.values()
        ]
    )
    with django_assert_num_queries(len(few.captured_queries)):
        usage_report(query)


def test_daily_rollups_are_the_sums_of_their_hours_and_rebuild_alike(traffic):
    def days():
        rows = DailyUsageRollup.objects.order_by(*DailyUsageRollup.DIMENSIONS)
        return [model_to_dict(row, exclude=["id"]) for row in rows]

    day = DailyUsageRollup.objects.get(api_key_id=traffic["laptop"].pk, model="llama3")
    kept = days()
    DailyUsageRollup.objects.all().delete()
    rebuild_usage(since=at(30))

    assert (day.hour, day.requests, day.cost, day.latency_le_50) == (
        datetime(2026, 11, 30, tzinfo=UTC), 3, Decimal("0.0310000001"), 2,
    )  # fmt: skip
    assert DailyUsageRollup.objects.count() == 5 and days() == kept


def test_a_range_of_whole_days_reads_daily_rows_and_the_hours_around_them(traffic):
    write_batch([request_record(traffic["laptop"], created_at=T0 + timedelta(days=2, hours=5),
                                cost=Decimal("2"))])  # fmt: skip
    query = UsageQuery(since=T0 - timedelta(hours=3), until=T0 + timedelta(days=2, hours=6))

    report = usage_report(query)

    assert [part.model for part in query.rollups()] == [DailyUsageRollup, UsageRollup]
    assert report["totals"]["requests"] == 9
    assert report["totals"]["cost"] == Decimal("2.5650000001")
    assert [(s["start"].day, s["requests"]) for s in report["series"]] == [
        (30, 8), (1, 0), (2, 1),
    ]  # fmt: skip
    assert report["latency"]["count"] == 7


def test_the_rebuild_command_rebuilds_and_refuses_a_time_without_a_zone(traffic):
    UsageRollup.objects.all().delete()
    out = io.StringIO()

    call_command("rebuild_usage", "--since", "2026-11-30T00:00Z", stdout=out)

    assert "Rebuilt 6 usage rollup rows." in out.getvalue()
    assert UsageRollup.objects.count() == 6
    with pytest.raises(CommandError, match="not an ISO 8601 time with a zone"):
        call_command("rebuild_usage", "--since", "2026-11-30")

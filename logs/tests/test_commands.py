"""prune_logs: deletes request logs past the retention, in batches."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from logs.models import RequestLog
from logs.services import prune_logs

pytestmark = pytest.mark.django_db


def log(age: timedelta, request_id: str) -> RequestLog:
    return RequestLog.objects.create(
        created_at=timezone.now() - age,
        request_id=request_id,
        username="alice",
        key_prefix="ag-AbCdEfGh",
        model="llama3",
        status=200,
        outcome="ok",
    )


@pytest.fixture
def logs():
    """Five logs 40-44 days old and two recent ones."""
    for n in range(5):
        log(timedelta(days=40 + n), f"old-{n}")
    log(timedelta(days=29), "recent-1")
    log(timedelta(hours=1), "recent-2")


def remaining() -> set[str]:
    return set(RequestLog.objects.values_list("request_id", flat=True))


def deletes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].upper().startswith("DELETE")]


def test_it_deletes_logs_older_than_the_given_days_and_says_how_many(logs, capsys):
    call_command("prune_logs", "--older-than", "30")

    assert remaining() == {"recent-1", "recent-2"}
    assert "Deleted 5 request logs older than 30 days." in capsys.readouterr().out


def test_it_deletes_in_batches_of_the_given_size(logs, capsys):
    with CaptureQueriesContext(connection) as queries:
        call_command("prune_logs", "--older-than=30", "--batch-size=2")

    assert len(deletes(queries)) == 3  # 2 + 2 + 1
    assert remaining() == {"recent-1", "recent-2"}
    assert "Deleted 5 request logs" in capsys.readouterr().out


def test_a_dry_run_counts_and_deletes_nothing(logs, capsys):
    with CaptureQueriesContext(connection) as queries:
        call_command("prune_logs", "--older-than=30", "--dry-run")

    assert deletes(queries) == []
    assert len(remaining()) == 7
    assert "Would delete 5 request logs older than 30 days (dry run)." in capsys.readouterr().out


def test_it_reports_progress_per_batch_when_verbose(logs, capsys):
    call_command("prune_logs", "--older-than=30", "--batch-size=2", "--verbosity=2")

    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if "so far" in line] == ["2", "4", "5"]


def test_it_deletes_nothing_when_nothing_is_that_old(logs, capsys):
    call_command("prune_logs", "--older-than=365")

    assert len(remaining()) == 7
    assert "Deleted 0 request logs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than=0"], "--older-than must be at least 1 day."),
        (["--older-than=-3"], "--older-than must be at least 1 day."),
        (["--older-than=30", "--batch-size=0"], "--batch-size must be at least 1."),
    ],
)
def test_it_refuses_a_retention_under_a_day_or_an_empty_batch(logs, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("prune_logs", *args)

    assert len(remaining()) == 7


def test_the_service_measures_age_from_the_given_now(logs):
    later = timezone.now() + timedelta(days=2)

    assert prune_logs(older_than=timedelta(days=30), now=later) == 6
    assert remaining() == {"recent-2"}

"""Usage at scale: the log writer's rows/s, and the dashboard and log-list totals on 1M+ rows.

Run from the project root (each mode makes a fresh database: a SQLite file under
bench-results/, or the PostgreSQL database aethergate_bench_usage, dropped and recreated):

    .venv/bin/python bench/usage_rows.py --db sqlite writer       # log writer rows/s
    .venv/bin/python bench/usage_rows.py --db sqlite --rows 1000000 scale
    .venv/bin/python bench/usage_rows.py --db postgres --rows 1000000 scale

`writer` stores batches of records through `logs.services.write_batch` (what the log
writer calls; rows, charges, last use and usage rollups in one transaction) and reports
rows/s. `scale` generates `--rows` request logs spread over `--days` days (bulk inserts,
as the writer makes them), builds their rollups with `rebuild_usage`, then times the
dashboard's report (`logs.services.usage_report`) and the log list's totals over
several ranges and filters (median of `--repeat` runs each). `time` repeats those
timings on the rows a previous `scale` left.
"""

# ruff: noqa: S603, S311 -- a harness: fixed tool argument lists; random data, not secrets.

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_URL = "postgres://postgres@127.0.0.1:5432/aethergate_bench_usage"
MODELS = ("llama3", "qwen2.5", "mistral", "gpt-4o-mini", "embed-small")
ENDPOINTS = ("local", "cloud")
# Mostly ok, as a real gateway sees it.
OUTCOMES = (("ok", 0.93), ("upstream_error", 0.03), ("rate_limited", 0.03), ("gateway_error", 0.01))


def setup(db: str, *, fresh: bool = True, name: str = "usage") -> None:
    """The database `name` for this run: made afresh and migrated, or (`fresh` false) as left."""
    sys.path.insert(0, str(ROOT))
    pg_url = PG_URL if name == "usage" else f"{PG_URL}_{name}"  # ..._writer for `writer`
    if db == "postgres" and not fresh:
        url = pg_url
    elif db == "postgres":
        for tool in ("dropdb", "createdb"):
            args = ["-h", "127.0.0.1", "-U", "postgres"]
            subprocess.run(
                [
                    tool,
                    *args,
                    *(["--if-exists"] if tool == "dropdb" else []),
                    pg_url.rsplit("/")[-1],
                ],
                check=True,
            )
        url = pg_url
    else:
        path = ROOT / "bench-results" / f"{name}.sqlite3"
        path.parent.mkdir(exist_ok=True)
        for suffix in ("", "-wal", "-shm") if fresh else ():
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="aethergate.settings",
        AETHERGATE_ENV_FILE="",
        DEBUG="false",
        SECRET_KEY="bench-only-secret-key-not-for-any-deployment-0123456789",  # noqa: S106
        DATABASE_URL=url,
        REDIS_URL="",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def population(users: int, keys_per_user: int):
    """`users` consumers with `keys_per_user` keys each: [(user, key)]."""
    from accounts.models import User
    from keys import services

    pairs = []
    for n in range(users):
        user = User.objects.create_user(f"user{n:03}", balance=Decimal(1000))
        for k in range(keys_per_user):
            key, _ = services.create_key(owner=user, name=f"key{k}")
            pairs.append((user, key))
    return pairs


def records(pairs, count: int, start: datetime, seconds: float, rng: random.Random):
    """`count` request records, times spread evenly over `seconds` from `start`."""
    from logs.records import RequestRecord

    outcomes, weights = zip(*OUTCOMES, strict=True)
    # As apps use keys: each key mostly one model (its endpoint fixed by the model).
    favourite = {key.pk: rng.choice(MODELS) for _, key in pairs}
    step = seconds / count
    for i in range(count):
        user, key = pairs[rng.randrange(len(pairs))]
        model = favourite[key.pk] if rng.random() < 0.8 else rng.choice(MODELS)
        outcome = rng.choices(outcomes, weights)[0]
        ok = outcome == "ok"
        latency = int(rng.lognormvariate(6, 1)) if outcome != "rate_limited" else 1
        stream = ok and rng.random() < 0.5
        yield RequestRecord(
            created_at=start + timedelta(seconds=i * step),
            request_id=f"req-{i:08}",
            user_id=user.pk,
            username=user.username,
            api_key_id=key.pk,
            key_prefix=key.prefix,
            model=model,
            endpoint=ENDPOINTS[MODELS.index(model) % len(ENDPOINTS)],
            path="/v1/chat/completions",
            status=200 if ok else 502,
            outcome=outcome,
            stream=stream,
            latency_ms=latency,
            ttft_ms=latency // 3 if stream else None,
            input_units=rng.randrange(10, 2000) if ok else 0,
            cache_read_units=0,
            cache_write_units=0,
            output_units=rng.randrange(1, 800) if ok else 0,
            reasoning_units=0,
            usage_estimated=False,
            cost_unknown=False,
            cost=Decimal(rng.randrange(1, 50_000)) / 10**8 if ok else Decimal(0),
            prompt_text="",
            completion_text="",
            error="" if ok else "upstream said no",
            attempts=[],
        )


def bench_writer(args) -> None:
    from logs import services
    from logs.services import write_batch

    if args.without_rollups:
        services._add_to_rollups = lambda rows: None
    rng = random.Random(7)
    pairs = population(20, 2)
    now = datetime.now(UTC)
    batches = []
    it = records(pairs, args.batches * args.batch_size, now - timedelta(hours=2), 7200, rng)
    for _ in range(args.batches):
        batches.append([next(it) for _ in range(args.batch_size)])
    write_batch(batches.pop(0))  # warm-up: prepared statements, first-use caches
    started = time.perf_counter()
    for batch in batches:
        write_batch(batch)
    elapsed = time.perf_counter() - started
    rows = len(batches) * args.batch_size
    per_batch = elapsed / len(batches) * 1000
    print(
        f"writer: {rows} rows in {len(batches)} batches of {args.batch_size}: "
        f"{rows / elapsed:,.0f} rows/s ({per_batch:.1f} ms per batch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", type=int, default=41)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--without-rollups",
        action="store_true",
        help="writer: skip the rollup upsert (the writer's cost before rollups, for comparison)",
    )
    parser.add_argument("mode", choices=("writer", "scale", "time"))
    args = parser.parse_args()
    # The writer's runs get a database of their own, so the generated rows stay for `time`.
    setup(args.db, fresh=args.mode != "time", name="writer" if args.mode == "writer" else "usage")
    if args.mode == "writer":
        bench_writer(args)
    elif args.mode == "scale":
        bench_scale(args)
    else:
        bench_timings(args)


def timed(what: str, repeat: int, call) -> float:
    """Run `call` `repeat` times; print and return the median in ms."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        runs.append((time.perf_counter() - started) * 1000)
    median = statistics.median(runs)
    print(f"  {what:<48} {median:8.1f} ms  (min {min(runs):.1f}, max {max(runs):.1f})")
    return median


def bench_scale(args) -> None:
    from django.db import connection, transaction

    from logs.models import RequestLog, UsageRollup
    from logs.services import _insert, rebuild_usage

    rng = random.Random(11)
    pairs = population(50, 2)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = now - timedelta(days=args.days)
    started = time.perf_counter()
    chunk = []
    for record in records(pairs, args.rows, start, args.days * 86400 - 1, rng):
        chunk.append(record)
        if len(chunk) == 20_000:
            with transaction.atomic():
                _insert(chunk)
            chunk = []
    with transaction.atomic():
        _insert(chunk)
    print(f"generated {args.rows:,} request logs in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    written = rebuild_usage()
    print(f"rebuilt {written:,} rollup rows in {time.perf_counter() - started:.0f} s (backfill)")
    if RequestLog.objects.count() != args.rows or UsageRollup.objects.count() != written:
        raise SystemExit("the generated rows or their rollups are not all there")
    # Fresh statistics, as a live table has them: without, PostgreSQL's planner took an
    # empty time range of a million fresh rows for a large one and read the whole table.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    bench_timings(args)


def bench_timings(args) -> None:
    """Time the dashboard's report and the log list's totals on the rows stored."""
    from accounts.models import User
    from logs.models import RequestLog
    from logs.services import UsageQuery, log_totals, usage_report

    user = User.objects.get(username="user000")
    key = user.api_keys.order_by("pk").first()
    now = RequestLog.objects.order_by("-created_at").values_list("created_at", flat=True)[0]
    now = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    day, week, month = (now - timedelta(days=d) for d in (1, 7, args.days))
    print(f"dashboard report (usage_report), median of {args.repeat}:")
    for what, query in (
        ("last 24 hours, hourly", UsageQuery(since=day, until=now, bucket="hour")),
        ("last 7 days, daily", UsageQuery(since=week, until=now, bucket="day")),
        (f"last {args.days} days, daily", UsageQuery(since=month, until=now, bucket="day")),
        (f"last {args.days} days, weekly", UsageQuery(since=month, until=now, bucket="week")),
        (f"last {args.days} days, one user", UsageQuery(since=month, until=now, user_id=user.pk)),
        (f"last {args.days} days, one key", UsageQuery(since=month, until=now, api_key_id=key.pk)),
        (f"last {args.days} days, one model", UsageQuery(since=month, until=now, model="llama3")),
    ):
        timed(what, args.repeat, lambda query=query: usage_report(query, limit=10))
    print(f"log-list totals (log_totals), median of {args.repeat}:")
    logs = RequestLog.objects.all()
    for what, selected, kept in (
        ("all rows", logs, {}),
        ("last 24 hours", logs.filter(created_at__gte=day), {"since": day}),
        (f"last {args.days} days, one user", logs.filter(user=user, created_at__gte=month),
         {"since": month, "user_id": user.pk}),
        ("last 7 days, one model", logs.filter(model="llama3", created_at__gte=week),
         {"since": week, "model": "llama3"}),
    ):  # fmt: skip
        timed(f"{what} (rows)", args.repeat, lambda selected=selected: log_totals(selected))
        timed(
            f"{what} (rollups)",
            args.repeat,
            lambda selected=selected, kept=kept: log_totals(selected, kept=kept),
        )
        if log_totals(selected) != log_totals(selected, kept=kept):
            raise SystemExit(f"{what}: the totals from rollups differ from the rows'")


if __name__ == "__main__":
    main()

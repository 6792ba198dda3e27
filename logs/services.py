"""Request logs: settling rows, charges, key last-use and usage rollups in one transaction;
pruning old rows; rebuilding rollups."""

import json
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter

from django.db import IntegrityError, connections, models, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from aethergate.lib import audit, periods
from keys.models import APIKey
from logs.models import (
    LATENCY_BOUNDS_MS,
    AuditEntry,
    DailyUsageRollup,
    Outcome,
    RequestLog,
    UsageRollup,
    UsageSlot,
    histogram_fields,
)
from logs.records import RequestRecord

LAST_USED_RESOLUTION = timedelta(minutes=1)
PRUNE_BATCH_SIZE = 5000


def write_batch(records: list[RequestRecord]) -> dict[int, Decimal]:
    """Store `records` and charge their cost; return the charges per user.

    All or nothing. A user or key deleted since the request keeps its log row
    (link cleared, snapshot names kept) instead of failing the batch.
    """
    try:
        return _write(records)
    except IntegrityError:
        # Rare: a user or key went between the request and now. Checking every
        # batch for that cost two queries each time; checking after a refusal,
        # nothing.
        user_ids = {r.user_id for r in records if r.user_id}
        key_ids = {r.api_key_id for r in records if r.api_key_id}
        users = set(User.objects.filter(pk__in=user_ids).values_list("pk", flat=True))
        keys = set(APIKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
        return _write(records, users, keys)


def is_record_fault(exc: BaseException) -> bool:
    """Whether a failed `write_batch` was refused for what some record holds.

    True for values the driver cannot convert (an int past 64 bits is an
    OverflowError from sqlite3 before any SQL runs; a lone surrogate is a
    UnicodeEncodeError) and for DataError and IntegrityError (out of range,
    too long, NUL in text, a CHECK or NOT NULL constraint): the same records
    would fail again, so the batch is split to find them.

    False for the database's own state: OperationalError and InterfaceError
    (connection refused or lost, locked, timed out, shutting down),
    ProgrammingError, InternalError and NotSupportedError (a table or column
    missing during a deploy, an aborted transaction), any other DatabaseError,
    and OS-level errors. Those fail every record alike: splitting would only
    multiply the attempts, and the whole batch can succeed later.

    Classes are matched by their PEP 249 names, which Django's wrappers and
    the drivers share: COPY on PostgreSQL runs on psycopg's own cursor, whose
    errors Django does not wrap, and its classes must be told apart even
    when the driver in use is another.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"DataError", "IntegrityError"}:
        return True
    state = names & {"DatabaseError", "InterfaceError"} or isinstance(exc, (OSError, MemoryError))
    return not state


# When this process last stored each key's last use: the column is written at
# most once a minute, so most batches need no UPDATE for it at all.
_last_used_stored: dict[int, datetime] = {}


def _write(records, users=None, keys=None) -> dict[int, Decimal]:
    charges: dict[int, Decimal] = defaultdict(Decimal)
    last_used = {}
    rows = []
    for row in records:
        if users is not None and row.user_id not in users:
            row = replace(row, user_id=None)
        if keys is not None and row.api_key_id not in keys:
            row = replace(row, api_key_id=None)
        if row.user_id and row.cost:
            charges[row.user_id] += row.cost
        if row.api_key_id:
            used = row.created_at
            last_used[row.api_key_id] = max(used, last_used.get(row.api_key_id, used))
        rows.append(row)
    stale = {
        key_id: used
        for key_id, used in last_used.items()
        if key_id not in _last_used_stored
        or used - _last_used_stored[key_id] >= LAST_USED_RESOLUTION
    }
    with transaction.atomic():
        _insert(rows)
        _add_to_rollups(rows)
        for user_id, cost in charges.items():
            # One atomic UPDATE per user: concurrent batches and admin edits
            # cannot lose a charge. Users without a balance are not debited.
            # Unannounced: every catalog counts these charges itself.
            User.objects.filter(pk=user_id, balance__isnull=False).update_unannounced(
                balance=F("balance") - cost
            )
        for key_id, used in stale.items():
            APIKey.objects.filter(pk=key_id).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=used - LAST_USED_RESOLUTION)
            ).update_unannounced(last_used_at=used)
    _last_used_stored.update(stale)
    return dict(charges)


def _insert(rows: list[RequestRecord]) -> None:
    """What bulk_create does for these rows, without building model instances.

    Measured under load, bulk_create (its SQL compiler, then Model.__init__
    and get_db_prep_save per value) was most of the log writer's CPU. Strings,
    numbers, booleans and ids go to the driver as they are, as Django would
    pass them; dates, decimals and JSON are adapted as Django adapts them.
    """
    conn = connections[RequestLog.objects.db]
    if conn.alias not in _statements:
        _statements[conn.alias] = _insert_statement(conn)
    sql, values, adapters = _statements[conn.alias]
    params = [[adapt(v) for adapt, v in zip(adapters, values(row), strict=True)] for row in rows]
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            # COPY: rows are streamed and formatted in C, several times
            # cheaper per row than executemany's parameter binding.
            with cursor.cursor.copy(sql) as copy:
                for values in params:
                    copy.write_row(values)
        else:
            cursor.executemany(sql, params)


# Per database alias: built once, as profiles of small batches showed it costing.
_statements: dict[str, tuple[str, Callable, list]] = {}


def _insert_statement(conn) -> tuple[str, Callable, list]:
    """The INSERT, the record's values in column order, and each column's adapter."""
    fields = [f for f in RequestLog._meta.concrete_fields if not f.primary_key]
    quote = conn.ops.quote_name
    # Names come from the model's metadata, quoted; values are bound parameters.
    table, names = quote(RequestLog._meta.db_table), ", ".join(quote(f.column) for f in fields)
    if conn.vendor == "postgresql":
        sql = f"COPY {table} ({names}) FROM STDIN"
    else:
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(fields))})"  # noqa: S608
    return sql, attrgetter(*(f.attname for f in fields)), [_adapter(f, conn) for f in fields]


def _adapter(field, conn) -> Callable:
    if isinstance(field, (models.CharField, models.TextField, models.IntegerField,
                          models.BooleanField, models.ForeignKey)):  # fmt: skip
        return _same
    if isinstance(field, models.DateTimeField):
        return conn.ops.adapt_datetimefield_value
    return lambda value: field.get_db_prep_save(value, conn)


def _same(value):
    return value


# The rollup columns the writer adds to, after the dimensions and the two snapshots.
ROLLUP_SUMS = (
    "requests",
    "input_units",
    "output_units",
    "cost",
    "latency_count",
    "latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    *histogram_fields("latency"),
    *histogram_fields("ttft"),
    "cache_read_units",
    "cache_write_units",
    "reasoning_units",
    "cost_unknown_requests",
)
_BINS = len(LATENCY_BOUNDS_MS) + 1
_LATENCY_AT, _TTFT_AT = 8, 8 + _BINS  # where each histogram starts in ROLLUP_SUMS
_COMPONENTS_AT = 2 + 8 + 2 * _BINS  # where the usage components start in a slot's sums


def _add_to_rollups(rows) -> None:
    """Add `rows` to their hours' UsageRollup rows: one upsert per slot, no read.

    The rows are summed here first, so a batch costs one statement per
    distinct (hour, user, key, model, endpoint, outcome) on SQLite, one in
    all on PostgreSQL; INSERT … ON CONFLICT DO UPDATE adds to what is stored
    atomically, so concurrent writers (several gateway processes) cannot
    lose a count.
    """
    slots: dict[tuple, list] = {}
    _sum_into(slots, rows)
    _upsert(slots, UsageRollup)
    _upsert(_by_day(slots), DailyUsageRollup)


def _by_day(slots: dict[tuple, list]) -> dict[tuple, list]:
    """Hourly `slots` summed into their UTC days (the later hour's names kept)."""
    days: dict[tuple, list] = {}
    for dims, sums in sorted(slots.items()):
        day = (dims[0].replace(hour=0), *dims[1:])
        if day in days:
            total = days[day]
            total[0], total[1] = sums[0], sums[1]
            for i in range(2, len(sums)):
                total[i] += sums[i]
        else:
            days[day] = list(sums)
    return days


def _sum_into(slots: dict[tuple, list], rows) -> None:
    """Add `rows` (RequestRecords, or anything with their attributes) to `slots`:
    dimensions → [username, key_prefix, *ROLLUP_SUMS]."""
    for row in rows:
        dims = (
            _hour(row.created_at),
            row.user_id or 0,
            row.api_key_id or 0,
            row.model,
            row.endpoint,
            row.outcome,
        )
        sums = slots.get(dims)
        if sums is None:
            sums = slots[dims] = [row.username, row.key_prefix, *[0] * len(ROLLUP_SUMS)]
            sums[5] = Decimal(0)
        else:  # the newest row's names: a renamed user reads as now
            sums[0], sums[1] = row.username, row.key_prefix
        sums[2] += 1
        sums[3] += row.input_units
        sums[4] += row.output_units
        sums[5] += row.cost
        if row.latency_ms is not None:
            sums[6] += 1
            sums[7] += row.latency_ms
            sums[2 + _LATENCY_AT + bisect_left(LATENCY_BOUNDS_MS, row.latency_ms)] += 1
        if row.ttft_ms is not None:
            sums[8] += 1
            sums[9] += row.ttft_ms
            sums[2 + _TTFT_AT + bisect_left(LATENCY_BOUNDS_MS, row.ttft_ms)] += 1
        sums[_COMPONENTS_AT] += row.cache_read_units
        sums[_COMPONENTS_AT + 1] += row.cache_write_units
        sums[_COMPONENTS_AT + 2] += row.reasoning_units
        sums[_COMPONENTS_AT + 3] += row.cost_unknown


def _upsert(slots: dict[tuple, list], table: type[UsageSlot]) -> None:
    """Add `slots` to the rollup `table` (one statement on PostgreSQL)."""
    if not slots:
        return
    conn = connections[table.objects.db]
    if (conn.alias, table) not in _upserts:
        _upserts[conn.alias, table] = _upsert_statement(conn, table)
    insert, values, update, adapt_hour = _upserts[conn.alias, table]
    # In the unique index's order, so that concurrent writers lock slots in the
    # same order and cannot deadlock each other.
    params = [(adapt_hour(dims[0]), *dims[1:], *sums) for dims, sums in sorted(slots.items())]
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            # One statement, the slots as one JSON parameter unpacked by the
            # server: executemany paid a round trip per slot, a VALUES list of
            # thousands of placeholders took longer to parse than the upsert
            # to run, and array parameters were quoted element by element in
            # Python. json.dumps is C; decimals and times go as their text.
            slots_json = json.dumps([dict(zip(_COLUMNS, row, strict=True)) for row in params],
                                    default=str)  # fmt: skip
            cursor.execute(f"{insert} {values} {update}", [slots_json])
        else:  # SQLite: in-process, so executemany costs no round trips
            cursor.executemany(f"{insert} VALUES {values} {update}", params)


_upserts: dict[tuple, tuple[str, str, str, Callable]] = {}
_COLUMNS = (*UsageSlot.DIMENSIONS, "username", "key_prefix", *ROLLUP_SUMS)


def _upsert_statement(conn, rollup: type[UsageSlot]) -> tuple[str, str, str, Callable]:
    """The upsert into `rollup`, in parts: INSERT INTO …; the values (on PostgreSQL a
    SELECT from one JSON parameter, else one row's placeholders); ON CONFLICT …; the
    adapter of the slot's time.

    SQLite and PostgreSQL share the ON CONFLICT … DO UPDATE syntax.
    """
    quote = conn.ops.quote_name
    table = quote(rollup._meta.db_table)
    dims = [quote(name) for name in UsageSlot.DIMENSIONS]
    names = [quote("username"), quote("key_prefix")]
    sums = [quote(name) for name in ROLLUP_SUMS]
    fields = [rollup._meta.get_field(name) for name in _COLUMNS]
    updates = [f"{name} = excluded.{name}" for name in names]
    updates += [f"{name} = {table}.{name} + excluded.{name}" for name in sums]
    # Names and types come from the model's metadata; values are bound parameters.
    insert = f"INSERT INTO {table} ({', '.join([*dims, *names, *sums])})"
    if conn.vendor == "postgresql":
        # Each slot a JSON object, typed by the table's own row type.
        values = f"SELECT {', '.join([*dims, *names, *sums])} FROM json_populate_recordset(NULL::{table}, %s::json)"  # noqa: E501, S608
    else:
        values = f"({', '.join(['%s'] * len(fields))})"
    update = f"ON CONFLICT ({', '.join(dims)}) DO UPDATE SET {', '.join(updates)}"
    return insert, values, update, conn.ops.adapt_datetimefield_value


def rebuild_usage(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    log_model=None,
) -> int:
    """Recompute the rollups of the days from `since` to `until` (all when None) from the rows.

    Both ends are taken to whole UTC days (`since` down, `until` up), so that
    each daily rollup is rewritten whole. Only the hours that still have
    request logs are rebuilt: rollups of pruned hours are history and stay,
    and each day's DailyUsageRollup rows are made again from its hourly ones.
    The rows are summed by the writer's own code (`_sum_into`), read in time
    order and flushed a day at a time once enough slots are held, so memory
    stays bounded. Returns the hourly rollup rows written. Run it with no log
    writer writing into those days (the migration that adds rollups, a
    backfill, the benchmark). `log_model` is for the migration's historical
    model.
    """
    logs = (log_model or RequestLog).objects.order_by("created_at")
    if since is not None:
        logs = logs.filter(created_at__gte=_day(since))
    if until is not None:
        end = _day(until)
        logs = logs.filter(created_at__lt=end if end == until else end + timedelta(days=1))
    written = 0
    slots: dict[tuple, list] = {}
    day = None

    def flush():
        nonlocal written
        hours = {dims[0] for dims in slots}
        UsageRollup.objects.filter(hour__in=hours).delete()
        _upsert(slots, UsageRollup)
        days = {hour.replace(hour=0) for hour in hours}
        DailyUsageRollup.objects.filter(hour__in=days).delete()
        for start in days:
            kept = UsageRollup.objects.filter(hour__gte=start, hour__lt=start + timedelta(days=1))
            _upsert(_by_day(_as_slots(kept)), DailyUsageRollup)
        written += len(slots)
        slots.clear()

    with transaction.atomic():
        for row in logs.values_list(*_ROW_FIELDS, named=True).iterator(chunk_size=5000):
            row_day = _day(row.created_at)
            # Flushed only between days, so that each day is deleted and rewritten whole.
            if row_day != day and len(slots) >= REBUILD_SLOTS:
                flush()
            day = row_day
            _sum_into(slots, (row,))
        flush()
    return written


def _as_slots(rollups) -> dict[tuple, list]:
    """Stored rollup rows as `_sum_into`'s slots."""
    fields = (*UsageSlot.DIMENSIONS, "username", "key_prefix", *ROLLUP_SUMS)
    width = len(UsageSlot.DIMENSIONS)
    return {row[:width]: list(row[width:]) for row in rollups.values_list(*fields)}


def _day(when: datetime) -> datetime:
    return _hour(when).replace(hour=0)


# The RequestLog columns a rollup is made of, and how many slots a rebuild holds at once.
_ROW_FIELDS = (
    "created_at",
    "user_id",
    "username",
    "api_key_id",
    "key_prefix",
    "model",
    "endpoint",
    "outcome",
    "input_units",
    "output_units",
    "cost",
    "latency_ms",
    "ttft_ms",
    "cache_read_units",
    "cache_write_units",
    "reasoning_units",
    "cost_unknown",
)
REBUILD_SLOTS = 20_000


def prune_logs(
    *,
    older_than: timedelta,
    batch_size: int = PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete request logs created more than `older_than` ago; return how many.

    Rows go in batches of `batch_size` (see `prune_rows`); `dry_run` only counts.
    """
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive")
    cutoff = (now or timezone.now()) - older_than
    old = RequestLog.objects.filter(created_at__lt=cutoff)
    return prune_rows(old, batch_size=batch_size, dry_run=dry_run, progress=progress)


def prune_audit(
    *,
    before: datetime,
    batch_size: int = PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete audit entries recorded before `before`; return how many.

    The pruning itself is then recorded (who, how many, up to when), so the
    log never loses history without saying so.
    """
    old = AuditEntry.objects.filter(at__lt=before)
    count = prune_rows(old, batch_size=batch_size, dry_run=dry_run, progress=progress)
    if not dry_run:
        audit.record(
            "prune",
            kind="audit log",
            name=f"entries before {before.isoformat()}",
            changes={"deleted": count},
        )
    return count


def prune_rows(
    rows: models.QuerySet,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete `rows` in batches of `batch_size`; return how many.

    Each batch (select pks, delete by pk) is committed on its own
    (autocommit), so a huge table is never locked by one statement and the
    log writer keeps inserting meanwhile. `dry_run` only counts. `progress`
    is called with the running total after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    rows = rows.order_by()
    if dry_run:
        return rows.count()
    deleted = 0
    while True:
        pks = list(rows.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return deleted
        deleted += rows.model.objects.filter(pk__in=pks).delete()[0]
        if progress is not None:
            progress(deleted)


# ---------------------------------------------------------------------------- usage reports

BUCKETS = ("hour", "day", "week")
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, kw_only=True)
class UsageQuery:
    """A usage question: the hours from `since` to `until`, in `bucket`s, for the filters set.

    Rollups are hourly, so the range is taken to whole UTC hours (`since`
    down, `until` up: `hours()`); day and week buckets start at midnight
    (Monday's, for weeks) in the current time zone. A filter left None
    selects all; `user_id` and `api_key_id` are the ids the logs recorded,
    `username` and `key_prefix` their snapshots (which outlive a deletion).
    """

    since: datetime
    until: datetime
    bucket: str = "day"
    user_id: int | None = None
    username: str | None = None
    api_key_id: int | None = None
    key_prefix: str | None = None
    model: str | None = None
    endpoint: str | None = None
    outcome: str | None = None

    def __post_init__(self):
        if self.bucket not in BUCKETS:
            raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}")
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("since and until need a time zone")
        if self.until <= self.since:
            raise ValueError("until must be after since")

    def hours(self) -> tuple[datetime, datetime]:
        """The range in whole UTC hours: what the report covers, and what its log links select."""
        start = _hour(self.since)
        end = _hour(self.until)
        return start, end if end == self.until else end + timedelta(hours=1)

    def rollups(self, *, daily: bool = True) -> list[models.QuerySet]:
        """The rollup rows covering the range, filtered: DailyUsageRollup rows for its whole
        UTC days and UsageRollup rows for the hours around them (hourly only when `daily`
        is false or the range holds no whole day). Empty parts are left out."""
        start, end = self.hours()
        first = _day(start) if _day(start) == start else _day(start) + timedelta(days=1)
        last = _day(end)
        if not daily or first >= last:
            parts = [UsageRollup.objects.filter(hour__gte=start, hour__lt=end)]
        else:
            parts = [DailyUsageRollup.objects.filter(hour__gte=first, hour__lt=last)]
            if start < first or last < end:
                edges = Q(hour__gte=start, hour__lt=first) | Q(hour__gte=last, hour__lt=end)
                parts.append(UsageRollup.objects.filter(edges))
        filters = {}
        for field in ("user_id", "username", "api_key_id", "key_prefix", "model", "endpoint",
                      "outcome"):  # fmt: skip
            value = getattr(self, field)
            if value is not None:
                filters[field] = value
        return [part.filter(**filters).order_by() for part in parts]


def usage_span() -> tuple[datetime, datetime]:
    """The whole hours that have usage: from the first rollup's to the end of the current
    (or last) one; the current hour alone when there is none."""
    now = _hour(timezone.now())
    span = UsageRollup.objects.aggregate(first=models.Min("hour"), last=models.Max("hour"))
    first, last = span["first"] or now, max(span["last"] or now, now)
    return min(first, now), last + timedelta(hours=1)


def _hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# The usage components a report sums besides the totals: input tokens read from and
# written to the upstream's cache (parts of input_units), output tokens spent reasoning
# (part of output_units), and the requests logged with their cost unknown.
COMPONENTS = ("cache_read_units", "cache_write_units", "reasoning_units", "cost_unknown_requests")


def _usage() -> dict:
    """The sums of a group of rollup rows."""
    # `errors` first: a later expression naming "requests" would read the sum below.
    return {
        "errors": Coalesce(Sum("requests", filter=~Q(outcome=Outcome.OK)), 0),
        "requests": Coalesce(Sum("requests"), 0),
        "input_units": Coalesce(Sum("input_units"), 0),
        "output_units": Coalesce(Sum("output_units"), 0),
        "cost": Coalesce(
            Sum("cost"), Value(Decimal(0)), output_field=models.DecimalField(**MONEY_SUM)
        ),
        **{name: Coalesce(Sum(name), 0) for name in COMPONENTS},
    }


MONEY_SUM = {"max_digits": 30, "decimal_places": 10}
# Breakdowns read most-expensive first, then busiest; the name breaks ties.
_BY_COST = ("-cost", "-requests")


def usage_report(query: UsageQuery, *, limit: int | None = None) -> dict:
    """Usage for `query`: totals, a series over time, breakdowns, outcomes, latency and TTFT.

    - `totals`: requests, input_units, output_units, cost, errors (outcomes
      other than ok), the usage components (`COMPONENTS`) and `error_rate`
      (errors / requests, 0 without requests);
    - `series`: one entry per bucket of the range, empty buckets included,
      each `{"start", requests, input_units, output_units, cost, errors}` and
      the components;
    - `by_model`, `by_endpoint`, `by_user` (`user_id`, `username`) and
      `by_key` (`api_key_id`, `key_prefix`, `username`, `name`: the key's
      name, "" once it is deleted): the same sums per group, most expensive
      first, the first `limit` of each (all when None); `top_spenders` is
      `by_user` (the users who cost most);
    - `by_outcome`: `{"outcome", "requests", "share"}`, most frequent first;
    - `latency` and `ttft`: `count`, `mean_ms` and `p50_ms` … `p99_ms`, each
      percentile the upper bound of the histogram bin (LATENCY_BOUNDS_MS) it
      falls in, None when it falls past the last bound or nothing was timed;
      `histogram`: `[{"le_ms", "count"}]` (`le_ms` None for the last bin).

    A fixed number of queries whatever the table's size: a few per part of
    `UsageQuery.rollups` (daily rows for whole days, hourly ones around them).
    """
    parts = query.rollups()
    since, until = query.hours()

    def breakdown(*fields, order):
        groups = sorted(
            _grouped(parts, fields),
            key=lambda g: (-g["cost"], -g["requests"], *(g[name] for name in order)),
        )
        return groups[:limit] if limit is not None else groups

    by_outcome = sorted(_grouped(parts, ("outcome",)), key=lambda g: (-g["requests"], g["outcome"]))
    totals = {name: sum(group[name] for group in by_outcome) for name in _usage()}
    totals["cost"] = exact(totals["cost"])
    requests = totals["requests"]
    totals["error_rate"] = totals["errors"] / requests if requests else 0.0
    by_key = breakdown("api_key_id", "key_prefix", "username", order=("api_key_id",))
    names = dict(
        APIKey.objects.filter(pk__in=[group["api_key_id"] for group in by_key]).values_list(
            "pk", "name"
        )
    )
    for group in by_key:
        group["name"] = names.get(group["api_key_id"], "")
    by_user = breakdown("user_id", "username", order=("username",))
    return {
        "since": since,
        "until": until,
        "bucket": query.bucket,
        "totals": totals,
        "series": usage_series(query),
        "by_model": breakdown("model", order=("model",)),
        "by_endpoint": breakdown("endpoint", order=("endpoint",)),
        "by_user": by_user,
        "by_key": by_key,
        "top_spenders": by_user,
        "by_outcome": [
            {"outcome": g["outcome"], "requests": g["requests"], "share": g["requests"] / requests}
            for g in by_outcome
        ],
        **_timings(parts),
    }


def _grouped(parts: list[models.QuerySet], fields: tuple[str, ...]) -> list[dict]:
    """The usage sums per value of `fields`, added up over the rollup `parts` (a query each)."""
    groups: dict[tuple, dict] = {}
    for part in parts:
        for group in part.values(*fields).annotate(**_usage()):
            key = tuple(group[name] for name in fields)
            if key in groups:
                for name in _usage():
                    groups[key][name] += group[name]
            else:
                groups[key] = group
    for group in groups.values():
        group["cost"] = exact(group["cost"])
    return list(groups.values())


def usage_series(query: UsageQuery) -> list[dict]:
    """`usage_report`'s `series` alone (a query or two)."""
    zone = timezone.get_current_timezone()
    # Daily rollups start at 00:00 UTC: they fill day and week buckets only where
    # those start there too. Elsewhere the hours are read and folded.
    daily = query.bucket != "hour" and str(zone) in ("UTC", "Etc/UTC")
    parts = query.rollups(daily=daily)
    since, until = query.hours()
    if query.bucket == "hour":
        start = since
    else:
        start = since.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        if query.bucket == "week":
            start -= timedelta(days=start.weekday())
    # Grouped by the stored slot and folded into buckets here: truncating in
    # SQL to local days ran a Python function per row on SQLite.
    hours = sorted(_grouped(parts, ("hour",)), key=lambda group: group["hour"])
    series, at = [], 0
    while start < until:
        end = _next_bucket(start, query.bucket, zone)
        bucket = {"start": start, **dict.fromkeys(_usage(), 0), "cost": Decimal(0)}
        while at < len(hours) and hours[at]["hour"] < end:
            for name in _usage():
                bucket[name] += hours[at][name]
            at += 1
        bucket["cost"] = exact(bucket["cost"])
        series.append(bucket)
        start = end
    return series


def _next_bucket(start: datetime, bucket: str, zone) -> datetime:
    if bucket == "hour":
        return start + timedelta(hours=1)
    # In local wall time, so that a day across a DST change still starts at midnight.
    step = timedelta(days=1 if bucket == "day" else 7)
    local = start.astimezone(zone).replace(tzinfo=None) + step
    return local.replace(tzinfo=zone)


def _timings(parts: list[models.QuerySet]) -> dict:
    """Latency and TTFT summaries from the rollups' histogram bins (a query per part)."""
    names = ("latency_count", "latency_sum_ms", "ttft_count", "ttft_sum_ms")
    names += (*histogram_fields("latency"), *histogram_fields("ttft"))
    sums = {name: Coalesce(Sum(name), 0) for name in names}
    totals = dict.fromkeys(names, 0)
    for part in parts:
        for name, value in part.aggregate(**sums).items():
            totals[name] += value
    result = {}
    for prefix in ("latency", "ttft"):
        counts = [totals[name] for name in histogram_fields(prefix)]
        timed = totals[f"{prefix}_count"]
        summary = {
            "count": timed,
            "mean_ms": round(totals[f"{prefix}_sum_ms"] / timed) if timed else None,
        }
        for p in PERCENTILES:
            summary[f"p{p}_ms"] = _percentile(counts, p)
        bounds = (*LATENCY_BOUNDS_MS, None)
        summary["histogram"] = [
            {"le_ms": bound, "count": n} for bound, n in zip(bounds, counts, strict=True)
        ]
        result[prefix] = summary
    return result


def _percentile(counts: list[int], p: int) -> int | None:
    """The upper bound of the bin holding the p-th percentile (nearest rank), None past the last."""
    total = sum(counts)
    if not total:
        return None
    rank = -(-total * p // 100)  # ceil(total * p / 100), in integers
    seen = 0
    for bound, n in zip(LATENCY_BOUNDS_MS, counts, strict=False):
        seen += n
        if seen >= rank:
            return bound
    return None


def log_totals(logs: models.QuerySet, *, kept: dict | None = None) -> dict:
    """The request count, input and output units, cost and usage components (`COMPONENTS`)
    of the rows `logs` selects.

    By default one aggregate over those rows. `kept` says that `logs` is no
    more than a time range and filters the rollups keep: `since` and `until`
    (datetimes or None: open), and any of `user_id`, `api_key_id`, `model`,
    `endpoint`, `outcome`. Then the whole hours of the range are read from
    the rollups (a few rows per day instead of every log) and only the
    partial hours at its ends from the rows; the hours before the oldest row
    still stored are left out, so pruned logs are not counted. A user or key
    filter whose user or key is gone (its rows lost the link; the rollups
    kept the id) falls back to the rows. Either way the totals are the rows'.
    """
    if kept is None:
        return _row_totals(logs)
    since, until = kept.get("since"), kept.get("until")
    filters = {name: kept[name] for name in ("user_id", "api_key_id", "model", "endpoint",
               "outcome") if kept.get(name) is not None}  # fmt: skip
    oldest = RequestLog.objects.order_by("created_at").values_list("created_at", flat=True)
    oldest = oldest.first()
    if oldest is None:
        return _row_totals(logs.none())
    gone = ("user_id" in filters and not User.objects.filter(pk=filters["user_id"]).exists()) or (
        "api_key_id" in filters and not APIKey.objects.filter(pk=filters["api_key_id"]).exists()
    )
    first = max(_ceil_hour(oldest), _ceil_hour(since) if since else _ceil_hour(oldest))
    last = _hour(until) if until else _hour(timezone.now()) + timedelta(hours=2)
    if gone or first >= last:
        return _row_totals(logs)
    # The rows before and after apart: each a range on the time index, where
    # their OR had PostgreSQL read the whole table.
    totals = _row_totals(logs.filter(created_at__lt=first))
    after = _row_totals(logs.filter(created_at__gte=last))
    query = UsageQuery(since=first, until=last, **filters)
    sums = [after, *(part.aggregate(**_usage()) for part in query.rollups())]
    for part in sums:
        for name, value in part.items():
            if name in totals:
                totals[name] += value
    totals["cost"] = exact(totals["cost"])
    return totals


def _ceil_hour(when: datetime) -> datetime:
    hour = _hour(when)
    return hour if hour == when else hour + timedelta(hours=1)


def _row_totals(logs: models.QuerySet) -> dict:
    totals = logs.order_by().aggregate(
        requests=Count("id"),
        input_units=Coalesce(Sum("input_units"), 0),
        output_units=Coalesce(Sum("output_units"), 0),
        cost=Coalesce(
            Sum("cost"), Value(Decimal(0)), output_field=models.DecimalField(**MONEY_SUM)
        ),
        cache_read_units=Coalesce(Sum("cache_read_units"), 0),
        cache_write_units=Coalesce(Sum("cache_write_units"), 0),
        reasoning_units=Coalesce(Sum("reasoning_units"), 0),
        cost_unknown_requests=Count("id", filter=Q(cost_unknown=True)),
    )
    totals["cost"] = exact(totals["cost"])
    return totals


def exact(amount) -> Decimal:
    """`amount` to the 10 decimals money is stored with (a sum on SQLite comes back longer)."""
    return Decimal(amount).quantize(EXACT)


EXACT = Decimal(10) ** -MONEY_SUM["decimal_places"]


def usage_summary(*, user_id: int | None = None, api_key_id: int | None = None, now=None) -> dict:
    """Requests and cost today, this month and in all, and the last request, of one user or key.

    `{"today": {"requests", "cost"}, "month": {…}, "all": {…}, "last_used": datetime | None}`.
    Today and this month start at local midnight, taken down to the UTC hour the
    rollups keep (exact in zones a whole number of hours from UTC). Two queries,
    whatever the history: one over the rollups, one for the newest log row (indexed).
    """
    if (user_id is None) == (api_key_id is None):
        raise ValueError("give user_id or api_key_id")
    now = timezone.localtime(now or timezone.now())
    today = _hour(now.replace(hour=0, minute=0, second=0, microsecond=0))
    month = _hour(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    which = {"user_id": user_id} if user_id is not None else {"api_key_id": api_key_id}
    periods = {"today": Q(hour__gte=today), "month": Q(hour__gte=month), "all": Q()}
    sums = {}
    for name, when in periods.items():
        sums[f"{name}_requests"] = Coalesce(Sum("requests", filter=when), 0)
        sums[f"{name}_cost"] = Coalesce(
            Sum("cost", filter=when),
            Value(Decimal(0)),
            output_field=models.DecimalField(**MONEY_SUM),
        )
    totals = UsageRollup.objects.filter(**which).aggregate(**sums)
    summary = {
        name: {"requests": totals[f"{name}_requests"], "cost": exact(totals[f"{name}_cost"])}
        for name in periods
    }
    logs = RequestLog.objects.filter(user_id=user_id) if user_id is not None else None
    if logs is None:
        logs = RequestLog.objects.filter(api_key_id=api_key_id)
    summary["last_used"] = logs.order_by("-created_at").values_list("created_at", flat=True).first()
    return summary


def spend_since(field: str, owners: list[int], since: datetime) -> dict[int, Decimal]:
    """What each of `owners` (ids in `field`: "user_id" or "api_key_id") spent from `since`.

    The whole hours come from the hourly rollups, which outlive pruned logs;
    the part of an hour before the first whole one (a period starting at
    :30 in a zone such as Asia/Kolkata) from the request logs.
    """
    hour = since.replace(minute=0, second=0, microsecond=0)
    whole = hour if hour == since else hour + timedelta(hours=1)
    found: dict[int, Decimal] = defaultdict(Decimal)
    rollups = UsageRollup.objects.filter(**{f"{field}__in": owners}, hour__gte=whole)
    for owner, cost in rollups.values_list(field).annotate(total=Sum("cost")).order_by():
        found[owner] += cost
    if whole != since:
        logs = RequestLog.objects.filter(
            **{f"{field}__in": owners}, created_at__gte=since, created_at__lt=whole
        )
        for owner, cost in logs.values_list(field).annotate(total=Sum("cost")).order_by():
            found[owner] += cost
    return dict(found)


def budget_spent(field: str, owner_id: int, period: str, now: datetime | None = None):
    """(start, end, spent) of the budget period holding `now` for one owner (`field`:
    "user_id" or "api_key_id"), from the stored usage: what the admin and the API show.
    Requests in flight and charges the log writer has not stored yet are not in it."""
    start, end = periods.current(period, now or timezone.now())
    return start, end, spend_since(field, [owner_id], start).get(owner_id, Decimal(0))

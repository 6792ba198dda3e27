"""Request logs: settling rows, charges and key last-use in one transaction; pruning old rows."""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter

from django.db import IntegrityError, connections, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from aethergate.lib import audit
from keys.models import APIKey
from logs.models import AuditEntry, RequestLog
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

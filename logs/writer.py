"""The background log writer: batches request records into the database off the request path."""

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable

from django.conf import settings

from aethergate.lib import metrics
from aethergate.lib.db import run_db
from logs.records import RequestRecord
from logs.services import is_record_fault, write_batch

log = logging.getLogger(__name__)

# Request ids named in one "set aside" line; a batch of bad records says how many more.
MAX_IDS_LOGGED = 100
# The longest wait between two attempts to write during an outage.
MAX_RETRY_SECONDS = 10.0
# What a held record costs besides its texts: a RequestRecord and its small
# values take 0.87 KB (tracemalloc); allocator overhead brings it to about 1 KB
# of RSS (the 22-key dicts it replaced took 1.3 KB, 1.5 KB of RSS).
RECORD_OVERHEAD_BYTES = 1024
# The fields whose size depends on the request: the texts of a log_content key
# (up to the largest body and answer), and an upstream's error message.
TEXT_FIELDS = ("prompt_text", "completion_text", "error")


def record_bytes(record: RequestRecord) -> int:
    """About the memory `record` holds: the fixed part plus the storage of its texts."""
    size = RECORD_OVERHEAD_BYTES
    for name in TEXT_FIELDS:  # a loop: a generator expression took twice as long
        text = getattr(record, name)
        if text:
            size += sys.getsizeof(text)
    return size


class LogWriter:
    """Collects records with `submit` (never blocks) and writes them in batches.

    A batch the database cannot take now (an outage: `is_record_fault` is
    false) goes back to the front of the queue and is retried whole, with
    backoff. A batch refused for what a record holds is split in halves until
    the bad records stand alone: the others are stored and charged, the bad
    ones are set aside (logged by request id, counted, never charged) and
    `on_rejected(records)` is told of them, for what they would have charged.
    `close` flushes what is left. The records held (waiting, or in the batch
    being written) are bounded in count and in memory: a record that would
    take them past AETHERGATE_LOG_BUFFER_MAX records or
    AETHERGATE_LOG_BUFFER_MAX_BYTES (`record_bytes`) drops the oldest waiting
    ones first; drops are counted, logged, and release their charges. The
    batch being written is never dropped.
    `on_settled(records)` is told of each stored batch, for what it charged;
    `write` is the storage seam (tests pass a failing one), `clock` the time
    seam of `health`, `retry_seconds` the unit of the back-off after an
    outage (`retry_seconds` * 2**n after n failures in a row, at most
    MAX_RETRY_SECONDS; tests shorten it).
    """

    def __init__(
        self,
        on_settled: Callable[[list[RequestRecord]], None] | None = None,
        write=write_batch,
        on_rejected: Callable[[list[RequestRecord]], None] | None = None,
        clock=time.monotonic,
        retry_seconds: float = 0.5,
    ):
        self.on_settled = on_settled
        self.on_rejected = on_rejected
        self.write = write
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.pending: deque[RequestRecord] = deque()
        # `record_bytes` of every record held: waiting and in flight.
        self.held_bytes = 0
        self.written = 0
        self.failed_batches = 0
        self.dropped = 0
        self.rejected = 0
        self.last_success: float | None = None
        # Records taken off `pending` by the batch being written.
        self._in_flight = 0
        # Since when the records held have waited without any progress.
        self._waiting_since = clock()
        self._wake = asyncio.Event()
        self._closing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def submit(self, record: RequestRecord) -> None:
        if not self.pending and not self._in_flight:
            self._waiting_since = self.clock()
        size = record_bytes(record)
        max_records = settings.AETHERGATE_LOG_BUFFER_MAX
        max_bytes = settings.AETHERGATE_LOG_BUFFER_MAX_BYTES
        while self.pending and (
            len(self.pending) + self._in_flight >= max_records or self.held_bytes + size > max_bytes
        ):
            self._drop_oldest()
        self.pending.append(record)
        self.held_bytes += size
        metrics.LOG_QUEUE.set(len(self.pending))
        metrics.LOG_QUEUE_BYTES.set(self.held_bytes)
        if len(self.pending) >= settings.AETHERGATE_LOG_BATCH_SIZE:
            self._wake.set()

    def _drop_oldest(self) -> None:
        record = self.pending.popleft()
        self.held_bytes -= record_bytes(record)
        # A dropped record's charge is forgotten too, or this process would
        # count it against the user's balance until it restarts.
        self._release(record)
        self.dropped += 1
        metrics.LOG_DROPPED.inc()
        if self.dropped % 1000 == 1:
            log.error(
                "Log buffer full (%d records, %.1f MB held): %d records dropped so far",
                len(self.pending) + self._in_flight,
                self.held_bytes / 2**20,
                self.dropped,
            )

    def health(self) -> str:
        """'ok', or 'stalled: …' once records waited AETHERGATE_LOG_STALL_SECONDS with no progress.

        Progress is a batch (or part of one) stored or a bad record set
        aside; the wait starts when records arrive at an idle writer, so a
        writer that was idle for an hour is not stalled by its next record.
        A dead writer task stalls the same way.
        """
        held = len(self.pending) + self._in_flight
        now = self.clock()
        if not held or now - self._waiting_since < settings.AETHERGATE_LOG_STALL_SECONDS:
            return "ok"
        if self.last_success is None:
            last = "none since start"
        else:
            last = f"{now - self.last_success:.0f} s ago"
        return f"stalled: {held} records waiting, last success {last}"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.AETHERGATE_LOG_FLUSH_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            while self.pending and not self._closing:
                if await self._write_one_batch():
                    failures = 0
                    # Only a full batch goes at once: writing whatever came in
                    # meanwhile turned a steady trickle into dozens of tiny
                    # batches a second, each paying a transaction's overhead.
                    if len(self.pending) >= settings.AETHERGATE_LOG_BATCH_SIZE:
                        continue
                    break
                failures += 1
                # Back off, but let close() interrupt the wait.
                try:
                    backoff = min(self.retry_seconds * 2**failures, MAX_RETRY_SECONDS)
                    await asyncio.wait_for(self._stop.wait(), backoff)
                except TimeoutError:
                    pass
                break

    async def _write_one_batch(self) -> bool:
        """Write the next batch; False if an outage put (some of) it back at the front."""
        size = settings.AETHERGATE_LOG_BATCH_SIZE
        batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
        self._in_flight = len(batch)
        try:
            return await self._store(batch)
        finally:
            self._in_flight = 0
            metrics.LOG_QUEUE.set(len(self.pending))

    async def _store(self, batch: list[RequestRecord]) -> bool:
        # Parts still to write, in order. A refused part is replaced by its two
        # halves, so one bad record among n costs about 2·log2(n) extra writes.
        parts = deque([batch])
        refused: list[tuple[RequestRecord, Exception]] = []
        try:
            while parts:
                part = parts.popleft()
                try:
                    await run_db(self.write, part)
                except Exception as exc:
                    if not is_record_fault(exc):
                        self._outage(exc, part, parts)
                        return False
                    if len(part) == 1:
                        refused.append((part[0], exc))
                        self._set_aside(part[0])
                    else:
                        metrics.LOG_BATCHES.labels("split").inc()
                        half = len(part) // 2
                        parts.extendleft((part[half:], part[:half]))
                    continue
                self._stored(part)
        finally:
            if refused:
                self._log_refused(refused)
        return True

    def _progress(self) -> None:
        self.last_success = self._waiting_since = self.clock()

    def _stored(self, part: list[RequestRecord]) -> None:
        self.written += len(part)
        self._in_flight -= len(part)
        self._forget(part)
        self._progress()
        metrics.LOG_BATCHES.labels("ok").inc()
        metrics.LOG_WRITTEN.inc(len(part))
        if self.on_settled:
            self.on_settled(part)

    def _set_aside(self, record: RequestRecord) -> None:
        self.rejected += 1
        self._in_flight -= 1
        self._forget([record])
        self._progress()
        metrics.LOG_REJECTED.inc()
        self._release(record)

    def _forget(self, records: list[RequestRecord]) -> None:
        """No longer hold `records` (stored or set aside)."""
        self.held_bytes -= sum(record_bytes(record) for record in records)
        metrics.LOG_QUEUE_BYTES.set(self.held_bytes)

    def _release(self, record: RequestRecord) -> None:
        """Tell `on_rejected` the charge of a record that will never be stored."""
        if self.on_rejected and record.user_id and record.cost:
            self.on_rejected([record])

    def _outage(self, exc: Exception, part: list[RequestRecord], rest: deque) -> None:
        self.failed_batches += 1
        metrics.LOG_BATCHES.labels("failed").inc()
        unwritten = part + [record for later in rest for record in later]
        # A database outage fails every batch: one line each, no traceback.
        log.error(
            "Writing %d request logs failed (%s: %s); %d waiting, will retry",
            len(unwritten),
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            len(self.pending) + len(unwritten),
        )
        self.pending.extendleft(reversed(unwritten))

    @staticmethod
    def _log_refused(refused: list[tuple[RequestRecord, Exception]]) -> None:
        # Named by request id and error type only: a driver's message can
        # quote the value it refused, which may be a prompt.
        kinds = sorted({_error_kind(exc) for _, exc in refused})
        ids = [record.request_id for record, _ in refused]
        more = f" and {len(ids) - MAX_IDS_LOGGED} more" if len(ids) > MAX_IDS_LOGGED else ""
        log.error(
            "Set aside %d request log(s) the database refused (%s), not stored or charged: %s%s",
            len(refused),
            ", ".join(kinds),
            ", ".join(ids[:MAX_IDS_LOGGED]),
            more,
        )

    async def close(self, grace: float = 10.0) -> None:
        """Stop the loop and write everything still pending (retrying for `grace` seconds).

        A batch being written is not cancelled (its thread would carry on, and
        a failure there would lose it): the loop is asked to stop after it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._closing = True
        self._wake.set()
        self._stop.set()
        if self._task:
            done, _ = await asyncio.wait((self._task,), timeout=grace)
            if not done:
                log.error("The log writer did not stop within %s s", grace)
            self._task = None
        while self.pending and loop.time() < deadline:
            if not await self._write_one_batch():
                await asyncio.sleep(self.retry_seconds)
        if self.pending:
            log.error("Shutting down with %d request logs unwritten", len(self.pending))


def _error_kind(exc: Exception) -> str:
    """`TypeName` or `TypeName SQLSTATE` (PostgreSQL's code, from psycopg), never the message."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    sqlstate = getattr(cause, "sqlstate", None)
    return f"{type(exc).__name__} {sqlstate}" if sqlstate else type(exc).__name__

"""The background log writer: batches request records into the database off the request path."""

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from django.conf import settings

from aethergate.lib import metrics
from aethergate.lib.db import run_db
from logs.services import write_batch

log = logging.getLogger(__name__)


class LogWriter:
    """Collects records with `submit` (never blocks) and writes them in batches.

    A failed batch goes back to the front of the queue and is retried with
    backoff; `close` flushes what is left. The buffer is bounded: past
    AETHERGATE_LOG_BUFFER_MAX records the oldest are dropped and counted.
    `on_settled(charges)` is told what each stored batch charged per user;
    `write` is the storage seam (tests pass a failing one).
    """

    def __init__(self, on_settled: Callable[[dict], None] | None = None, write=write_batch):
        self.on_settled = on_settled
        self.write = write
        self.pending: deque[dict] = deque()
        self.written = 0
        self.failed_batches = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def submit(self, record: dict) -> None:
        if len(self.pending) >= settings.AETHERGATE_LOG_BUFFER_MAX:
            self.pending.popleft()
            self.dropped += 1
            metrics.LOG_DROPPED.inc()
            if self.dropped % 1000 == 1:
                log.error("Log buffer full: %d records dropped so far", self.dropped)
        self.pending.append(record)
        metrics.LOG_QUEUE.set(len(self.pending))
        if len(self.pending) >= settings.AETHERGATE_LOG_BATCH_SIZE:
            self._wake.set()

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
                    await asyncio.wait_for(self._stop.wait(), min(0.5 * 2**failures, 10.0))
                except TimeoutError:
                    pass
                break

    async def _write_one_batch(self) -> bool:
        size = settings.AETHERGATE_LOG_BATCH_SIZE
        batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
        try:
            charges = await run_db(self.write, batch)
        except Exception as exc:
            self.failed_batches += 1
            metrics.LOG_BATCHES.labels("failed").inc()
            # A database outage fails every batch: one line each, no traceback.
            log.error(
                "Writing %d request logs failed (%s: %s); %d waiting, will retry",
                len(batch),
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                len(self.pending) + len(batch),
            )
            self.pending.extendleft(reversed(batch))
            return False
        self.written += len(batch)
        metrics.LOG_BATCHES.labels("ok").inc()
        metrics.LOG_WRITTEN.inc(len(batch))
        metrics.LOG_QUEUE.set(len(self.pending))
        if self.on_settled:
            self.on_settled(charges)
        return True

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
                await asyncio.sleep(0.5)
        if self.pending:
            log.error("Shutting down with %d request logs unwritten", len(self.pending))

"""The batching log writer and the settlement it performs."""

import asyncio
import logging
import sqlite3
import threading
import time
import tracemalloc
from decimal import Decimal

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from aethergate.testing import FakeClock, await_for
from keys import services
from logs.models import RequestLog
from logs.records import RequestRecord
from logs.services import write_batch
from logs.writer import RECORD_OVERHEAD_BYTES, LogWriter, record_bytes

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(django_user_model):
    owner = django_user_model.objects.create_user("alice", balance=Decimal("10"))
    key, _ = services.create_key(owner=owner, name="ci")
    return key


def record(key, cost="0.25", **fields) -> RequestRecord:
    values = {
        "created_at": timezone.now(),
        "request_id": "req-1",
        "user_id": key.owner_id,
        "username": key.owner.username,
        "api_key_id": key.pk,
        "key_prefix": key.prefix,
        "model": "llama3",
        "endpoint": "",
        "path": "/v1/chat/completions",
        "status": 200,
        "outcome": "ok",
        "stream": False,
        "latency_ms": 5,
        "ttft_ms": None,
        "input_units": 0,
        "cache_read_units": 0,
        "cache_write_units": 0,
        "output_units": 0,
        "reasoning_units": 0,
        "usage_estimated": False,
        "cost_unknown": False,
        "cost": Decimal(cost),
        "prompt_text": "",
        "completion_text": "",
        "error": "",
        "attempts": [],
    }
    return RequestRecord(**{**values, **fields})


def test_a_batch_stores_rows_charges_balances_and_marks_last_use(key):
    charges = write_batch([record(key, request_id="a"), record(key, request_id="b")])

    assert charges == {key.owner_id: Decimal("0.50")}
    key.owner.refresh_from_db()
    key.refresh_from_db()
    assert key.owner.balance == Decimal("9.50")
    assert key.last_used_at is not None
    assert set(RequestLog.objects.values_list("request_id", flat=True)) == {"a", "b"}


def test_a_batch_charges_and_marks_last_use_without_announcing_a_catalog_change(key, announced):
    # Every catalog counts its own charges and re-reads balances at each poll: an
    # announcement (or a moved updated_at) would rebuild every catalog at every batch.
    stamps = (key.owner.updated_at, key.updated_at)

    write_batch([record(key)])

    key.refresh_from_db()
    key.owner.refresh_from_db()
    assert key.owner.balance == Decimal("9.75") and key.last_used_at is not None
    assert (key.owner.updated_at, key.updated_at) == stamps
    assert announced == []


def test_a_user_without_balance_is_not_debited_but_cost_is_recorded(key):
    key.owner.balance = None
    key.owner.save()

    write_batch([record(key)])

    key.owner.refresh_from_db()
    assert key.owner.balance is None
    assert RequestLog.objects.get().cost == Decimal("0.25")


def test_records_of_a_deleted_user_are_kept_without_the_link(key):
    rec = record(key)
    prefix = key.prefix
    key.owner.delete()

    write_batch([rec])

    row = RequestLog.objects.get()
    assert (row.user_id, row.api_key_id) == (None, None)
    assert (row.username, row.key_prefix) == ("alice", prefix)


def test_a_failed_batch_is_retried_not_dropped(key, settings):
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 0.01
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return write_batch(batch)

    async def scenario():
        settled = []
        writer = LogWriter(on_settled=settled.append, write=flaky, retry_seconds=0.01)
        writer.start()
        writer.submit(record(key, request_id="x"))
        writer.submit(record(key, request_id="y"))
        await await_for(lambda: writer.written == 2)
        await writer.close()
        return writer, settled

    writer, settled = asyncio.run(scenario())

    assert calls[:2] == [2, 2]
    assert writer.failed_batches == 1
    assert writer.written == 2
    assert [[(r.user_id, r.cost) for r in rs] for rs in settled] == [
        [(key.owner_id, Decimal("0.25")), (key.owner_id, Decimal("0.25"))]
    ]
    assert RequestLog.objects.count() == 2


def test_close_writes_everything_still_pending(key, settings):
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 3600  # only close() can write them
    settings.AETHERGATE_LOG_BATCH_SIZE = 7

    async def scenario():
        writer = LogWriter()
        writer.start()
        for i in range(20):
            writer.submit(record(key, request_id=f"r{i}"))
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert writer.written == 20
    assert not writer.pending
    assert RequestLog.objects.count() == 20


def test_the_buffer_is_bounded_and_counts_drops(key, settings):
    settings.AETHERGATE_LOG_BUFFER_MAX = 3
    settings.AETHERGATE_LOG_BATCH_SIZE = 100
    released = []
    writer = LogWriter(on_rejected=released.append)

    for i in range(5):
        writer.submit(record(key, request_id=f"r{i}", cost=f"0.{i + 1}"))

    assert writer.dropped == 2
    assert [r.request_id for r in writer.pending] == ["r2", "r3", "r4"]
    # What the dropped records would have charged is no longer counted against the user.
    assert [[(r.user_id, r.cost) for r in rs] for rs in released] == [
        [(key.owner_id, Decimal("0.1"))],
        [(key.owner_id, Decimal("0.2"))],
    ]


def test_the_buffer_is_bounded_in_memory_and_drops_the_oldest_first(key, settings):
    settings.AETHERGATE_LOG_BATCH_SIZE = 100
    prompt = "p" * 10_000
    one = record_bytes(record(key, prompt_text=prompt))
    settings.AETHERGATE_LOG_BUFFER_MAX_BYTES = 3 * one
    released = []
    writer = LogWriter(on_rejected=released.append)

    for i in range(5):
        writer.submit(record(key, request_id=f"r{i}", cost=f"0.{i + 1}", prompt_text=prompt))

    assert writer.dropped == 2
    assert [r.request_id for r in writer.pending] == ["r2", "r3", "r4"]
    assert writer.held_bytes == 3 * one
    assert REGISTRY.get_sample_value("aethergate_log_queue_bytes") == 3 * one
    assert [[(r.user_id, r.cost) for r in rs] for rs in released] == [
        [(key.owner_id, Decimal("0.1"))],
        [(key.owner_id, Decimal("0.2"))],
    ]


def test_a_record_counts_the_memory_its_texts_take(key):
    small = record(key)
    ascii_text = record(key, prompt_text="x" * 10_000, completion_text="y" * 5_000)
    emoji = record(key, completion_text="\N{GRINNING FACE}" * 10_000)  # 4 bytes a character

    assert record_bytes(small) == RECORD_OVERHEAD_BYTES
    assert record_bytes(ascii_text) >= RECORD_OVERHEAD_BYTES + 15_000
    assert record_bytes(emoji) >= RECORD_OVERHEAD_BYTES + 40_000


def test_the_fixed_part_of_the_estimate_covers_a_whole_record_without_content():
    # Every field the proxy hands over, with typical values; only the texts vary.
    def full_record(i):
        return RequestRecord(
            **{
                "created_at": timezone.now(),
                "request_id": f"req_3685e52b69ff{i:012x}",
                "user_id": 1000 + i,
                "username": "consumer",
                "api_key_id": 2000 + i,
                "key_prefix": "ag-eM4S5vCM",
                "model": "llama3",
                "endpoint": "local",
                "path": "/v1/chat/completions",
                "status": 200,
                "outcome": "ok",
                "stream": True,
                "latency_ms": 1000 + i,
                "ttft_ms": 300 + i,
                "input_units": 1000 + i,
                "cache_read_units": 500 + i,
                "cache_write_units": 100 + i,
                "output_units": 2000 + i,
                "reasoning_units": 100 + i,
                "usage_estimated": False,
                "cost_unknown": False,
                "cost": Decimal("0.000123") + i,
                "prompt_text": "",
                "completion_text": "",
                "error": "",
                "attempts": [{"model": "llama3", "endpoint": "local", "status": 200}],
            }
        )

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [full_record(i) for i in range(1000)]
        per_record = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()

    assert per_record <= RECORD_OVERHEAD_BYTES <= 2 * per_record


def test_the_batch_being_written_counts_against_the_bound_and_is_never_dropped(key, settings):
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 0.01
    settings.AETHERGATE_LOG_BUFFER_MAX = 4
    started, release = threading.Event(), threading.Event()

    def held_up(batch):
        started.set()
        assert release.wait(5)
        return write_batch(batch)

    async def scenario():
        writer = LogWriter(write=held_up)
        writer.start()
        writer.submit(record(key, request_id="first"))
        writer.submit(record(key, request_id="second"))
        assert await asyncio.to_thread(started.wait, 5)
        for name in ("a", "b", "c", "d"):
            writer.submit(record(key, request_id=name))
        waiting = [r.request_id for r in writer.pending]
        held = writer.held_bytes
        release.set()
        await await_for(lambda: writer.written == 4)
        await writer.close()
        return writer, waiting, held

    writer, waiting, held = asyncio.run(scenario())

    assert waiting == ["c", "d"]  # 2 in flight + 2 waiting: the 4 allowed
    assert held == 4 * record_bytes(record(key))
    assert writer.dropped == 2
    assert writer.held_bytes == 0
    stored = set(RequestLog.objects.values_list("request_id", flat=True))
    assert stored == {"first", "second", "c", "d"}


def test_close_waits_for_a_batch_already_being_written(key, settings):
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 0.01
    started = threading.Event()

    def slow(batch):
        started.set()
        time.sleep(0.3)  # a slow database, not a test timer
        return write_batch(batch)

    async def scenario():
        writer = LogWriter(write=slow)
        writer.start()
        writer.submit(record(key, request_id="in-flight"))
        assert await asyncio.to_thread(started.wait, 5)
        await writer.close()

    asyncio.run(scenario())

    assert RequestLog.objects.filter(request_id="in-flight").exists()


# --------------------------------------------------------------------------- poison and outages


def rejected_total() -> float:
    return REGISTRY.get_sample_value("aethergate_log_records_rejected_total") or 0.0


BAD_VALUES = {
    "int past 64 bits": {"input_units": 2**63},  # sqlite3: OverflowError before SQL
    "negative count": {"output_units": -1},  # CHECK constraint: IntegrityError
    "lone surrogate": {"prompt_text": "secret prompt \ud800"},  # UnicodeEncodeError
}


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_record_is_set_aside_and_the_rest_of_its_batch_stored_and_charged(
    key, settings, caplog, bad
):
    settings.AETHERGATE_LOG_BATCH_SIZE = 100
    calls = []

    def write(batch):
        calls.append(len(batch))
        return write_batch(batch)

    records = [record(key, request_id=f"good-{i}") for i in range(7)]
    records.insert(4, record(key, request_id="bad-one", **bad))
    settled, released = [], []

    async def scenario():
        writer = LogWriter(on_settled=settled.append, write=write, on_rejected=released.append)
        for rec in records:
            writer.submit(rec)
        await writer.close()
        return writer

    before = rejected_total()
    with caplog.at_level(logging.ERROR, logger="logs.writer"):
        writer = asyncio.run(scenario())

    stored = set(RequestLog.objects.values_list("request_id", flat=True))
    assert stored == {f"good-{i}" for i in range(7)}
    assert (writer.written, writer.rejected, list(writer.pending)) == (7, 1, [])
    # Found by halving, not by writing every record alone.
    assert calls[0] == 8 and len(calls) <= 1 + 2 * 3
    key.owner.refresh_from_db()
    assert key.owner.balance == Decimal("10") - 7 * Decimal("0.25")
    assert sum(r.cost for rs in settled for r in rs) == 7 * Decimal("0.25")
    assert [[r.request_id for r in rs] for rs in released] == [["bad-one"]]
    assert rejected_total() - before == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "logs.writer"]
    assert len(messages) == 1 and "bad-one" in messages[0]
    assert "secret prompt" not in messages[0]


def test_records_refused_by_the_driver_of_another_database_are_set_aside_too(key):
    # COPY on PostgreSQL raises psycopg's own classes, unwrapped by Django.
    psycopg = pytest.importorskip("psycopg")

    def write(batch):
        if any(r.request_id == "bad" for r in batch):
            raise psycopg.errors.NumericValueOutOfRange("integer out of range")
        return write_batch(batch)

    async def scenario():
        writer = LogWriter(write=write)
        for name in ("a", "bad", "b"):
            writer.submit(record(key, request_id=name))
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert writer.rejected == 1
    assert set(RequestLog.objects.values_list("request_id", flat=True)) == {"a", "b"}


def outage_errors():
    from django.db import InterfaceError, OperationalError, ProgrammingError

    errors = {
        "connection refused": ConnectionRefusedError("connection refused"),
        "OperationalError": OperationalError("server closed the connection unexpectedly"),
        "InterfaceError": InterfaceError("connection already closed"),
        "sqlite locked": sqlite3.OperationalError("database is locked"),
        "missing column": ProgrammingError('column "ttft_ms" does not exist'),
    }
    try:
        import psycopg
    except ImportError:
        return errors
    errors["psycopg admin shutdown"] = psycopg.errors.AdminShutdown("terminating connection")
    return errors


@pytest.mark.parametrize("error", outage_errors().values(), ids=outage_errors().keys())
def test_an_outage_keeps_the_whole_batch_and_retries_it_whole(key, settings, error):
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 0.01
    calls = []

    def down_once(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise error
        return write_batch(batch)

    async def scenario():
        writer = LogWriter(write=down_once, retry_seconds=0.01)
        writer.start()
        for i in range(3):
            writer.submit(record(key, request_id=f"r{i}"))
        await await_for(lambda: writer.written == 3)
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert calls == [3, 3]  # never split into single rows
    assert (writer.failed_batches, writer.rejected) == (1, 0)
    key.owner.refresh_from_db()
    assert key.owner.balance == Decimal("10") - 3 * Decimal("0.25")


def test_an_outage_while_splitting_keeps_what_is_left_and_charges_nothing_twice(key):
    from django.db import OperationalError

    calls = []

    def write(batch):
        calls.append([r.request_id for r in batch])
        if len(calls) == 2:
            raise OperationalError("the database went away")
        return write_batch(batch)

    settled, released = [], []

    async def scenario():
        writer = LogWriter(
            on_settled=settled.append,
            write=write,
            on_rejected=released.append,
            retry_seconds=0.01,
        )
        for name in ("a", "b", "c", "bad", "d", "e"):
            bad = {"input_units": 2**63} if name == "bad" else {}
            writer.submit(record(key, request_id=name, **bad))
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert calls[1] == ["a", "b", "c"]  # the first half, refused by the outage
    assert calls[2] == ["a", "b", "c", "bad", "d", "e"]  # then retried whole
    assert set(RequestLog.objects.values_list("request_id", flat=True)) == set("abcde")
    assert (writer.written, writer.rejected, writer.failed_batches) == (5, 1, 1)
    key.owner.refresh_from_db()
    assert key.owner.balance == Decimal("10") - 5 * Decimal("0.25")
    assert sum(r.cost for rs in settled for r in rs) == 5 * Decimal("0.25")
    assert [[r.request_id for r in rs] for rs in released] == [["bad"]]


def test_a_deleted_user_among_bad_records_keeps_its_row_without_the_link(key):
    rec = record(key, request_id="orphan")
    bad = record(key, request_id="bad", input_units=-5)
    key.owner.delete()

    async def scenario():
        writer = LogWriter()
        writer.submit(rec)
        writer.submit(bad)
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert writer.rejected == 1
    row = RequestLog.objects.get()
    assert (row.request_id, row.user_id, row.api_key_id) == ("orphan", None, None)


def test_it_reports_stalled_when_records_wait_without_progress_and_ok_after(key, settings):
    settings.AETHERGATE_LOG_STALL_SECONDS = 30
    settings.AETHERGATE_LOG_FLUSH_SECONDS = 0.01
    clock = FakeClock()
    from django.db import OperationalError

    def down(batch):
        raise OperationalError("database is locked")

    async def scenario():
        writer = LogWriter(write=down, clock=clock, retry_seconds=0.01)
        assert writer.health() == "ok"
        clock.advance(3600)  # idle for an hour: the next record starts a new wait
        writer.start()
        writer.submit(record(key, request_id="a"))
        writer.submit(record(key, request_id="b"))
        await await_for(lambda: writer.failed_batches >= 1)
        clock.advance(29)
        early = writer.health()
        clock.advance(2)
        stalled = writer.health()
        writer.write = write_batch
        await await_for(lambda: writer.written == 2)
        recovered = writer.health()
        await writer.close()
        return early, stalled, recovered

    early, stalled, recovered = asyncio.run(scenario())

    assert early == "ok"
    assert stalled == "stalled: 2 records waiting, last success none since start"
    assert recovered == "ok"


def test_it_reports_how_long_ago_the_last_success_was(key, settings):
    settings.AETHERGATE_LOG_STALL_SECONDS = 30
    clock = FakeClock()

    def down(batch):
        raise ConnectionError("database went away")

    async def scenario():
        writer = LogWriter(clock=clock)
        writer.submit(record(key, request_id="a"))
        await writer.close()
        writer.write = down
        clock.advance(10)
        writer.submit(record(key, request_id="b"))
        clock.advance(45)
        return writer.health()

    assert asyncio.run(scenario()) == "stalled: 1 records waiting, last success 55 s ago"

"""The batching log writer and the settlement it performs."""

import asyncio
import threading
import time
from decimal import Decimal

import pytest
from django.utils import timezone

from keys import services
from logs.models import RequestLog
from logs.services import write_batch
from logs.writer import LogWriter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(django_user_model):
    owner = django_user_model.objects.create_user("alice", balance=Decimal("10"))
    key, _ = services.create_key(owner=owner, name="ci")
    return key


def record(key, cost="0.25", **fields):
    return {
        "created_at": timezone.now(),
        "request_id": fields.pop("request_id", "req-1"),
        "user_id": key.owner_id,
        "username": key.owner.username,
        "api_key_id": key.pk,
        "key_prefix": key.prefix,
        "model": "llama3",
        "status": 200,
        "outcome": "ok",
        "cost": Decimal(cost),
        **fields,
    }


def test_a_batch_stores_rows_charges_balances_and_marks_last_use(key):
    charges = write_batch([record(key, request_id="a"), record(key, request_id="b")])

    assert charges == {key.owner_id: Decimal("0.50")}
    key.owner.refresh_from_db()
    key.refresh_from_db()
    assert key.owner.balance == Decimal("9.50")
    assert key.last_used_at is not None
    assert set(RequestLog.objects.values_list("request_id", flat=True)) == {"a", "b"}


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
        writer = LogWriter(on_settled=settled.append, write=flaky)
        writer.start()
        writer.submit(record(key, request_id="x"))
        writer.submit(record(key, request_id="y"))
        for _ in range(500):
            if writer.written == 2:
                break
            await asyncio.sleep(0.01)
        await writer.close()
        return writer, settled

    writer, settled = asyncio.run(scenario())

    assert calls[:2] == [2, 2]
    assert writer.failed_batches == 1
    assert writer.written == 2
    assert settled == [{key.owner_id: Decimal("0.50")}]
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
    writer = LogWriter()

    for i in range(5):
        writer.submit(record(key, request_id=f"r{i}"))

    assert writer.dropped == 2
    assert [r["request_id"] for r in writer.pending] == ["r2", "r3", "r4"]


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

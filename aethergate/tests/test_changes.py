"""Writes that send no signal (update, bulk_create, bulk_update, deletes' fast path) are
stamped and announced once they commit; the log writer's path is neither."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from aethergate.lib import changes
from aethergate.testing import make_model
from endpoints.models import Endpoint
from models_registry.models import Deployment, Model

pytestmark = pytest.mark.django_db

LONG_AGO = timezone.now() - timedelta(days=30)


@pytest.fixture
def commits(django_capture_on_commit_callbacks):
    """`with commits():` runs the on-commit work of what it wraps, as a commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def endpoint():
    endpoint = Endpoint.objects.create(name="local", base_url="http://127.0.0.1:9/v1")
    Endpoint.objects.filter(pk=endpoint.pk).update_unannounced(updated_at=LONG_AGO)
    endpoint.refresh_from_db()
    return endpoint


def test_update_stamps_updated_at_and_announces_once_committed(endpoint, announced, commits):
    with commits():
        rows = Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        assert announced == []  # not before the commit

    assert rows == 1
    assert announced == [Endpoint]
    endpoint.refresh_from_db()
    assert not endpoint.is_active
    assert endpoint.updated_at > LONG_AGO


def test_update_keeps_an_updated_at_the_caller_gives(endpoint, announced, commits):
    given = LONG_AGO + timedelta(days=1)

    with commits():
        Endpoint.objects.filter(pk=endpoint.pk).update(rpm_limit=5, updated_at=given)

    endpoint.refresh_from_db()
    assert (endpoint.rpm_limit, endpoint.updated_at) == (5, given)
    assert announced == [Endpoint]


def test_an_update_of_no_row_announces_nothing(endpoint, announced, commits):
    with commits():
        rows = Endpoint.objects.filter(name="no such endpoint").update(is_active=False)

    assert rows == 0
    assert announced == []


def test_nothing_is_announced_when_the_write_rolls_back(endpoint, announced, commits):
    with commits(), pytest.raises(RuntimeError), transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        raise RuntimeError("abandon the transaction")

    assert announced == []
    endpoint.refresh_from_db()
    assert endpoint.is_active


def test_bulk_update_stamps_and_announces(endpoint, announced, commits):
    endpoint.rpm_limit = 7

    with commits():
        Endpoint.objects.bulk_update([endpoint], ["rpm_limit"])

    endpoint.refresh_from_db()
    assert endpoint.rpm_limit == 7 and endpoint.updated_at > LONG_AGO
    assert announced == [Endpoint]


def test_bulk_create_announces_its_rows(endpoint, announced, commits):
    with commits():
        Model.objects.bulk_create([Model(name=name) for name in ("a", "b")])

    assert announced == [Model]
    assert sorted(Model.objects.values_list("name", flat=True)) == ["a", "b"]


def test_bulk_create_stamps_the_rows_it_updates_on_conflict(endpoint, announced, commits):
    if not connection.features.supports_update_conflicts_with_target:
        pytest.skip("this database cannot update on conflict")
    again = Endpoint(name="local", base_url="http://127.0.0.1:8/v1")

    with commits():
        Endpoint.objects.bulk_create(
            [again], update_conflicts=True, unique_fields=["name"], update_fields=["base_url"]
        )

    endpoint.refresh_from_db()
    assert endpoint.base_url == "http://127.0.0.1:8/v1"
    assert endpoint.updated_at > LONG_AGO
    assert announced == [Endpoint]


def test_deleting_an_endpoint_announces_the_deployments_it_deletes(endpoint, announced, commits):
    model = make_model("m", "echo", endpoint=endpoint)

    with commits():
        endpoint.delete()

    assert Model.objects.filter(pk=model.pk).exists()  # the model stays, unserved
    assert not Deployment.objects.exists()
    assert set(announced) == {Endpoint, Deployment}


def test_the_fast_delete_path_announces(endpoint, announced, commits):
    with commits():
        rows = Endpoint.objects.filter(pk=endpoint.pk)._raw_delete(using="default")

    assert rows == 1
    assert announced == [Endpoint]


def test_update_unannounced_neither_stamps_nor_announces(endpoint, announced, commits):
    with commits():
        Endpoint.objects.filter(pk=endpoint.pk).update_unannounced(rpm_limit=3)

    endpoint.refresh_from_db()
    assert (endpoint.rpm_limit, endpoint.updated_at) == (3, LONG_AGO)
    assert announced == []


def test_a_failing_receiver_stops_neither_the_next_receivers_nor_the_write(
    endpoint, commits, caplog
):
    after = []

    def broken(**_signal):
        raise ConnectionError("the cache is unreachable")

    def next_receiver(sender, **_signal):
        after.append(sender)

    changes.changed.connect(broken, weak=False, dispatch_uid="test-broken")
    changes.changed.connect(next_receiver, weak=False, dispatch_uid="test-after")
    try:
        with commits():
            Endpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
    finally:
        changes.changed.disconnect(dispatch_uid="test-broken")
        changes.changed.disconnect(dispatch_uid="test-after")

    assert after == [Endpoint]
    assert "the cache is unreachable" in caplog.text
    endpoint.refresh_from_db()
    assert not endpoint.is_active

"""Stored responses: the services (proxy.stored), prune_responses and the read-only admin."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aethergate.testing import make_key, make_user
from proxy import stored
from proxy.admin import CONTENT_NOT_SHOWN
from proxy.models import StoredResponse

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
CHANGELIST = "/admin/proxy/storedresponse/"


def message(item_id: str, text: str, role: str = "user") -> dict:
    return {"id": item_id, "type": "message", "role": role, "content": text}


def answer(response_id: str, text: str, previous: str | None = None, **fields) -> dict:
    """A Response object as returned: one output message saying `text`."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(T0.timestamp()),
        "status": "completed",
        "model": "llama3",
        "previous_response_id": previous,
        "output": [
            {
                "type": "message",
                "id": f"msg_out_{response_id}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        **fields,
    }


@pytest.fixture
def alice():
    return make_user("alice")


@pytest.fixture
def key(alice):
    return make_key(alice, name="laptop")[0]


def store(owner, response, items, *, key=None, at=T0, log_content=False):
    stored.save(
        response=response,
        input_items=items,
        owner_id=owner.pk,
        key_id=key.pk if key else None,
        log_content=log_content,
        created_at=at,
    )
    return response


@pytest.fixture
def chain(alice, key):
    """Three linked responses of alice: resp_1 ← resp_2 ← resp_3."""
    store(alice, answer("resp_1", "one"), [message("msg_1", "first")], key=key)
    store(alice, answer("resp_2", "two", "resp_1"), [message("msg_2", "second")], key=key)
    store(alice, answer("resp_3", "three", "resp_2"), [message("msg_3", "third")], key=key)


# --------------------------------------------------------------------------- save and get


def test_it_saves_the_response_with_what_it_reads_from_it(alice, key):
    response = answer("resp_1", "hi", "resp_0", status="incomplete")
    store(alice, response, [message("msg_1", "hello")], key=key, log_content=True)

    row = StoredResponse.objects.get()
    assert (row.id, row.owner, row.api_key, row.model, row.status, row.previous_id) == (
        "resp_1", alice, key, "llama3", "incomplete", "resp_0",
    )  # fmt: skip
    assert (row.created_at, row.log_content) == (T0, True)
    assert row.input_items == [message("msg_1", "hello")]
    assert row.response == response


def test_it_saves_no_previous_id_for_a_first_response(alice):
    store(alice, answer("resp_1", "hi"), [])

    assert StoredResponse.objects.get().previous_id == ""


def test_it_refuses_input_items_without_an_id(alice):
    with pytest.raises(ValueError, match="input item 1 has no id"):
        store(alice, answer("resp_1", "hi"), [message("msg_1", "a"), {"type": "message"}])

    assert not StoredResponse.objects.exists()


def test_get_returns_the_stored_response(alice):
    response = store(alice, answer("resp_1", "hi"), [message("msg_1", "hello")])

    assert stored.get(owner_id=alice.pk, response_id="resp_1") == response


def test_another_owner_gets_the_same_not_found_as_for_an_unknown_id(alice):
    bob = make_user("bob")
    store(alice, answer("resp_1", "hi"), [message("msg_1", "hello")])

    for owner, response_id in ((bob, "resp_1"), (alice, "resp_nope")):
        for call in (stored.get, stored.delete, stored.history, stored.input_items):
            with pytest.raises(stored.NotFound):
                call(owner_id=owner.pk, response_id=response_id)
    assert StoredResponse.objects.count() == 1


# --------------------------------------------------------------------------- delete


def test_delete_removes_the_response_in_one_query(alice, chain, django_assert_num_queries):
    with django_assert_num_queries(1):
        stored.delete(owner_id=alice.pk, response_id="resp_2")

    assert set(StoredResponse.objects.values_list("id", flat=True)) == {"resp_1", "resp_3"}
    with pytest.raises(stored.NotFound):
        stored.delete(owner_id=alice.pk, response_id="resp_2")


def test_deleting_the_owner_deletes_their_responses_and_a_key_leaves_them(alice, key, chain):
    key.delete()

    assert list(StoredResponse.objects.values_list("api_key", flat=True)) == [None] * 3
    alice.delete()
    assert not StoredResponse.objects.exists()


# --------------------------------------------------------------------------- history


def out(response_id: str, text: str) -> dict:
    return answer(response_id, text)["output"][0]


def test_history_is_each_link_oldest_first_its_input_then_its_output(
    alice, chain, django_assert_num_queries
):
    with django_assert_num_queries(3):  # one per link
        items = stored.history(owner_id=alice.pk, response_id="resp_3")

    assert items == [
        message("msg_1", "first"), out("resp_1", "one"),
        message("msg_2", "second"), out("resp_2", "two"),
        message("msg_3", "third"), out("resp_3", "three"),
    ]  # fmt: skip


def test_history_of_the_first_response_is_its_own_input_and_output(alice, chain):
    assert stored.history(owner_id=alice.pk, response_id="resp_1") == [
        message("msg_1", "first"),
        out("resp_1", "one"),
    ]


def test_history_ends_at_a_deleted_link(alice, chain):
    stored.delete(owner_id=alice.pk, response_id="resp_2")

    assert stored.history(owner_id=alice.pk, response_id="resp_3") == [
        message("msg_3", "third"),
        out("resp_3", "three"),
    ]


def test_history_ends_at_a_link_of_another_owner(alice):
    bob = make_user("bob")
    store(bob, answer("resp_b", "bob's"), [message("msg_b", "secret")])
    store(alice, answer("resp_a", "alice's", "resp_b"), [message("msg_a", "mine")])

    assert stored.history(owner_id=alice.pk, response_id="resp_a") == [
        message("msg_a", "mine"),
        out("resp_a", "alice's"),
    ]


def test_history_keeps_the_newest_max_chain_links(alice, monkeypatch):
    monkeypatch.setattr(stored, "MAX_CHAIN", 2)
    store(alice, answer("resp_1", "one"), [message("msg_1", "first")])
    store(alice, answer("resp_2", "two", "resp_1"), [message("msg_2", "second")])
    store(alice, answer("resp_3", "three", "resp_2"), [message("msg_3", "third")])

    assert stored.history(owner_id=alice.pk, response_id="resp_3") == [
        message("msg_2", "second"), out("resp_2", "two"),
        message("msg_3", "third"), out("resp_3", "three"),
    ]  # fmt: skip


def test_history_takes_a_response_without_output(alice):
    failed = answer("resp_1", "", status="failed") | {"output": []}
    store(alice, failed, [message("msg_1", "first")])

    assert stored.history(owner_id=alice.pk, response_id="resp_1") == [message("msg_1", "first")]


# --------------------------------------------------------------------------- input_items


@pytest.fixture
def five(alice):
    """resp_5 with its own five input items, msg_1 to msg_5 (and a previous one)."""
    store(alice, answer("resp_4", "before"), [message("msg_0", "earlier")])
    items = [message(f"msg_{n}", f"text {n}") for n in range(1, 6)]
    store(alice, answer("resp_5", "after", "resp_4"), items)


def page(alice, **query) -> tuple[list[str], str | None, str | None, bool]:
    listed = stored.input_items(owner_id=alice.pk, response_id="resp_5", **query)
    assert listed["object"] == "list"
    ids = [item["id"] for item in listed["data"]]
    return ids, listed["first_id"], listed["last_id"], listed["has_more"]


def test_input_items_are_newest_first_by_default_and_only_the_responses_own(alice, five):
    listed = stored.input_items(owner_id=alice.pk, response_id="resp_5")

    assert listed == {
        "object": "list",
        "data": [message(f"msg_{n}", f"text {n}") for n in (5, 4, 3, 2, 1)],
        "first_id": "msg_5",
        "last_id": "msg_1",
        "has_more": False,
    }


def test_input_items_in_ascending_order(alice, five):
    assert page(alice, order="asc") == (
        ["msg_1", "msg_2", "msg_3", "msg_4", "msg_5"], "msg_1", "msg_5", False,
    )  # fmt: skip


def test_input_items_page_by_limit_and_after_in_either_order(alice, five):
    assert page(alice, limit=2) == (["msg_5", "msg_4"], "msg_5", "msg_4", True)
    assert page(alice, limit=2, after="msg_4") == (["msg_3", "msg_2"], "msg_3", "msg_2", True)
    assert page(alice, limit=2, after="msg_2") == (["msg_1"], "msg_1", "msg_1", False)
    assert page(alice, limit=2, order="asc", after="msg_2") == (
        ["msg_3", "msg_4"], "msg_3", "msg_4", True,
    )  # fmt: skip
    assert page(alice, limit=3, order="asc", after="msg_2") == (
        ["msg_3", "msg_4", "msg_5"], "msg_3", "msg_5", False,
    )  # fmt: skip


def test_input_items_after_the_last_is_an_empty_page(alice, five):
    assert page(alice, after="msg_1") == ([], None, None, False)


def test_input_items_of_a_response_with_none(alice):
    store(alice, answer("resp_5", "hi"), [])

    assert page(alice) == ([], None, None, False)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"limit": 0}, "limit must be an integer from 1 to 100."),
        ({"limit": 101}, "limit must be an integer from 1 to 100."),
        ({"limit": True}, "limit must be an integer from 1 to 100."),
        ({"order": "newest"}, "order must be 'asc' or 'desc'."),
        ({"after": "msg_0"}, "after: no input item 'msg_0' in this response."),
    ],
)
def test_input_items_refuse_a_bad_limit_order_or_after(alice, five, query, error):
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        stored.input_items(owner_id=alice.pk, response_id="resp_5", **query)


def test_input_items_accept_the_bounds_of_limit(alice, five):
    assert page(alice, limit=1)[0] == ["msg_5"]
    assert len(page(alice, limit=100)[0]) == 5


# --------------------------------------------------------------------------- prune


@pytest.fixture
def ages(alice):
    """resp_old (30 days and a second before T0), resp_edge (exactly 30 days), resp_new."""
    store(alice, answer("resp_old", "a"), [], at=T0 - timedelta(days=30, seconds=1))
    store(alice, answer("resp_edge", "b"), [], at=T0 - timedelta(days=30))
    store(alice, answer("resp_new", "c"), [], at=T0 - timedelta(days=1))


def remaining() -> set[str]:
    return set(StoredResponse.objects.values_list("id", flat=True))


def test_prune_deletes_only_what_is_older_than_the_days_before_now(ages):
    assert stored.prune(now=T0, days=30) == 1

    assert remaining() == {"resp_edge", "resp_new"}


def test_prune_measures_from_the_given_now(ages):
    assert stored.prune(now=T0 + timedelta(days=1), days=30) == 2

    assert remaining() == {"resp_new"}


def test_prune_with_0_days_keeps_everything(ages):
    assert stored.prune(now=T0 + timedelta(days=365), days=0) == 0

    assert len(remaining()) == 3


def test_prune_refuses_negative_days(ages):
    with pytest.raises(ValueError, match="days must be 0"):
        stored.prune(now=T0, days=-1)


def test_prune_deletes_in_batches_and_a_dry_run_only_counts(ages):
    with CaptureQueriesContext(connection) as queries:
        assert stored.prune(now=T0 + timedelta(days=40), days=30, batch_size=2, dry_run=True) == 3
    assert not [q for q in queries if q["sql"].upper().startswith("DELETE")]

    with CaptureQueriesContext(connection) as queries:
        assert stored.prune(now=T0 + timedelta(days=40), days=30, batch_size=2) == 3
    assert len([q for q in queries if q["sql"].upper().startswith("DELETE")]) == 2
    assert remaining() == set()


# --------------------------------------------------------------------------- prune_responses


@pytest.fixture
def aged(alice):
    """Responses 40, 20 and 1 days old (from the time now)."""
    now = datetime.now(UTC)
    for days in (40, 20, 1):
        store(alice, answer(f"resp_{days}", "x"), [], at=now - timedelta(days=days))


def test_the_command_prunes_by_the_setting_by_default(aged, settings, capsys):
    settings.AETHERGATE_RESPONSES_RETENTION_DAYS = 30

    call_command("prune_responses")

    assert remaining() == {"resp_20", "resp_1"}
    assert "Deleted 1 stored response older than 30 days." in capsys.readouterr().out


def test_the_command_takes_days_and_the_prune_options(aged, capsys):
    call_command("prune_responses", "--days=10", "--dry-run")
    assert "Would delete 2 stored responses older than 10 days (dry run)." in (
        capsys.readouterr().out
    )
    assert len(remaining()) == 3

    call_command("prune_responses", "--days", "10", "--batch-size=1")
    assert remaining() == {"resp_1"}
    assert "Deleted 2 stored responses older than 10 days." in capsys.readouterr().out


def test_the_command_keeps_everything_with_retention_0(aged, settings, capsys):
    settings.AETHERGATE_RESPONSES_RETENTION_DAYS = 0

    call_command("prune_responses")

    assert len(remaining()) == 3
    assert "kept forever (retention 0): none deleted." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--days=-1"], "--days must be 0 (keep forever) or more."),
        (["--days=10", "--batch-size=0"], "--batch-size must be at least 1."),
    ],
)
def test_the_command_refuses_negative_days_or_an_empty_batch(aged, args, error):
    with pytest.raises(CommandError, match=re.escape(error)):
        call_command("prune_responses", *args)

    assert len(remaining()) == 3


# --------------------------------------------------------------------------- admin


def detail(admin_client, response_id: str) -> str:
    page = admin_client.get(reverse("admin:proxy_storedresponse_change", args=[response_id]))
    assert page.status_code == 200
    return page.content.decode()


def test_the_admin_shows_no_content_of_a_key_that_does_not_log_it(admin_client, alice, key):
    store(alice, answer("resp_1", "the answer"), [message("msg_1", "the question")], key=key)

    page = detail(admin_client, "resp_1")

    assert CONTENT_NOT_SHOWN in page
    assert "the question" not in page
    assert "the answer" not in page
    assert "laptop" in page and "llama3" in page  # the metadata is


def test_the_admin_shows_the_content_of_a_key_that_logs_it(admin_client, alice, key):
    items = [message("msg_1", "<b>the question</b>")]
    store(alice, answer("resp_1", "the answer"), items, key=key, log_content=True)

    page = detail(admin_client, "resp_1")

    assert CONTENT_NOT_SHOWN not in page
    assert "&lt;b&gt;the question&lt;/b&gt;" in page  # escaped
    assert "the answer" in page


def test_the_admin_cannot_add_or_change_but_can_delete(admin_client, alice):
    store(alice, answer("resp_1", "hi"), [message("msg_1", "hello")])
    change = reverse("admin:proxy_storedresponse_change", args=["resp_1"])

    assert admin_client.get(reverse("admin:proxy_storedresponse_add")).status_code == 403
    assert 'name="_save"' not in admin_client.get(change).content.decode()
    admin_client.post(change, {"model": "other"})
    assert StoredResponse.objects.get().model == "llama3"
    delete = reverse("admin:proxy_storedresponse_delete", args=["resp_1"])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not StoredResponse.objects.exists()


def listed(response) -> list[str]:
    return [row.id for row in response.context["cl"].result_list]


def test_the_admin_list_filters_by_model_and_status_and_searches_the_id(admin_client, alice):
    store(alice, answer("resp_a1", "x"), [])
    store(alice, answer("resp_b2", "x", model="mistral"), [])
    store(alice, answer("resp_a3", "x", status="failed"), [])

    assert sorted(listed(admin_client.get(CHANGELIST, {"model": "mistral"}))) == ["resp_b2"]
    assert listed(admin_client.get(CHANGELIST, {"status__exact": "failed"})) == ["resp_a3"]
    assert sorted(listed(admin_client.get(CHANGELIST, {"q": "resp_a"}))) == ["resp_a1", "resp_a3"]


def test_the_admin_list_shows_the_sizes(admin_client, alice):
    items = [message("msg_1", "a"), message("msg_2", "b")]
    store(alice, answer("resp_1", "x"), items)

    page = admin_client.get(CHANGELIST).content.decode()

    assert '<td class="field-input_size">2</td>' in page
    assert '<td class="field-output_size">1</td>' in page


def test_the_admin_list_costs_the_same_queries_for_few_rows_or_many(
    admin_client, alice, key, django_assert_num_queries, django_assert_max_num_queries
):
    store(alice, answer("resp_0", "x"), [], key=key)
    admin_client.get(CHANGELIST)  # the session, once
    with django_assert_max_num_queries(12) as few:
        admin_client.get(CHANGELIST)
    for n in range(1, 40):
        owner = make_user(f"user{n}")
        store(owner, answer(f"resp_{n}", "x"), [], key=make_key(owner)[0])

    with django_assert_num_queries(len(few.captured_queries)):
        admin_client.get(CHANGELIST)

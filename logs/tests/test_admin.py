"""Request logs in admin are read-only and filterable."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from aethergate.testing import make_key, make_staff, make_user, request_record
from logs.admin import log_list_query
from logs.models import RequestLog
from logs.services import write_batch

pytestmark = pytest.mark.django_db


@pytest.fixture
def log():
    return RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req-abc",
        username="alice",
        key_prefix="ag-12345678",
        model="llama3",
        endpoint="ollama",
        status=429,
        outcome="rate_limited",
    )


def test_logs_cannot_be_added_changed_or_deleted(admin_client, log):
    assert admin_client.get(reverse("admin:logs_requestlog_add")).status_code == 403
    assert (
        admin_client.get(reverse("admin:logs_requestlog_delete", args=[log.pk])).status_code == 403
    )

    url = reverse("admin:logs_requestlog_change", args=[log.pk])
    view = admin_client.get(url)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    admin_client.post(url, {"status": 200, "outcome": "ok"})
    log.refresh_from_db()
    assert (log.status, log.outcome) == (429, "rate_limited")


def test_logs_filter_by_outcome_and_model(admin_client, log):
    RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req-def",
        username="bob",
        key_prefix="ag-87654321",
        model="mistral",
        status=200,
        outcome="ok",
    )
    changelist = reverse("admin:logs_requestlog_changelist")

    by_outcome = admin_client.get(changelist, {"outcome": "rate_limited"})
    by_model = admin_client.get(changelist, {"model": "mistral"})

    assert [r.request_id for r in by_outcome.context["cl"].result_list] == ["req-abc"]
    assert [r.request_id for r in by_model.context["cl"].result_list] == ["req-def"]
    by_day = admin_client.get(changelist, {"created_at__year": timezone.now().year})
    assert by_day.status_code == 200
    assert len(by_day.context["cl"].result_list) == 2


def test_logs_filter_by_the_api_a_request_used(admin_client):
    for request_id, path in (
        ("req-chat", "/v1/chat/completions"),
        ("req-responses", "/v1/responses"),
        ("req-retrieve", "/v1/responses/resp_123"),
        ("req-messages", "/v1/messages"),
        ("req-count", "/v1/messages/count_tokens"),
    ):
        RequestLog.objects.create(
            created_at=timezone.now(), request_id=request_id, path=path, status=200, outcome="ok"
        )
    changelist = reverse("admin:logs_requestlog_changelist")

    def listed(surface):
        page = admin_client.get(changelist, {"surface": surface})
        return sorted(r.request_id for r in page.context["cl"].result_list)

    assert listed("responses") == ["req-responses", "req-retrieve"]
    assert listed("messages") == ["req-count", "req-messages"]
    assert listed("chat") == ["req-chat"]
    assert listed("embeddings") == []


def test_a_whole_key_in_the_log_search_is_not_looked_up_or_echoed(admin_client, log):
    secret = "ag-12345678" + "x" * 35  # the key this log's prefix belongs to
    changelist = reverse("admin:logs_requestlog_changelist")

    response = admin_client.get(changelist, {"q": secret, "outcome": "rate_limited"})
    page = admin_client.get(response["Location"]).content.decode()
    by_prefix = admin_client.get(changelist, {"q": log.key_prefix})

    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?outcome=rate_limited"
    assert secret not in page
    assert "not searched here" in page
    assert [r.request_id for r in by_prefix.context["cl"].result_list] == ["req-abc"]


# ------------------------------------------------------------------ list: totals, filters, CSV

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def traffic(db):
    """alice's key "laptop" (3 requests, one failed) and bob's "phone" (1), by the writer."""
    alice, bob = make_user("alice"), make_user("bob")
    laptop, _ = make_key(alice, name="laptop")
    phone, _ = make_key(bob, name="phone")
    write_batch(
        [
            request_record(laptop, request_id="a_1", created_at=T0 + timedelta(seconds=1),
                           input_units=10, output_units=5, cost=Decimal("0.0000012345")),
            request_record(laptop, request_id="a_2", created_at=T0 + timedelta(seconds=2),
                           input_units=20, output_units=7, cost=Decimal("1.25"),
                           prompt_text="secret plans", completion_text="ok",
                           cache_read_units=12, cache_write_units=3, reasoning_units=2),
            request_record(laptop, request_id="a_3", created_at=T0 + timedelta(hours=1),
                           outcome="upstream_error", status=502, model="qwen"),
            request_record(phone, request_id="b_1", created_at=T0 + timedelta(hours=2),
                           input_units=1, output_units=1, cost=Decimal("0.5"), endpoint="cloud"),
        ]
    )  # fmt: skip
    return {"laptop": laptop, "phone": phone}


CHANGELIST = "/admin/logs/requestlog/"


def shown(response) -> list[str]:
    assert response.status_code == 200, response.content[:300]
    return [row.request_id for row in response.context["cl"].result_list]


def test_the_list_is_headed_by_the_totals_of_its_filters(admin_client, traffic):
    everything = admin_client.get(CHANGELIST)
    laptop = admin_client.get(CHANGELIST, {"api_key__id__exact": traffic["laptop"].pk})

    assert everything.context["totals"]["requests"] == 4
    assert everything.context["totals"]["cost"] == Decimal("1.7500012345")
    assert laptop.context["totals"] == {
        "requests": 3,
        "input_units": 30,
        "output_units": 12,
        "cost": Decimal("1.2500012345"),
        "cost_shown": "$1.25",
        "cache_read_units": 12,
        "cache_write_units": 3,
        "reasoning_units": 2,
        "cost_unknown_requests": 0,
    }
    page = laptop.content.decode()
    assert 'data-total="requests">3<' in page and 'title="1.2500012345">$1.25<' in page


def test_the_list_shows_times_to_the_second_and_money_rounded(admin_client, traffic):
    page = admin_client.get(CHANGELIST).content.decode()

    assert "11-30 10:00:01<" in page and "11-30 10:00:02<" in page
    assert "2026-11-30 10:00:01 UTC" in page
    assert "$0.0000012" in page and "0.0000012345" not in page
    assert "10 / 5" in page


def test_the_list_shows_the_cached_input_under_the_units_and_an_unknown_cost(admin_client, traffic):
    write_batch([request_record(traffic["phone"], request_id="b_2", created_at=T0,
                                model="unpriced", input_units=9, cost_unknown=True)])  # fmt: skip

    page = admin_client.get(CHANGELIST).content.decode()
    unknown = admin_client.get(CHANGELIST, {"cost_unknown__exact": "1"})

    assert ">20 / 7</span><br><small" in page and "12 cached, 3 written</small>" in page
    assert "20 in (5 uncached, 12 read from the cache, 3 written); 7 out (2 reasoning)" in page
    assert ">unknown</span>" in page
    assert shown(unknown) == ["b_2"]
    assert 'data-total="cost_unknown_requests">1<' in unknown.content.decode()
    assert 'data-total="cache_read_units">12<' in page


def test_a_rows_page_breaks_its_units_down_and_says_an_unknown_cost_is_unknown(
    admin_client, traffic
):
    cached = RequestLog.objects.get(request_id="a_2")
    write_batch([request_record(traffic["phone"], request_id="b_2", created_at=T0,
                                input_units=9, cost_unknown=True)])  # fmt: skip
    unknown = RequestLog.objects.get(request_id="b_2")

    page = admin_client.get(reverse("admin:logs_requestlog_change", args=[cached.pk]))
    other = admin_client.get(reverse("admin:logs_requestlog_change", args=[unknown.pk]))

    text = page.content.decode()
    for name, value in (("input", 20), ("uncached", 5), ("cache-read", 12), ("cache-write", 3),
                        ("output", 7), ("reasoning", 2)):  # fmt: skip
        assert f'data-units="{name}">{value}<' in text
    assert "$1.25 (exactly 1.2500000000)" in text
    assert "unknown: the model had no price" in other.content.decode()
    assert "secret plans" in text  # the content is on the page, as before


def test_the_list_takes_every_filter_the_dashboard_links_set(admin_client, traffic):
    laptop, phone = traffic["laptop"], traffic["phone"]
    query = log_list_query(
        since=T0, until=T0 + timedelta(hours=1), user_id=laptop.owner_id,
        api_key_id=laptop.pk, model="llama3", endpoint="local", outcome="ok",
    )  # fmt: skip

    assert shown(admin_client.get(f"{CHANGELIST}?{query}")) == ["a_2", "a_1"]
    later = log_list_query(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3))
    assert shown(admin_client.get(f"{CHANGELIST}?{later}")) == ["b_1", "a_3"]
    failed = log_list_query(since=T0, until=T0 + timedelta(days=1), outcome="upstream_error")
    assert shown(admin_client.get(f"{CHANGELIST}?{failed}")) == ["a_3"]
    gone = log_list_query(since=T0, until=T0 + timedelta(days=1), user_id=0, username="bob",
                          api_key_id=0, key_prefix=phone.prefix, endpoint="cloud")  # fmt: skip
    assert shown(admin_client.get(f"{CHANGELIST}?{gone}")) == ["b_1"]


def test_the_request_id_is_searchable(admin_client, traffic):
    # "_" is in no key prefix or username here, so only the id can match.
    assert shown(admin_client.get(CHANGELIST, {"q": "a_3"})) == ["a_3"]


def test_the_list_costs_the_same_queries_for_few_rows_or_many(
    admin_client, traffic, django_assert_num_queries, django_assert_max_num_queries
):
    admin_client.get(CHANGELIST)  # the session, once
    with django_assert_max_num_queries(16) as few:
        admin_client.get(CHANGELIST)
    laptop = traffic["laptop"]
    write_batch([request_record(laptop, request_id=f"m{n}", created_at=T0) for n in range(150)])
    make_user("carol")
    with django_assert_num_queries(len(few.captured_queries)):
        admin_client.get(CHANGELIST)


def test_the_export_streams_the_filtered_rows_in_full_precision_without_content(
    admin_client, traffic
):
    response = admin_client.get(
        "/admin/logs/requestlog/export/", {"api_key__id__exact": traffic["laptop"].pk}
    )

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["request_id"] for row in rows] == ["a_3", "a_2", "a_1"]
    assert (
        rows[2]["cost"] == "0.0000012345" and rows[2]["created_at"] == "2026-11-30T10:00:01+00:00"
    )
    assert "prompt_text" not in rows[0] and "secret plans" not in str(rows)
    assert (rows[1]["cache_read_units"], rows[1]["cache_write_units"]) == ("12", "3")
    assert (rows[1]["reasoning_units"], rows[1]["cost_unknown"]) == ("2", "False")
    assert (
        rows[0]["outcome"] == "upstream_error" and rows[0]["key_prefix"] == traffic["laptop"].prefix
    )


def test_the_export_refuses_bad_filters_and_staff_who_may_not_view_logs(
    admin_client, client, traffic
):
    bad = admin_client.get("/admin/logs/requestlog/export/", {"created_at__gte": "yesterday"})
    client.force_login(make_staff("eve"))
    forbidden = client.get("/admin/logs/requestlog/export/")

    assert bad.status_code == 400 and b"not valid" in bad.content
    assert forbidden.status_code == 403


@pytest.mark.parametrize(
    ("params", "from_rollups"),
    [
        ({}, True),
        ({"created_at__gte": "2026-11-30T10:00:01+00:00"}, True),
        # No whole hour after the oldest row left (10:00:02) and before 11:30: rows only.
        ({"created_at__gte": "2026-11-30T09:00:00+00:00", "created_at__lt": "2026-11-30T11:30:00Z"},
         False),
        ({"model": "llama3", "outcome__exact": "ok"}, True),
        ({"endpoint": "cloud", "created_at__lt": "2026-11-30T12:00:00+00:00"}, True),
        ({"q": "a_"}, False),
        ({"status": "502"}, False),
    ],
)  # fmt: skip
def test_the_totals_read_from_rollups_are_the_rows_totals(
    admin_client, traffic, params, from_rollups
):
    laptop = traffic["laptop"]
    params = {**params}
    if params.get("model"):
        params["api_key__id__exact"] = str(laptop.pk)
    # Pruned in the middle of an hour: the hours before the oldest row left are not counted.
    RequestLog.objects.filter(request_id="a_1").delete()

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, params)
    totals = response.context["totals"]
    rows = RequestLog.objects.filter(pk__in=response.context["cl"].queryset.values("pk"))

    read = any("usagerollup" in query["sql"] for query in queries.captured_queries)
    assert read == from_rollups
    assert totals["requests"] == rows.count()
    assert totals["cost"] == sum((row.cost for row in rows), Decimal(0))
    assert totals["input_units"] == sum(row.input_units for row in rows)


def test_the_totals_of_a_deleted_keys_link_are_the_rows_not_the_rollups(admin_client, traffic):
    phone = traffic["phone"]
    pk = phone.pk
    phone.delete()  # its log row keeps the prefix; its link is cleared

    totals = admin_client.get(CHANGELIST, {"api_key__id__exact": pk}).context["totals"]

    assert totals["requests"] == 0

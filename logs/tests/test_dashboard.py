"""The usage dashboard: who may open it, what it shows, its links, its CSV, its query count."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from aethergate.testing import grant, make_key, make_staff, make_user, request_record
from logs.services import write_batch

pytestmark = pytest.mark.django_db

URL = "/admin/usage/"
NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def now(monkeypatch):
    """The dashboard's and the usage summary's clock: 12:30 UTC on 2026-11-30."""
    monkeypatch.setattr("logs.dashboard.timezone.now", lambda: NOW)
    monkeypatch.setattr("logs.services.timezone.now", lambda: NOW)


@pytest.fixture
def traffic(db):
    alice, bob = make_user("alice"), make_user("bob")
    laptop, _ = make_key(alice, name="laptop")
    phone, _ = make_key(bob, name="phone")
    write_batch(
        [
            request_record(laptop, created_at=NOW - timedelta(hours=2), input_units=100,
                           output_units=50, cost=Decimal("1.2345678901"), latency_ms=120,
                           cache_read_units=60, cache_write_units=10, reasoning_units=5),
            request_record(laptop, created_at=NOW - timedelta(days=1), cost=Decimal("0.25"),
                           model="qwen", outcome="upstream_error", status=502),
            request_record(phone, created_at=NOW - timedelta(days=2), input_units=7,
                           output_units=3, cost=Decimal("0.0000042"), endpoint="cloud"),
            request_record(phone, created_at=NOW - timedelta(days=20), cost=Decimal("9")),
        ]
    )  # fmt: skip
    return {"laptop": laptop, "phone": phone}


def test_it_shows_totals_tables_and_chart_data_for_the_last_7_days(admin_client, traffic):
    response = admin_client.get(URL)

    assert response.status_code == 200
    context = response.context
    assert context["totals"]["requests"] == 3  # the 20-day-old request is out of range
    assert context["totals"]["cost"] == Decimal("1.4845720901")
    assert context["totals"]["cost_shown"] == "$1.48"
    assert context["query"].bucket == "day"
    charts = json.loads(
        response.content.decode()
        .split('id="usage-charts" type="application/json">')[1]
        .split("</script>")[0]
    )
    assert sum(charts["series"]["requests"]) == 3 and len(charts["series"]["labels"]) == 8
    assert charts["by_model"]["labels"] == ["llama3", "qwen"]
    assert charts["by_model"]["cost"] == [pytest.approx(1.2345720901), 0.25]
    assert charts["outcomes"]["labels"] == ["ok", "upstream_error"]
    page = response.content.decode()
    assert 'data-total="cost" title="1.4845720901">$1.48<' in page
    # 107 in: 37 uncached, 60 read from the cache, 10 written to it; 5 of 53 out reasoning.
    for name, value in (("uncached_units", 37), ("cache_read_units", 60),
                        ("cache_write_units", 10), ("reasoning_units", 5)):  # fmt: skip
        assert f'data-total="{name}">{value}<' in page
    assert 'data-total="cost_unknown_requests"' not in page  # none: not shown
    assert (
        sum(charts["series"]["uncached_units"])
        + sum(charts["series"]["cache_read_units"])
        + sum(charts["series"]["cache_write_units"])
        == context["totals"]["input_units"]
    )
    assert '<small class="usage-cached" data-field="cached">60 cached</small>' in page
    assert "In: 30 uncached, 60 read from the cache, 10 written to it; out: 5 reasoning" in page
    assert "chartjs/chart.umd.min.js" in page and 'id="chart-by_key"' in page


def test_requests_with_their_cost_unknown_are_counted_on_the_totals_and_their_rows(
    admin_client, traffic
):
    write_batch([request_record(traffic["phone"], created_at=NOW - timedelta(hours=1),
                                model="unpriced", input_units=9, cost_unknown=True)])  # fmt: skip

    response = admin_client.get(URL)

    page = response.content.decode()
    assert response.context["totals"]["cost_unknown_requests"] == 1
    assert 'data-total="cost_unknown_requests">1<' in page
    (row,) = [r for r in response.context["tables"][0]["rows"] if r["label"] == "unpriced"]
    assert (row["cost_unknown_requests"], row["cost"]) == (1, Decimal(0))
    assert "+1 unknown</small>" in page


def test_each_row_links_to_the_matching_request_logs(admin_client, traffic):
    laptop = traffic["laptop"]
    context = admin_client.get(URL, {"range": "7d", "model": ""}).context
    by_key = {row["api_key_id"]: row for row in context["tables"][2]["rows"]}

    link = urlsplit(by_key[laptop.pk]["link"])
    params = parse_qs(link.query)
    assert link.path == "/admin/logs/requestlog/"
    assert params["api_key__id__exact"] == [str(laptop.pk)]
    assert params["created_at__gte"] == ["2026-11-23T13:00:00+00:00"]
    assert params["created_at__lt"] == ["2026-11-30T13:00:00+00:00"]
    listed = admin_client.get(by_key[laptop.pk]["link"])
    assert listed.context["totals"]["requests"] == by_key[laptop.pk]["requests"] == 2
    assert listed.context["totals"]["cost"] == by_key[laptop.pk]["cost"]
    day = context["series"][-1]
    assert admin_client.get(day["link"]).context["totals"]["requests"] == day["requests"] == 1


def test_it_keeps_to_its_filters(admin_client, traffic):
    phone = traffic["phone"]

    by_key = admin_client.get(URL, {"range": "30d", "key": phone.pk}).context
    by_user = admin_client.get(URL, {"range": "30d", "user": traffic["laptop"].owner_id}).context
    by_model = admin_client.get(URL, {"range": "24h", "model": "llama3"}).context
    custom = admin_client.get(
        URL, {"range": "custom", "since": "2026-11-28", "until": "2026-11-28"}
    )

    assert by_key["totals"]["requests"] == 2 and by_key["totals"]["cost"] == Decimal("9.0000042")
    assert by_user["totals"]["requests"] == 2
    assert by_model["totals"]["requests"] == 1 and by_model["query"].bucket == "hour"
    assert custom.context["totals"]["requests"] == 1 and custom.context["query"].bucket == "hour"
    assert parse_qs(urlsplit(by_key["totals"]["link"]).query)["api_key__id__exact"] == [
        str(phone.pk)
    ]


def test_a_bad_question_gets_the_form_back_with_its_errors(admin_client, traffic):
    missing = admin_client.get(URL, {"range": "custom", "since": "2026-11-28"})
    unknown = admin_client.get(URL, {"user": "999999"})

    assert missing.status_code == unknown.status_code == 400
    assert "A custom range needs both dates." in missing.content.decode()
    assert "Select a valid choice" in unknown.content.decode()


def test_the_csv_streams_the_tables_in_full_precision(admin_client, traffic):
    response = admin_client.get(URL, {"range": "7d", "export": "csv"})

    assert response.status_code == 200 and response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    models = {row["label"]: row for row in rows if row["table"] == "by_model"}
    assert models["llama3"]["cost"] == "1.2345720901" and models["qwen"]["errors"] == "1"
    assert (models["llama3"]["cache_read_units"], models["llama3"]["cache_write_units"]) == (
        "60", "10",
    )  # fmt: skip
    assert models["llama3"]["reasoning_units"] == "5"
    assert models["qwen"]["cost_unknown_requests"] == "0"
    assert sum(int(row["requests"]) for row in rows if row["table"] == "time") == 3
    assert {row["label"] for row in rows if row["table"] == "by_outcome"} == {
        "ok",
        "upstream_error",
    }


def test_only_staff_who_may_read_request_logs_open_it(client, traffic):
    viewer, other = make_staff("viewer"), make_staff("other")
    grant(viewer, actions=("view",), apps=("logs",))

    client.force_login(other)
    refused = client.get(URL)
    index = client.get("/admin/")
    client.force_login(viewer)
    allowed = client.get(URL)
    page = client.get("/admin/").content.decode()

    assert refused.status_code == 403 and b'id="usage-link"' not in index.content
    assert allowed.status_code == 200
    assert 'id="usage-link"' in page and 'id="usage-module"' in page


def test_it_costs_the_same_queries_for_few_rows_or_many(
    admin_client, traffic, django_assert_num_queries, django_assert_max_num_queries
):
    admin_client.get(URL)
    with django_assert_max_num_queries(30) as few:
        admin_client.get(URL)
    write_batch(
        [
            request_record(key, created_at=NOW - timedelta(hours=n), model=f"m{n % 7}")
            for n in range(150)
            for key in traffic.values()
        ]
    )
    with django_assert_num_queries(len(few.captured_queries)):
        admin_client.get(URL)


# ------------------------------------------------------------------ usage on user and key pages


def usage_cells(response) -> dict:
    page = response.content.decode()
    assert response.status_code == 200
    cells = {}
    for name in ("today-requests", "today-cost", "month-requests", "month-cost", "all-requests",
                 "all-cost", "last"):  # fmt: skip
        cells[name] = page.split(f'data-usage="{name}"')[1].split(">", 1)[1].split("<", 1)[0]
    return cells


def test_a_users_and_a_keys_page_show_their_spend_last_use_and_logs(admin_client, traffic):
    laptop, phone = traffic["laptop"], traffic["phone"]
    user_page = admin_client.get(f"/admin/accounts/user/{laptop.owner_id}/change/")
    key_page = admin_client.get(f"/admin/keys/apikey/{phone.pk}/change/")

    assert usage_cells(user_page) == {
        "today-requests": "1", "today-cost": "$1.23", "month-requests": "2",
        "month-cost": "$1.48", "all-requests": "2", "all-cost": "$1.48",
        "last": "2026-11-30 10:30:00",
    }  # fmt: skip
    assert usage_cells(key_page) == {
        "today-requests": "0", "today-cost": "$0.00", "month-requests": "2",
        "month-cost": "$9.00", "all-requests": "2", "all-cost": "$9.00",
        "last": "2026-11-28 12:30:00",
    }  # fmt: skip
    assert f'href="/admin/logs/requestlog/?user__id__exact={laptop.owner_id}"' in (
        user_page.content.decode()
    )
    logs = admin_client.get(f"/admin/logs/requestlog/?api_key__id__exact={phone.pk}")
    assert logs.context["totals"]["requests"] == 2


def test_a_budgeted_key_and_user_show_what_their_budget_period_has_spent(admin_client, traffic):
    laptop, phone = traffic["laptop"], traffic["phone"]
    phone.budget, phone.budget_period = Decimal("10"), "month"
    phone.save()
    laptop.owner.budget_soft, laptop.owner.budget_period = Decimal("1"), "day"
    laptop.owner.save()

    key_page = admin_client.get(f"/admin/keys/apikey/{phone.pk}/change/").content.decode()
    user_page = admin_client.get(f"/admin/accounts/user/{laptop.owner_id}/change/")
    plain = admin_client.get(f"/admin/keys/apikey/{laptop.pk}/change/").content.decode()

    # November 2026 (UTC): $9 twenty days ago and $0.0000042 two days ago.
    assert (
        "Budget: $9.00 spent of $10.00, since 2026-11-01 00:00, resets 2026-12-01 00:00."
        in key_page
    )
    assert "Budget: $1.23 spent, since 2026-11-30 00:00" in user_page.content.decode()
    assert "usage-budget" not in plain  # a key without a budget says nothing of one


def test_the_user_and_key_pages_cost_the_same_queries_for_few_rows_or_many(
    admin_client, traffic, django_assert_num_queries, django_assert_max_num_queries
):
    laptop = traffic["laptop"]
    pages = (f"/admin/accounts/user/{laptop.owner_id}/change/",
             f"/admin/keys/apikey/{laptop.pk}/change/")  # fmt: skip
    admin_client.get(pages[0])
    counts = []
    for page in pages:
        with django_assert_max_num_queries(25) as few:
            admin_client.get(page)
        counts.append(len(few.captured_queries))
    write_batch([request_record(laptop, created_at=NOW - timedelta(hours=n)) for n in range(300)])
    for page, count in zip(pages, counts, strict=True):
        with django_assert_num_queries(count):
            admin_client.get(page)

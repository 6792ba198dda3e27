"""The management API for request logs (read-only, filtered, newest first) and usage stats."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from keys import services as key_services
from logs.models import RequestLog
from logs.services import rebuild_usage

pytestmark = pytest.mark.django_db


def at(day: int, hour: int) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def rows(django_user_model):
    """Five requests by two users over two days; one failed, one streamed, one logged text."""
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    alice_key, _ = key_services.create_key(owner=alice, name="a")
    bob_key, _ = key_services.create_key(owner=bob, name="b")

    def log(n, when, user, key, model, *, units=(0, 0), cost="0", **fields):
        return RequestLog.objects.create(
            created_at=when,
            request_id=f"req_{n}",
            user=user,
            username=user.username,
            api_key=key,
            key_prefix=key.prefix,
            model=model,
            status=fields.pop("status", 200),
            outcome=fields.pop("outcome", "ok"),
            input_units=units[0],
            output_units=units[1],
            cost=Decimal(cost),
            **fields,
        )

    made = {
        "alice": alice,
        "bob": bob,
        "alice_key": alice_key,
        "bob_key": bob_key,
        "logs": [
            log(1, at(1, 9), alice, alice_key, "llama3", units=(10, 20), cost="0.30"),
            log(
                2,
                at(1, 15),
                alice,
                alice_key,
                "gpt-4o",
                units=(100, 50),
                cost="1.50",
                prompt_text="Hello?",
                completion_text="Hi!",
                cache_read_units=80,
                cache_write_units=10,
                reasoning_units=30,
            ),
            log(3, at(2, 8), bob, bob_key, "llama3", units=(5, 5), cost="0.10", stream=True),
            # Its model had no price: logged with its cost unknown.
            log(
                4,
                at(2, 12),
                bob,
                bob_key,
                "gpt-4o",
                status=502,
                outcome="upstream_error",
                cost_unknown=True,
            ),
            log(5, at(2, 23), alice, alice_key, "llama3", status=429, outcome="rate_limited"),
        ],
    }
    rebuild_usage()  # stored here without the log writer, which keeps rollups itself
    return made


def ids(response):
    assert response.status_code == 200, response.content
    return [row["request_id"] for row in response.json()["results"]]


def test_it_lists_logs_newest_first_without_their_text(api, rows):
    response = api.get("/api/v1/logs/")

    assert ids(response) == ["req_5", "req_4", "req_3", "req_2", "req_1"]
    first = response.json()["results"][0]
    assert "prompt_text" not in first and "completion_text" not in first
    assert (first["username"], first["status"], first["outcome"]) == ("alice", 429, "rate_limited")


def test_it_retrieves_a_log_with_its_text(api, rows):
    row = rows["logs"][1]

    data = api.get(f"/api/v1/logs/{row.pk}/").json()

    assert (data["prompt_text"], data["completion_text"]) == ("Hello?", "Hi!")
    assert (data["input_units"], data["output_units"], data["cost"]) == (100, 50, "1.5000000000")
    assert (data["cache_read_units"], data["cache_write_units"], data["reasoning_units"]) == (
        80, 10, 30,
    )  # fmt: skip
    assert data["cost_unknown"] is False
    assert api.get("/api/v1/logs/999999/").status_code == 404


def test_it_paginates_logs(api, rows):
    page = api.get("/api/v1/logs/", {"page_size": 2, "page": 2}).json()

    assert page["count"] == 5
    assert [r["request_id"] for r in page["results"]] == ["req_3", "req_2"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"user": "alice"}, ["req_5", "req_2", "req_1"]),
        ({"model": "gpt-4o"}, ["req_4", "req_2"]),
        ({"outcome": "upstream_error"}, ["req_4"]),
        ({"status": 429}, ["req_5"]),
        ({"stream": "true"}, ["req_3"]),
        ({"request_id": "req_2"}, ["req_2"]),
        ({"since": "2026-03-02T00:00:00Z"}, ["req_5", "req_4", "req_3"]),
        ({"until": "2026-03-01T15:00:00Z"}, ["req_1"]),  # until is exclusive
        ({"since": "2026-03-01T15:00:00Z", "until": "2026-03-02T12:00:00Z"}, ["req_3", "req_2"]),
        ({"since": "2026-03-02"}, ["req_5", "req_4", "req_3"]),
        ({"user": "bob", "model": "llama3"}, ["req_3"]),
        ({"search": "gpt"}, ["req_4", "req_2"]),
        ({"ordering": "cost"}, ["req_5", "req_4", "req_3", "req_1", "req_2"]),
        ({"ordering": "-cache_read_units,id"}, ["req_2", "req_1", "req_3", "req_4", "req_5"]),
        ({"cost_unknown": "true"}, ["req_4"]),
    ],
)
def test_it_filters_logs(api, rows, params, expected):
    assert ids(api.get("/api/v1/logs/", params)) == expected


def test_it_filters_by_user_id_and_key_id_or_prefix(api, rows):
    bob_key = rows["bob_key"]

    assert ids(api.get("/api/v1/logs/", {"user": rows["bob"].pk})) == ["req_4", "req_3"]
    assert ids(api.get("/api/v1/logs/", {"key": bob_key.pk})) == ["req_4", "req_3"]
    assert ids(api.get("/api/v1/logs/", {"key": bob_key.prefix})) == ["req_4", "req_3"]
    assert ids(api.get("/api/v1/logs/", {"key": f"{bob_key.prefix}…"})) == ["req_4", "req_3"]


def test_the_history_of_a_deleted_user_stays_reachable_by_username(api, rows):
    rows["bob"].delete()

    assert ids(api.get("/api/v1/logs/", {"user": "bob"})) == ["req_4", "req_3"]
    assert ids(api.get("/api/v1/logs/", {"key": rows["logs"][2].key_prefix})) == ["req_4", "req_3"]


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"outcome": "meh"}, {"status": "x"}])
def test_bad_filters_are_400(api, rows, params):
    response = api.get("/api/v1/logs/", params)

    assert response.status_code == 400
    assert next(iter(params)) in response.json()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_logs_are_read_only(api, rows, method):
    url = "/api/v1/logs/" if method == "post" else f"/api/v1/logs/{rows['logs'][0].pk}/"

    assert getattr(api, method)(url, {"status": 200}).status_code == 405
    assert RequestLog.objects.count() == 5


# Stats -----------------------------------------------------------------------
def usage(requests, units, cost, errors=0, parts=(0, 0, 0), unknown=0, **names):
    """A usage entry: `units` (in, out), `parts` (cache read, cache write, reasoning)."""
    return {**names, "requests": requests, "input_units": units[0], "output_units": units[1],
            "cost": cost, "errors": errors, "cache_read_units": parts[0],
            "cache_write_units": parts[1], "reasoning_units": parts[2],
            "cost_unknown_requests": unknown}  # fmt: skip


GPT_PARTS = (80, 10, 30)  # req_2's cache read, cache write and reasoning tokens


def test_stats_add_up_every_log(api, rows, django_assert_max_num_queries):
    # The token's checks, the span, the report and by_day (a few per rollup table): none per row.
    with django_assert_max_num_queries(25):
        response = api.get("/api/v1/stats/")

    assert response.status_code == 200
    stats = response.json()
    assert (stats["since"], stats["bucket"]) == ("2026-03-01T09:00:00Z", "day")
    assert stats["totals"] == {
        "requests": 5,
        "input_units": 115,
        "output_units": 75,
        "cost": "1.9000000000",
        "errors": {"rate_limited": 1, "upstream_error": 1},
        "error_count": 2,
        "error_rate": 0.4,
        "cache_read_units": 80,
        "cache_write_units": 10,
        "reasoning_units": 30,
        "cost_unknown_requests": 1,
    }
    assert stats["by_day"] == [
        usage(2, (110, 70), "1.8000000000", parts=GPT_PARTS, date="2026-03-01"),
        usage(3, (5, 5), "0.1000000000", 2, unknown=1, date="2026-03-02"),
    ]
    assert stats["series"][:2] == [
        usage(2, (110, 70), "1.8000000000", parts=GPT_PARTS, start="2026-03-01T00:00:00Z"),
        usage(3, (5, 5), "0.1000000000", 2, unknown=1, start="2026-03-02T00:00:00Z"),
    ]
    assert stats["by_model"] == [
        usage(2, (100, 50), "1.5000000000", 1, parts=GPT_PARTS, unknown=1, model="gpt-4o"),
        usage(3, (15, 25), "0.4000000000", 1, model="llama3"),
    ]
    alice, bob = rows["alice"], rows["bob"]
    assert stats["by_user"] == [
        usage(3, (110, 70), "1.8000000000", 1, parts=GPT_PARTS, user_id=alice.pk,
              username="alice"),
        usage(2, (5, 5), "0.1000000000", 1, unknown=1, user_id=bob.pk, username="bob"),
    ]  # fmt: skip
    alice_key, bob_key = rows["alice_key"], rows["bob_key"]
    assert stats["by_key"] == [
        usage(3, (110, 70), "1.8000000000", 1, parts=GPT_PARTS, api_key_id=alice_key.pk,
              key_prefix=alice_key.prefix, username="alice", name="a"),
        usage(2, (5, 5), "0.1000000000", 1, unknown=1, api_key_id=bob_key.pk,
              key_prefix=bob_key.prefix, username="bob", name="b"),
    ]  # fmt: skip
    assert stats["by_outcome"][0] == {"outcome": "ok", "requests": 3, "share": 0.6}


def test_stats_cover_a_time_range_in_buckets(api, rows):
    stats = api.get(
        "/api/v1/stats/",
        {"since": "2026-03-01T12:00:00Z", "until": "2026-03-02T12:00:00Z", "bucket": "hour"},
    ).json()

    assert stats["since"] == "2026-03-01T12:00:00Z"
    assert stats["until"] == "2026-03-02T12:00:00Z"
    assert stats["totals"]["requests"] == 2
    assert stats["totals"]["cost"] == "1.6000000000"
    assert stats["totals"]["errors"] == {}
    assert len(stats["series"]) == 24
    assert [(s["start"], s["requests"]) for s in stats["series"] if s["requests"]] == [
        ("2026-03-01T15:00:00Z", 1),
        ("2026-03-02T08:00:00Z", 1),
    ]
    assert [d["date"] for d in stats["by_day"]] == ["2026-03-01", "2026-03-02"]
    assert [u["username"] for u in stats["by_user"]] == ["alice", "bob"]


def test_stats_accept_the_user_key_model_and_endpoint_filters(api, rows):
    by_name = api.get("/api/v1/stats/", {"user": "bob"}).json()
    by_id = api.get("/api/v1/stats/", {"user": str(rows["bob"].pk)}).json()
    by_key = api.get("/api/v1/stats/", {"key": f"{rows['alice_key'].prefix}…"}).json()
    by_model = api.get("/api/v1/stats/", {"model": "gpt-4o", "outcome": "ok"}).json()

    assert by_name["totals"]["requests"] == by_id["totals"]["requests"] == 2
    assert [m["model"] for m in by_name["by_model"]] == ["llama3", "gpt-4o"]
    assert by_key["totals"]["requests"] == 3
    assert by_model["totals"]["requests"] == 1 and by_model["totals"]["cost"] == "1.5000000000"


def test_stats_refuse_a_filter_the_rollups_do_not_keep(api, rows):
    response = api.get("/api/v1/stats/", {"status": "502", "bucket": "day"})

    assert response.status_code == 400
    assert "filter /api/v1/logs/" in response.json()["status"][0]


def test_stats_of_nothing_are_zeros(api):
    stats = api.get("/api/v1/stats/").json()

    assert stats["totals"] == {
        "requests": 0,
        "input_units": 0,
        "output_units": 0,
        "cost": "0.0000000000",
        "errors": {},
        "error_count": 0,
        "error_rate": 0.0,
        "cache_read_units": 0,
        "cache_write_units": 0,
        "reasoning_units": 0,
        "cost_unknown_requests": 0,
    }
    assert stats["by_day"] == stats["by_model"] == stats["by_user"] == stats["by_key"] == []
    assert len(stats["series"]) == 1 and stats["series"][0]["requests"] == 0


def test_stats_refuse_a_bad_range(api):
    bad = api.get("/api/v1/stats/", {"until": "not-a-date"})
    backwards = api.get(
        "/api/v1/stats/", {"since": "2026-03-02T00:00Z", "until": "2026-03-01T00:00Z"}
    )
    bucket = api.get("/api/v1/stats/", {"bucket": "month"})

    assert bad.status_code == backwards.status_code == bucket.status_code == 400
    assert "until" in bad.json() and backwards.json() == {"until": ["Must be after since."]}
    assert "bucket" in bucket.json()

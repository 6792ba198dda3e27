"""The management API for request logs (read-only, filtered, newest first) and usage stats."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from keys import services as key_services
from logs.models import RequestLog

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

    return {
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
            ),
            log(3, at(2, 8), bob, bob_key, "llama3", units=(5, 5), cost="0.10", stream=True),
            log(4, at(2, 12), bob, bob_key, "gpt-4o", status=502, outcome="upstream_error"),
            log(5, at(2, 23), alice, alice_key, "llama3", status=429, outcome="rate_limited"),
        ],
    }


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
def test_stats_add_up_every_log(api, rows):
    response = api.get("/api/v1/stats/")

    assert response.status_code == 200
    stats = response.json()
    assert (stats["since"], stats["until"]) == (None, None)
    assert stats["totals"] == {
        "requests": 5,
        "input_units": 115,
        "output_units": 75,
        "cost": "1.9000000000",
        "errors": {"rate_limited": 1, "upstream_error": 1},
    }
    assert stats["by_day"] == [
        {
            "date": "2026-03-01",
            "requests": 2,
            "input_units": 110,
            "output_units": 70,
            "cost": "1.8000000000",
        },
        {
            "date": "2026-03-02",
            "requests": 3,
            "input_units": 5,
            "output_units": 5,
            "cost": "0.1000000000",
        },
    ]
    assert stats["by_model"] == [
        {
            "model": "gpt-4o",
            "requests": 2,
            "input_units": 100,
            "output_units": 50,
            "cost": "1.5000000000",
        },
        {
            "model": "llama3",
            "requests": 3,
            "input_units": 15,
            "output_units": 25,
            "cost": "0.4000000000",
        },
    ]
    assert stats["by_user"] == [
        {
            "username": "alice",
            "requests": 3,
            "input_units": 110,
            "output_units": 70,
            "cost": "1.8000000000",
        },
        {
            "username": "bob",
            "requests": 2,
            "input_units": 5,
            "output_units": 5,
            "cost": "0.1000000000",
        },
    ]


def test_stats_cover_a_time_range(api, rows):
    stats = api.get(
        "/api/v1/stats/", {"since": "2026-03-01T12:00:00Z", "until": "2026-03-02T12:00:00Z"}
    ).json()

    assert stats["since"] == "2026-03-01T12:00:00Z"
    assert stats["until"] == "2026-03-02T12:00:00Z"
    assert stats["totals"]["requests"] == 2
    assert stats["totals"]["cost"] == "1.6000000000"
    assert stats["totals"]["errors"] == {}
    assert [d["date"] for d in stats["by_day"]] == ["2026-03-01", "2026-03-02"]
    assert [u["username"] for u in stats["by_user"]] == ["alice", "bob"]


def test_stats_accept_the_log_filters(api, rows):
    stats = api.get("/api/v1/stats/", {"user": "bob"}).json()

    assert stats["totals"]["requests"] == 2
    assert [m["model"] for m in stats["by_model"]] == ["llama3", "gpt-4o"]


def test_stats_of_nothing_are_zeros(api):
    stats = api.get("/api/v1/stats/").json()

    assert stats["totals"] == {
        "requests": 0,
        "input_units": 0,
        "output_units": 0,
        "cost": "0.0000000000",
        "errors": {},
    }
    assert stats["by_day"] == stats["by_model"] == stats["by_user"] == []


def test_stats_refuse_a_bad_range(api):
    response = api.get("/api/v1/stats/", {"until": "not-a-date"})

    assert response.status_code == 400
    assert "until" in response.json()

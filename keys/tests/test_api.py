"""The management API for consumer keys: secrets once, edits without rotation, rotation."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from keys import services
from keys.models import APIKey, digest
from logs.models import RequestLog
from models_registry.models import Model

pytestmark = pytest.mark.django_db


class RecordingClient(APIClient):
    """Keeps every response body, to check afterwards that no secret leaked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bodies = []

    def request(self, **kwargs):
        response = super().request(**kwargs)
        self.bodies.append(response.content.decode())
        return response


@pytest.fixture
def api_client_class():
    """`api` records every body it receives."""
    return RecordingClient


@pytest.fixture
def llama(db):
    return Model.objects.create(name="llama3")


@pytest.fixture
def key(alice):
    key, _ = services.create_key(owner=alice, name="laptop", rate_limit="60/m")
    return key


def test_it_issues_a_key_and_shows_its_secret_once(api, alice, llama):
    response = api.post(
        "/api/v1/keys/",
        {
            "owner": alice.pk,
            "name": "ci",
            "rate_limit": "60/m,1000/h",
            "allowed_capabilities": ["TEXT", "EMBEDDING"],
            "allowed_models": ["llama3"],
            "log_content": True,
        },
    )

    assert response.status_code == 201
    data = response.json()
    secret = data["secret"]
    key = APIKey.objects.get()
    assert key.digest == digest(secret)
    assert data["prefix"] == key.prefix == secret[:11]
    assert (data["owner"], data["owner_username"]) == (alice.pk, "alice")
    assert data["allowed_models"] == ["llama3"]
    assert (key.name, key.rate_limit, key.log_content) == ("ci", "60/m,1000/h", True)
    assert key.allowed_capabilities == ["TEXT", "EMBEDDING"]
    assert list(key.allowed_models.all()) == [llama]
    assert "no-store" in response["Cache-Control"]
    for url in ("/api/v1/keys/", f"/api/v1/keys/{key.pk}/"):
        body = api.get(url).content.decode()
        assert key.prefix in body
        assert secret not in body
        assert key.digest not in body
        assert '"secret"' not in body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": None}, "owner"),
        ({"owner": 999999, "name": "x"}, "owner"),
        ({"name": ""}, "name"),
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"rate_limit": "60/fortnight"}, "rate_limit"),
        ({"allowed_capabilities": ["TELEPATHY"]}, "allowed_capabilities"),
        ({"allowed_capabilities": "TEXT"}, "allowed_capabilities"),
        ({"allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"expires_at": "next tuesday"}, "expires_at"),
    ],
)
def test_it_answers_bad_input_with_field_errors(api, alice, body, field):
    response = api.post("/api/v1/keys/", {"owner": alice.pk, "name": "x", **body})

    assert response.status_code == 400
    assert field in response.json()
    assert not APIKey.objects.exists()


def test_it_writes_and_reads_token_rates_concurrency_and_a_budget(api, alice):
    response = api.post(
        "/api/v1/keys/",
        {
            "owner": alice.pk,
            "name": "agent",
            "rate_limit": "60/m,100000tok/m,2000000tok/d",
            "max_concurrent": 4,
            "budget": "25",
            "budget_soft": "20.5",
            "budget_period": "week",
        },
    )

    assert response.status_code == 201, response.json()
    key = APIKey.objects.get()
    assert (key.rate_limit, key.max_concurrent) == ("60/m,100000tok/m,2000000tok/d", 4)
    assert (key.budget, key.budget_soft, key.budget_period) == (
        Decimal("25"),
        Decimal("20.5"),
        "week",
    )
    data = api.get(f"/api/v1/keys/{key.pk}/").json()
    assert (data["rate_limit"], data["max_concurrent"]) == ("60/m,100000tok/m,2000000tok/d", 4)
    assert (data["budget"], data["budget_soft"], data["budget_period"]) == (
        "25.0000000000",
        "20.5000000000",
        "week",
    )


def test_a_key_without_them_has_no_budget_a_monthly_period_and_no_concurrency_limit(api, alice):
    data = api.post("/api/v1/keys/", {"owner": alice.pk, "name": "x"}).json()

    assert (data["max_concurrent"], data["budget"], data["budget_soft"]) == (None, None, None)
    assert data["budget_period"] == "month"


def test_patch_sets_and_clears_a_budget_and_the_concurrency_limit(api, key):
    set_ = api.patch(f"/api/v1/keys/{key.pk}/", {"budget": "10", "max_concurrent": 2})
    assert (set_.json()["budget"], set_.json()["max_concurrent"]) == ("10.0000000000", 2)

    response = api.patch(
        f"/api/v1/keys/{key.pk}/", {"budget": None, "max_concurrent": None}, format="json"
    )

    assert response.status_code == 200
    key.refresh_from_db()
    assert (key.budget, key.max_concurrent, key.rate_limit) == (None, None, "60/m")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget": "-1"}, "budget"),
        ({"budget_soft": "-0.01"}, "budget_soft"),
        ({"budget": "lots"}, "budget"),
        ({"budget": "1" * 11}, "budget"),  # more whole digits than the column holds
        ({"budget": "10", "budget_soft": "10.01"}, "budget_soft"),
        ({"budget_period": "year"}, "budget_period"),
        ({"budget_period": None}, "budget_period"),
        ({"rate_limit": "10tok/x"}, "rate_limit"),
        ({"rate_limit": "0tok/m"}, "rate_limit"),
        ({"rate_limit": "60/m,100000tokens/fortnight"}, "rate_limit"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": -2}, "max_concurrent"),
        ({"max_concurrent": "some"}, "max_concurrent"),
    ],
)
def test_it_answers_bad_limits_and_budgets_with_field_errors(api, alice, body, field):
    response = api.post("/api/v1/keys/", {"owner": alice.pk, "name": "x", **body}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not APIKey.objects.exists()


def test_an_alert_above_the_keys_hard_limit_is_refused_on_patch(api, key):
    APIKey.objects.filter(pk=key.pk).update(budget=Decimal("5"))

    response = api.patch(f"/api/v1/keys/{key.pk}/", {"budget_soft": "6"})

    assert response.status_code == 400
    assert response.json() == {"budget_soft": ["The alert must be at or below the hard limit."]}
    key.refresh_from_db()
    assert key.budget_soft is None


def test_patch_edits_a_key_without_rotating_it(api, key, llama):
    before = APIKey.objects.get(pk=key.pk)
    expiry = timezone.now() + timedelta(days=30)

    response = api.patch(
        f"/api/v1/keys/{key.pk}/",
        {
            "name": "renamed",
            "rate_limit": "10/m",
            "allowed_capabilities": ["EMBEDDING"],
            "allowed_models": ["llama3"],
            "log_content": True,
            "expires_at": expiry.isoformat(),
            "is_active": False,
        },
    )

    assert response.status_code == 200
    assert "secret" not in response.json()
    key.refresh_from_db()
    assert (key.digest, key.prefix, key.rotated_at) == (before.digest, before.prefix, None)
    assert (key.name, key.rate_limit, key.log_content, key.is_active) == (
        "renamed",
        "10/m",
        True,
        False,
    )
    assert key.allowed_capabilities == ["EMBEDDING"]
    assert key.expires_at == expiry
    assert response.json()["allowed_models"] == ["llama3"]
    assert list(key.allowed_models.all()) == [llama]


def test_patch_clears_allowed_models_and_expiry(api, key, llama):
    key.allowed_models.set([llama])
    key.expires_at = timezone.now()
    key.save()

    response = api.patch(f"/api/v1/keys/{key.pk}/", {"allowed_models": [], "expires_at": None})

    assert response.json()["allowed_models"] == []
    key.refresh_from_db()
    assert key.expires_at is None
    assert not key.allowed_models.exists()


def test_patch_keeps_the_last_use_recorded_meanwhile(api, key):
    used = timezone.now()
    APIKey.objects.filter(pk=key.pk).update(last_used_at=used)

    api.patch(f"/api/v1/keys/{key.pk}/", {"name": "renamed"})

    key.refresh_from_db()
    assert key.last_used_at == used


def test_put_replaces_a_key_and_keeps_its_secret(api, key, alice):
    before = key.digest

    response = api.put(
        f"/api/v1/keys/{key.pk}/", {"owner": alice.pk, "name": "desk", "rate_limit": ""}
    )

    assert response.status_code == 200
    key.refresh_from_db()
    assert (key.name, key.rate_limit, key.digest) == ("desk", "", before)


def test_a_key_cannot_change_owner(api, key, bob):
    response = api.patch(f"/api/v1/keys/{key.pk}/", {"owner": bob.pk})

    assert response.status_code == 400
    assert "owner" in response.json()
    key.refresh_from_db()
    assert key.owner.username == "alice"


def test_rotation_returns_a_new_secret_once_and_the_old_one_stops_matching(api, key):
    old_digest = key.digest

    response = api.post(f"/api/v1/keys/{key.pk}/rotate/")

    assert response.status_code == 200
    secret = response.json()["secret"]
    key.refresh_from_db()
    assert key.digest == digest(secret) != old_digest
    assert key.rotated_at is not None
    assert response.json()["prefix"] == key.prefix
    assert secret not in api.get(f"/api/v1/keys/{key.pk}/").content.decode()


def test_rotating_an_unknown_key_is_404(api):
    assert api.post("/api/v1/keys/999999/rotate/").status_code == 404


def test_it_lists_filters_searches_and_orders_keys(api, alice, bob):
    services.create_key(owner=alice, name="laptop")
    services.create_key(owner=alice, name="server", is_active=False, log_content=True)
    bob_key, _ = services.create_key(owner=bob, name="phone")

    def names(**params):
        response = api.get("/api/v1/keys/", params)
        assert response.status_code == 200
        return [k["name"] for k in response.json()["results"]]

    assert names() == ["phone", "server", "laptop"]  # newest first
    assert names(owner=alice.pk, ordering="name") == ["laptop", "server"]
    assert names(owner__username="bob") == ["phone"]
    assert names(is_active="false") == ["server"]
    assert names(log_content="true") == ["server"]
    assert names(search=bob_key.prefix) == ["phone"]
    assert names(search="alice", ordering="-name") == ["server", "laptop"]
    assert api.get("/api/v1/keys/", {"page_size": 1}).json()["count"] == 3
    assert api.get("/api/v1/keys/", {"owner": "x"}).status_code == 400


def test_it_retrieves_a_key_and_404s_an_unknown_one(api, key):
    data = api.get(f"/api/v1/keys/{key.pk}/").json()

    assert (data["id"], data["name"], data["rate_limit"]) == (key.pk, "laptop", "60/m")
    assert "digest" not in data and "secret" not in data
    assert api.get("/api/v1/keys/999999/").status_code == 404


def test_each_key_says_whether_it_authenticates_now(api, key, alice, bob):
    services.create_key(owner=alice, name="old", expires_at=timezone.now() + timedelta(seconds=1))
    APIKey.objects.filter(name="old").update(expires_at=timezone.now() - timedelta(days=1))
    services.create_key(owner=bob, name="bob's")
    bob.is_active = False
    bob.save()

    states = {row["name"]: row["state"] for row in api.get("/api/v1/keys/").json()["results"]}

    assert states == {"laptop": "usable", "old": "expired", "bob's": "owner inactive"}


def test_deleting_a_key_keeps_its_logs(api, key):
    RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req_1",
        user=key.owner,
        username="alice",
        api_key=key,
        key_prefix=key.prefix,
        status=200,
        outcome="ok",
    )

    assert api.delete(f"/api/v1/keys/{key.pk}/").status_code == 204

    assert not APIKey.objects.exists()
    log = RequestLog.objects.get()
    assert (log.api_key, log.key_prefix) == (None, key.prefix)


def test_no_response_ever_contains_a_digest_or_a_secret_except_its_issuing_one(api, alice):
    created = api.post("/api/v1/keys/", {"owner": alice.pk, "name": "ci"}).json()
    key_id = created["id"]
    rotated = api.post(f"/api/v1/keys/{key_id}/rotate/").json()
    api.patch(f"/api/v1/keys/{key_id}/", {"name": "renamed"})
    api.put(f"/api/v1/keys/{key_id}/", {"owner": alice.pk, "name": "again"})
    api.get("/api/v1/keys/")
    api.get(f"/api/v1/keys/{key_id}/")
    api.get("/api/v1/users/")
    api.get("/api/v1/schema/")
    key = APIKey.objects.get()

    secrets = (created["secret"], rotated["secret"])
    assert key.digest == digest(rotated["secret"])
    for body in api.bodies:
        assert key.digest not in body
        assert digest(created["secret"]) not in body
        shown = [secret for secret in secrets if secret in body]
        assert len(shown) <= 1
    assert sum(created["secret"] in body for body in api.bodies) == 1
    assert sum(rotated["secret"] in body for body in api.bodies) == 1

"""The management API's access rules (every endpoint, every caller) and its users resource."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import DataError
from django.db.models import F
from rest_framework.test import APIClient

from accounts import services
from accounts.models import APIToken, User
from aethergate.testing import deploy, make_model, make_world
from endpoints.models import Endpoint
from keys import services as key_services
from keys.models import APIKey
from logs.models import RequestLog

pytestmark = pytest.mark.django_db

MASTER = "master-key-for-tests-0123456789abcdef"


@pytest.fixture
def world(db):
    """One of each object, so that every URL has something to show."""
    return make_world()


@pytest.fixture
def alice(world):
    return world["user"]


def read_urls(world):
    return [
        "/api/v1/",
        "/api/v1/users/",
        f"/api/v1/users/{world['user'].pk}/",
        "/api/v1/keys/",
        f"/api/v1/keys/{world['key'].pk}/",
        "/api/v1/endpoints/",
        f"/api/v1/endpoints/{world['endpoint'].pk}/",
        "/api/v1/models/",
        f"/api/v1/models/{world['model'].pk}/",
        "/api/v1/logs/",
        f"/api/v1/logs/{world['log'].pk}/",
        "/api/v1/stats/",
        "/api/v1/schema/",
        "/api/v1/docs/",
    ]


def writes(world):
    """One successful write of each kind: (method, url, body, expected status)."""
    user, key, endpoint = world["user"], world["key"], world["endpoint"]
    return [
        ("post", "/api/v1/users/", {"username": "bob"}, 201),
        ("patch", f"/api/v1/users/{user.pk}/", {"organization": "Initech"}, 200),
        ("post", f"/api/v1/users/{user.pk}/credit/", {"amount": "1"}, 200),
        ("post", "/api/v1/keys/", {"owner": user.pk, "name": "ci"}, 201),
        ("put", f"/api/v1/keys/{key.pk}/", {"owner": user.pk, "name": "renamed"}, 200),
        ("post", f"/api/v1/keys/{key.pk}/rotate/", None, 200),
        (
            "post",
            "/api/v1/models/",
            {"name": "m2", "deployments": [{"endpoint": endpoint.name, "upstream_name": "m2"}]},
            201,
        ),
        ("delete", f"/api/v1/endpoints/{endpoint.pk}/", None, 204),
    ]


def call(client, method, url, body=None, **extra):
    return getattr(client, method)(url, body, format="json", **extra)


# Who may call ----------------------------------------------------------------
def test_anonymous_callers_get_401_with_a_challenge_everywhere(world):
    client = APIClient()

    for url in read_urls(world)[:-1]:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"] == 'Bearer realm="api"', url
    for method, url, body, _ in writes(world):
        assert call(client, method, url, body).status_code == 401, url
    assert User.objects.filter(username="bob").count() == 0


def test_consumers_get_403_everywhere(world, alice):
    client = APIClient()
    client.force_login(alice)

    for url in read_urls(world):
        assert client.get(url).status_code == 403, url
    for method, url, body, _ in writes(world):
        assert call(client, method, url, body).status_code == 403, url
    assert not User.objects.filter(username="bob").exists()
    assert Endpoint.objects.exists()


def test_a_consumer_key_is_not_a_management_token(world, bearer):
    _, secret = key_services.create_key(owner=world["user"], name="sdk")

    assert bearer(secret).get("/api/v1/users/").status_code == 401


def test_a_staff_token_may_call_everything(world, api):
    for url in read_urls(world):
        assert api.get(url).status_code == 200, url
    for method, url, body, status in writes(world):
        assert call(api, method, url, body).status_code == status, url
    assert User.objects.filter(username="bob").exists()
    assert not Endpoint.objects.exists()


def test_the_master_key_may_call_everything(world, settings):
    settings.MASTER_API_KEY = MASTER
    client = APIClient(HTTP_X_ADMIN_KEY=MASTER)

    for url in read_urls(world):
        assert client.get(url).status_code == 200, url
    for method, url, body, status in writes(world):
        assert call(client, method, url, body).status_code == status, url
    assert User.objects.filter(username="bob").exists()


@pytest.mark.parametrize("presented", ["wrong", MASTER[:-1], MASTER + "x", "", "clé-fausse"])
def test_a_wrong_master_key_is_refused(world, settings, presented):
    settings.MASTER_API_KEY = MASTER

    response = APIClient(HTTP_X_ADMIN_KEY=presented).get("/api/v1/users/")

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid admin key."}


def test_an_empty_master_key_setting_refuses_every_admin_key(world, settings):
    settings.MASTER_API_KEY = ""

    for presented in ("", "anything"):
        client = APIClient(HTTP_X_ADMIN_KEY=presented)
        assert client.get("/api/v1/users/").status_code == 401
        assert client.post("/api/v1/users/", {"username": "x"}).status_code == 401
    assert not User.objects.filter(username="x").exists()


def test_a_staff_session_needs_a_csrf_token_for_writes(world, ops):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(ops)

    for url in read_urls(world):
        assert client.get(url).status_code == 200, url
    for method, url, body, _ in writes(world):
        response = call(client, method, url, body)
        assert response.status_code == 403, url
        assert "CSRF" in response.json()["detail"]
    assert not User.objects.filter(username="bob").exists()


def test_a_staff_session_with_a_csrf_token_may_write(world, ops):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(ops)
    client.get("/api/v1/users/", HTTP_ACCEPT="text/html")  # the browsable API sets the cookie
    csrf = client.cookies["csrftoken"].value

    for method, url, body, status in writes(world):
        response = call(client, method, url, body, HTTP_X_CSRFTOKEN=csrf)
        assert response.status_code == status, url
    assert User.objects.filter(username="bob").exists()


def test_an_inactive_staff_session_is_refused(world, ops):
    client = APIClient()
    client.force_login(ops)
    ops.is_active = False
    ops.save()

    assert client.get("/api/v1/users/").status_code in (401, 403)


def test_responses_are_never_cached(api, alice):
    assert "no-store" in api.get("/api/v1/users/")["Cache-Control"]


# Schema ----------------------------------------------------------------------
def test_the_openapi_schema_validates_without_warnings(tmp_path):
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml")
    )

    assert "/api/v1/keys/{id}/rotate/" in (tmp_path / "schema.yml").read_text()


def test_the_docs_page_sends_a_browser_without_credentials_to_the_admin_login(world):
    response = APIClient().get("/api/v1/docs/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/api/v1/docs/"


def test_the_schema_and_docs_are_served_to_staff(api):
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    docs = api.get("/api/v1/docs/")

    assert schema.status_code == 200
    assert "/api/v1/users/{id}/credit/" in schema.json()["paths"]
    assert docs.status_code == 200
    assert "swagger-ui" in docs.content.decode()


# Users -----------------------------------------------------------------------
def test_it_lists_users_paginated(api, django_user_model):
    for n in range(5):
        django_user_model.objects.create_user(f"user{n}")

    page = api.get("/api/v1/users/", {"page_size": 2, "page": 2}).json()

    assert page["count"] == 6  # with ops
    assert [u["username"] for u in page["results"]] == ["user1", "user2"]  # after ops, user0
    assert page["next"] and page["previous"]


def test_it_caps_the_page_size(api, django_user_model):
    User.objects.bulk_create(User(username=f"u{n:03}") for n in range(501))

    page = api.get("/api/v1/users/", {"page_size": 1000}).json()

    assert len(page["results"]) == 500


def test_it_filters_searches_and_orders_users(api, alice, django_user_model):
    django_user_model.objects.create_user("bob", organization="Initech", is_active=False)
    django_user_model.objects.create_user("carol", organization="Acme", balance=Decimal("50"))

    def names(**params):
        return [u["username"] for u in api.get("/api/v1/users/", params).json()["results"]]

    assert names(organization="Acme") == ["alice", "carol"]
    assert names(is_active="false") == ["bob"]
    assert names(is_staff="true") == ["ops"]
    assert names(search="initech") == ["bob"]
    assert names(search="alice@example") == ["alice"]
    assert names(ordering="-balance", organization="Acme") == ["carol", "alice"]


def test_it_retrieves_a_user_without_secrets(api, alice):
    data = api.get(f"/api/v1/users/{alice.pk}/").json()

    assert data["username"] == "alice"
    assert data["balance"] == "10.0000000000"
    assert "password" not in data
    assert api.get("/api/v1/users/999999/").status_code == 404
    assert api.get("/api/v1/users/nope/").status_code == 404


def test_it_creates_a_user_without_a_usable_password(api):
    response = api.post(
        "/api/v1/users/", {"username": "dave", "organization": "Acme", "balance": "12.50"}
    )

    assert response.status_code == 201
    dave = User.objects.get(username="dave")
    assert response.json()["id"] == dave.pk
    assert (dave.organization, dave.balance, dave.is_staff) == ("Acme", Decimal("12.5"), False)
    assert not dave.has_usable_password()


def test_it_creates_a_user_with_a_password_it_never_returns(api):
    response = api.post("/api/v1/users/", {"username": "erin", "password": "a-long-pass-phrase"})

    assert response.status_code == 201
    assert "password" not in response.json()
    assert User.objects.get(username="erin").check_password("a-long-pass-phrase")


def test_it_validates_passwords_like_the_admin(api):
    response = api.post("/api/v1/users/", {"username": "frank", "password": "frank"})

    assert response.status_code == 400
    assert "password" in response.json()
    assert not User.objects.filter(username="frank").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": ""}, "username"),
        ({"username": "bad name!"}, "username"),
        ({"username": "gina", "email": "not-an-email"}, "email"),
        ({"username": "gina", "balance": "-1"}, "balance"),
        ({"username": "gina", "balance": "abc"}, "balance"),
        ({"username": "gina", "is_active": "perhaps"}, "is_active"),
    ],
)
def test_it_answers_bad_input_with_field_errors(api, body, field):
    response = api.post("/api/v1/users/", body)

    assert response.status_code == 400
    assert field in response.json()
    assert not User.objects.filter(username="gina").exists()


def test_a_duplicate_username_is_a_conflict(api, alice):
    response = api.post("/api/v1/users/", {"username": "alice"})

    assert response.status_code == 409
    assert response.json() == {"username": ["A user with that username already exists."]}
    renamed = api.patch(f"/api/v1/users/{alice.pk}/", {"username": "ops"})
    assert renamed.status_code == 409


def test_a_duplicate_with_other_errors_is_a_plain_400(api, alice):
    response = api.post("/api/v1/users/", {"username": "alice", "email": "nope"})

    assert response.status_code == 400


def test_patch_changes_only_the_fields_sent(api, alice):
    # A charge settles after the client read the user: PATCH must not undo it.
    User.objects.filter(pk=alice.pk).update(balance=F("balance") - Decimal("0.25"))

    response = api.patch(f"/api/v1/users/{alice.pk}/", {"organization": "Initech"})

    assert response.status_code == 200
    alice.refresh_from_db()
    assert (alice.organization, alice.balance) == ("Initech", Decimal("9.75"))
    assert response.json()["balance"] == "9.7500000000"


def test_patch_sets_an_absolute_balance(api, alice):
    response = api.patch(f"/api/v1/users/{alice.pk}/", {"balance": "25"})

    assert response.status_code == 200
    alice.refresh_from_db()
    assert alice.balance == Decimal("25")


def test_patch_can_turn_prepaid_billing_off(api, alice):
    assert api.patch(f"/api/v1/users/{alice.pk}/", {"balance": None}).status_code == 200

    alice.refresh_from_db()
    assert alice.balance is None


def test_a_balance_cannot_be_set_below_zero_but_a_spent_one_may_stay(api, alice):
    refused = api.patch(f"/api/v1/users/{alice.pk}/", {"balance": "-5"})
    User.objects.filter(pk=alice.pk).update(balance=Decimal("-0.25"))
    kept = api.patch(f"/api/v1/users/{alice.pk}/", {"balance": "-0.25", "organization": "X"})

    assert refused.status_code == 400
    assert refused.json() == {"balance": ["A balance cannot be set below zero."]}
    assert kept.status_code == 200
    alice.refresh_from_db()
    assert (alice.balance, alice.organization) == (Decimal("-0.25"), "X")


def test_it_writes_and_reads_a_users_budget(api, alice):
    created = api.post(
        "/api/v1/users/",
        {"username": "gina", "budget": "100", "budget_soft": "80", "budget_period": "day"},
    )
    patched = api.patch(
        f"/api/v1/users/{alice.pk}/", {"budget": "0.5", "budget_period": "none"}, format="json"
    )

    assert created.status_code == 201, created.json()
    gina = User.objects.get(username="gina")
    assert (gina.budget, gina.budget_soft, gina.budget_period) == (
        Decimal("100"),
        Decimal("80"),
        "day",
    )
    assert (created.json()["budget"], created.json()["budget_soft"]) == (
        "100.0000000000",
        "80.0000000000",
    )
    assert patched.status_code == 200
    alice.refresh_from_db()
    assert (alice.budget, alice.budget_soft, alice.budget_period) == (Decimal("0.5"), None, "none")
    assert alice.balance == Decimal("10")  # the prepaid balance is another thing
    listed = api.get("/api/v1/users/", {"username": "alice"}).json()["results"]
    assert (listed[0]["budget"], listed[0]["budget_period"]) == ("0.5000000000", "none")


def test_a_new_user_has_no_budget_and_a_monthly_period(api):
    data = api.post("/api/v1/users/", {"username": "gina"}).json()

    assert (data["budget"], data["budget_soft"], data["budget_period"]) == (None, None, "month")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget": "-5"}, "budget"),
        ({"budget_soft": "-5"}, "budget_soft"),
        ({"budget": "plenty"}, "budget"),
        ({"budget": "0.00000000001"}, "budget"),  # 11 decimals
        ({"budget": "5", "budget_soft": "6"}, "budget_soft"),
        ({"budget_period": "quarter"}, "budget_period"),
    ],
)
def test_it_answers_a_bad_budget_with_field_errors(api, alice, body, field):
    response = api.patch(f"/api/v1/users/{alice.pk}/", body, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    alice.refresh_from_db()
    assert (alice.budget, alice.budget_soft, alice.budget_period) == (None, None, "month")


def test_put_replaces_the_given_fields(api, alice):
    response = api.put(
        f"/api/v1/users/{alice.pk}/",
        {"username": "alice2", "email": "", "organization": "", "is_active": False},
    )

    assert response.status_code == 200
    alice.refresh_from_db()
    assert (alice.username, alice.email, alice.organization) == ("alice2", "", "")
    assert not alice.is_active
    assert alice.balance == Decimal("10")  # not sent: unchanged


def test_put_requires_the_username(api, alice):
    response = api.put(f"/api/v1/users/{alice.pk}/", {"organization": "X"})

    assert response.status_code == 400
    assert "username" in response.json()


def test_not_even_a_superuser_makes_a_superuser_through_the_api(root_api, alice):
    root_api.patch(f"/api/v1/users/{alice.pk}/", {"is_superuser": True, "is_staff": True})

    alice.refresh_from_db()
    assert alice.is_staff and not alice.is_superuser


def test_patch_sets_a_new_password(root_api, alice):
    root_api.patch(f"/api/v1/users/{alice.pk}/", {"password": "another-long-phrase"})

    alice.refresh_from_db()
    assert alice.check_password("another-long-phrase")


def test_deleting_a_user_deletes_their_keys_and_keeps_their_logs(api, world):
    alice = world["user"]

    response = api.delete(f"/api/v1/users/{alice.pk}/")

    assert response.status_code == 204
    assert not User.objects.filter(pk=alice.pk).exists()
    assert not APIKey.objects.exists()
    log = RequestLog.objects.get()
    assert (log.user, log.username) == (None, "alice")
    assert api.delete(f"/api/v1/users/{alice.pk}/").status_code == 404


# Credit ------------------------------------------------------------------------
def test_credit_adds_to_the_balance_and_keeps_charges_made_meanwhile(api, alice):
    # The user as a script read it: 10. A charge settles before the top-up.
    User.objects.filter(pk=alice.pk).update(balance=F("balance") - Decimal("0.3"))

    response = api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": "5.25"})

    assert response.status_code == 200
    assert response.json()["balance"] == "14.9500000000"
    alice.refresh_from_db()
    assert alice.balance == Decimal("14.95")


def test_credit_accepts_a_negative_amount(api, alice):
    api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": "-2.5"})

    alice.refresh_from_db()
    assert alice.balance == Decimal("7.5")


@pytest.mark.parametrize("amount", ["0", "0.00", "abc", "", None])
def test_credit_refuses_a_zero_or_non_numeric_amount(api, alice, amount):
    response = api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": amount})

    assert response.status_code == 400
    assert "amount" in response.json()
    alice.refresh_from_db()
    assert alice.balance == Decimal("10")


def test_credit_refuses_a_user_without_prepaid_billing(api, django_user_model):
    postpaid = django_user_model.objects.create_user("pat")

    response = api.post(f"/api/v1/users/{postpaid.pk}/credit/", {"amount": "5"})

    assert response.status_code == 409
    assert "no prepaid balance" in response.json()["balance"][0]
    postpaid.refresh_from_db()
    assert postpaid.balance is None


def test_credit_of_an_unknown_user_is_404(api):
    assert api.post("/api/v1/users/999999/credit/", {"amount": "5"}).status_code == 404


def test_credit_bumps_the_change_marker_the_gateway_polls(api, alice):
    before = User.objects.get(pk=alice.pk).updated_at

    api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": "1"})

    assert User.objects.get(pk=alice.pk).updated_at > before


def test_no_token_digest_appears_in_any_response(api, world, ops):
    token = APIToken.objects.get(user=ops)
    bodies = [api.get(url).content.decode() for url in read_urls(world)]

    assert not any(token.digest in body for body in bodies)


def test_a_value_the_database_cannot_hold_is_a_400(api, alice, monkeypatch):
    # e.g. a credit that overflows numeric(20, 10) on PostgreSQL.
    def overflow(**_kwargs):
        raise DataError("numeric field overflow")

    monkeypatch.setattr(services, "credit_balance", overflow)

    response = api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": "1"})

    assert response.status_code == 400


def test_the_browsable_api_renders_every_page_for_staff(world, ops):
    client = APIClient()
    client.force_login(ops)
    key = world["key"]

    for url in read_urls(world)[:-2]:
        response = client.get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, url
        assert "text/html" in response["Content-Type"], url
        assert key.digest not in response.content.decode(), url


def test_list_queries_do_not_grow_with_the_rows(api, world, django_assert_max_num_queries):
    owner = world["user"]
    for n in range(10):
        key, _ = key_services.create_key(owner=owner, name=f"k{n}")
        key.allowed_models.set([world["model"]])
        model = make_model(f"m{n}", "x", endpoint=world["endpoint"])
        deploy(model, world["endpoint"], "x-standby", priority=1)

    for url in ("/api/v1/keys/", "/api/v1/models/", "/api/v1/users/", "/api/v1/logs/"):
        # Two of these, once per request, load the caller's permissions (direct
        # and through groups) for the model-permission check.
        with django_assert_max_num_queries(8):
            assert api.get(url).status_code == 200

"""Staff API tokens: issued once, stored as a digest, revoked and expired, admin and commands."""

import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import APIToken, token_digest

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r'<code class="api-token-secret">(agt-[A-Za-z0-9_-]+)</code>')
USERS_URL = "/api/v1/users/"


@pytest.fixture
def issued(ops):
    return services.create_api_token(user=ops, name="ci")


def test_it_stores_only_a_digest_and_a_display_prefix(issued):
    token, secret = issued

    token.refresh_from_db()
    assert secret.startswith("agt-") and len(secret) > 40
    assert token.digest == token_digest(secret)
    assert token.prefix == secret[:12]
    stored = [str(v) for v in APIToken.objects.values_list().get()]
    assert secret not in stored
    assert not any(secret[12:] in value for value in stored)


def test_it_refuses_to_issue_a_token_to_a_consumer(django_user_model):
    consumer = django_user_model.objects.create_user("alice")

    with pytest.raises(ValidationError, match="staff"):
        services.create_api_token(user=consumer, name="nope")

    assert not APIToken.objects.exists()


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer"])
def test_it_authenticates_with_either_scheme(issued, scheme, bearer):
    response = bearer(issued[1], scheme).get(USERS_URL)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    ["Bearer agt-not-a-real-token", "Bearer", "Token a b", "Bearer ag-a-consumer-key"],
)
def test_it_refuses_unknown_or_malformed_tokens_with_a_challenge(issued, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(USERS_URL)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_it_refuses_a_revoked_token(issued, bearer):
    token, secret = issued

    assert services.revoke_api_token(token=token) is True
    assert services.revoke_api_token(token=token) is False

    assert token.revoked_at is not None
    assert bearer(secret).get(USERS_URL).status_code == 401


def test_it_refuses_an_expired_token(ops, bearer):
    _, secret = services.create_api_token(
        user=ops, name="old", expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert bearer(secret).get(USERS_URL).status_code == 401


def test_it_refuses_the_token_of_a_deactivated_user(ops, issued, bearer):
    ops.is_active = False
    ops.save()

    assert bearer(issued[1]).get(USERS_URL).status_code == 401


def test_it_forbids_the_token_of_a_user_no_longer_staff(ops, issued, bearer):
    ops.is_staff = False
    ops.save()

    assert bearer(issued[1]).get(USERS_URL).status_code == 403


def test_it_deletes_tokens_with_their_user(ops, issued):
    ops.delete()

    assert not APIToken.objects.exists()


def test_it_records_the_last_use_at_most_once_a_minute(issued):
    token, secret = issued
    start = timezone.now()

    assert services.authenticate_api_token(secret, now=start) == token
    token.refresh_from_db()
    assert token.last_used_at == start

    services.authenticate_api_token(secret, now=start + timedelta(seconds=59))
    token.refresh_from_db()
    assert token.last_used_at == start

    later = start + timedelta(seconds=61)
    services.authenticate_api_token(secret, now=later)
    token.refresh_from_db()
    assert token.last_used_at == later


def test_a_request_records_the_last_use_and_the_next_one_does_not_rewrite_it(issued, bearer):
    token, secret = issued
    client = bearer(secret)

    client.get(USERS_URL)
    token.refresh_from_db()
    first = token.last_used_at
    client.get(USERS_URL)
    token.refresh_from_db()

    assert first is not None
    assert token.last_used_at == first


# Commands ---------------------------------------------------------------------
def test_create_api_token_prints_the_token_alone_on_stdout(ops, capsys, bearer):
    call_command("create_api_token", "--user", "ops", "--name", "deploy")

    out, err = capsys.readouterr()
    secret = out.strip()
    token = APIToken.objects.get()
    assert token.digest == token_digest(secret)
    assert (token.user, token.name, token.expires_at) == (ops, "deploy", None)
    assert "will not be shown again" in err
    assert bearer(secret).get(USERS_URL).status_code == 200


def test_create_api_token_can_set_an_expiry(ops, capsys):
    call_command("create_api_token", "--user", "ops", "--name", "ci", "--expires-in-days", "7")

    expires_at = APIToken.objects.get().expires_at
    assert timedelta(days=6, hours=23) < expires_at - timezone.now() <= timedelta(days=7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody", "--name", "x"], 'There is no user "nobody"'),
        (["--user", "alice", "--name", "x"], "only be issued to active staff"),
        (["--user", "ops", "--name", ""], "cannot be blank"),
        (["--user", "ops", "--name", "x", "--expires-in-days", "0"], "at least 1"),
    ],
)
def test_create_api_token_refuses_bad_input(ops, django_user_model, args, message):
    django_user_model.objects.create_user("alice")

    with pytest.raises(CommandError, match=message):
        call_command("create_api_token", *args)

    assert not APIToken.objects.exists()


def test_create_api_token_errors_exit_with_status_1(ops):
    # manage.py turns a CommandError into this exit status.
    with pytest.raises(CommandError) as error:
        call_command("create_api_token", "--user", "ops")  # --name missing

    assert error.value.returncode == 1


@pytest.mark.parametrize("by", ["id", "prefix", "prefix…", "token"])
def test_revoke_api_token_finds_a_token_by_id_prefix_or_the_token(issued, capsys, by, bearer):
    token, secret = issued
    reference = {
        "id": str(token.pk),
        "prefix": token.prefix,
        "prefix…": f"{token.prefix}…",
        "token": secret,
    }[by]

    call_command("revoke_api_token", reference)

    token.refresh_from_db()
    assert token.is_revoked
    assert f"Revoked API token {token.prefix}… (ci) of ops." in capsys.readouterr().out
    assert bearer(secret).get(USERS_URL).status_code == 401


def test_revoke_api_token_says_when_a_token_was_revoked_already(issued, capsys):
    services.revoke_api_token(token=issued[0])

    call_command("revoke_api_token", str(issued[0].pk))

    assert "already revoked" in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["999", "agt-nothing0", "agt-" + "x" * 43])
def test_revoke_api_token_refuses_an_unknown_token(issued, reference):
    with pytest.raises(CommandError, match="No API token matches"):
        call_command("revoke_api_token", reference)

    issued[0].refresh_from_db()
    assert not issued[0].is_revoked


def test_revoke_api_token_refuses_an_ambiguous_prefix(ops, issued):
    other, _ = services.create_api_token(user=ops, name="other")
    APIToken.objects.filter(pk=other.pk).update(prefix=issued[0].prefix)

    with pytest.raises(CommandError, match="Several API tokens"):
        call_command("revoke_api_token", issued[0].prefix)


# Admin ------------------------------------------------------------------------
def test_a_whole_token_in_the_admin_search_is_not_looked_up_or_echoed(admin_client, issued):
    token, secret = issued
    changelist = reverse("admin:accounts_apitoken_changelist")

    response = admin_client.get(changelist, {"q": secret})
    page = admin_client.get(response["Location"]).content.decode()
    by_prefix = admin_client.get(changelist, {"q": token.prefix})

    assert (response.status_code, response["Location"]) == (302, changelist)
    assert secret not in page
    assert "not searched here" in page
    assert list(by_prefix.context["cl"].result_list) == [token]


def test_admin_shows_a_new_token_once_and_stores_only_its_digest(admin_client, ops, bearer):
    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": ops.pk, "name": "billing"}
    )

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    secret = TOKEN.search(page)[1]
    assert "will not be shown again" in page
    token = APIToken.objects.get()
    assert (token.user, token.name, token.digest) == (ops, "billing", token_digest(secret))
    for url in (
        reverse("admin:accounts_apitoken_change", args=[token.pk]),
        reverse("admin:accounts_apitoken_changelist"),
    ):
        shown = admin_client.get(url).content.decode()
        assert token.prefix in shown
        assert secret not in shown
        assert token.digest not in shown
    assert bearer(secret).get(USERS_URL).status_code == 200


def test_admin_offers_only_active_staff_as_token_owners(admin_client, ops, django_user_model):
    django_user_model.objects.create_user("alice")

    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"),
        {"user": django_user_model.objects.get(username="alice").pk, "name": "x"},
    )

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not APIToken.objects.exists()


def test_admin_revokes_selected_tokens(admin_client, issued, bearer):
    token, secret = issued

    response = admin_client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [token.pk]},
        follow=True,
    )

    assert "1 API token revoked." in response.content.decode()
    token.refresh_from_db()
    assert token.is_revoked
    assert bearer(secret).get(USERS_URL).status_code == 401

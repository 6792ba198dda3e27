"""Account services (users, balances, tokens), and every entry point going through them."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts import services
from accounts.models import APIToken, User, looks_like_token
from keys.models import looks_like_secret
from logs.models import AuditEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", balance=Decimal("10"))


@pytest.fixture
def calls(monkeypatch):
    """`calls(name)`: wrap accounts.services.`name`, returning the list of its calls' kwargs."""

    def spy(name):
        made = []
        real = getattr(services, name)

        def recording(*args, **kwargs):
            made.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(services, name, recording)
        return made

    return spy


# --------------------------------------------------------------------------- create_user


def test_create_user_saves_a_consumer_without_a_usable_password():
    user = services.create_user(username="carol", organization="Acme", balance="12.50")

    user.refresh_from_db()
    assert (user.username, user.organization, user.balance) == ("carol", "Acme", Decimal("12.5"))
    assert not user.has_usable_password()
    assert user.is_active and not user.is_staff and not user.is_superuser


def test_create_user_sets_a_valid_password_and_staff_flag():
    user = services.create_user(username="ops", password="a-long-staff-passphrase", is_staff=True)

    user.refresh_from_db()
    assert user.is_staff and not user.is_superuser
    assert user.check_password("a-long-staff-passphrase")


def test_create_user_reports_every_fault_by_field_and_saves_nothing(alice):
    with pytest.raises(ValidationError) as error:
        services.create_user(username="alice", email="nope", balance="-1", password="alice")

    faults = error.value.message_dict
    assert set(faults) == {"username", "email", "balance", "password"}
    assert faults["balance"] == ["A balance cannot be set below zero."]
    assert User.objects.count() == 1


def test_create_user_reports_an_unreadable_balance_once():
    with pytest.raises(ValidationError) as error:
        services.create_user(username="carol", balance="lots")

    assert error.value.message_dict == {"balance": ["“lots” value must be a decimal number."]}
    assert not User.objects.exists()


def test_create_user_saves_a_budget_and_refuses_an_alert_above_it():
    user = services.create_user(
        username="carol", budget="50", budget_soft="40", budget_period="week"
    )
    with pytest.raises(ValidationError) as error:
        services.create_user(username="dave", budget="5", budget_soft="6")

    user.refresh_from_db()
    assert (user.budget, user.budget_soft, user.budget_period) == (
        Decimal("50"),
        Decimal("40"),
        "week",
    )
    assert error.value.message_dict == {
        "budget_soft": ["The alert must be at or below the hard limit."]
    }
    assert not User.objects.filter(username="dave").exists()


# --------------------------------------------------------------------------- balances


@pytest.mark.parametrize(
    ("new", "current"),
    [(None, None), (Decimal(0), None), (Decimal("5"), Decimal("-1")), (Decimal("-1"), Decimal(-1))],
)
def test_validate_balance_allows_zero_and_above_or_a_spent_balance_kept(new, current):
    services.validate_balance(new, current=current)  # raises nothing


@pytest.mark.parametrize(("new", "current"), [(Decimal("-0.01"), None), (Decimal(-2), Decimal(-1))])
def test_validate_balance_refuses_setting_one_below_zero(new, current):
    with pytest.raises(ValidationError) as error:
        services.validate_balance(new, current=current)

    assert error.value.code == "negative_balance"
    assert error.value.messages == ["A balance cannot be set below zero."]


def test_edit_balance_refuses_below_zero_and_writes_nothing(alice):
    with pytest.raises(ValidationError, match="cannot be set below zero"):
        services.edit_balance(user=alice, seen=None, new=Decimal("-5"))

    alice.refresh_from_db()
    assert alice.balance == Decimal("10")
    assert not AuditEntry.objects.filter(action="update").exists()


def test_edit_balance_keeps_a_spent_balance_the_staff_saw(alice):
    User.objects.filter(pk=alice.pk).update(balance=Decimal("-0.25"))

    services.edit_balance(user=alice, seen=Decimal("-0.25"), new=Decimal("-0.25"))

    assert alice.balance == Decimal("-0.25")


def test_edit_balance_leaves_the_stored_balance_on_the_user(alice):
    User.objects.filter(pk=alice.pk).update(balance=Decimal("9.5"))  # a charge meanwhile

    services.edit_balance(user=alice, seen=Decimal("10"), new=Decimal("20"))

    assert alice.balance == Decimal("19.5")
    alice.refresh_from_db()
    assert alice.balance == Decimal("19.5")


# --------------------------------------------------------------------------- API tokens


def test_find_api_token_by_id_prefix_or_whole_token(ops):
    token, secret = services.create_api_token(user=ops, name="ci")

    for reference in (str(token.pk), token.prefix, f"{token.prefix}…", f" {secret}\n"):
        assert services.find_api_token(reference) == token


def test_find_api_token_never_echoes_a_whole_token(ops):
    _, secret = services.create_api_token(user=ops, name="ci")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")

    with pytest.raises(services.TokenNotFound) as error:
        services.find_api_token(wrong)

    assert str(error.value) == f"No API token matches {wrong[:12]!r}."


def test_a_whole_token_and_a_whole_key_are_told_from_their_prefixes(ops):
    token, secret = services.create_api_token(user=ops, name="ci")

    assert looks_like_token(secret)
    assert not looks_like_token(token.prefix)
    assert not looks_like_secret(secret)  # a token is not a consumer key
    assert not looks_like_token("agt-")


# --------------------------------------------------------------------------- entry points


def test_the_admin_creates_users_through_the_service(admin_client, calls):
    made = calls("create_user")

    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {"username": "carol", "balance": "3", "usable_password": "false"},
    )

    assert response.status_code == 302
    carol = User.objects.get(username="carol")
    assert response["Location"] == reverse("admin:accounts_user_change", args=[carol.pk])
    assert made == [
        {
            "username": "carol",
            "email": "",
            "organization": "",
            "balance": Decimal("3"),
            "password": None,
        }
    ]


def test_the_admin_passes_a_chosen_password_to_the_service(admin_client, calls):
    made = calls("create_user")
    password = "a-long-chosen-passphrase"
    form = {"username": "dan", "usable_password": "true"}

    admin_client.post(
        reverse("admin:accounts_user_add"), {**form, "password1": password, "password2": password}
    )

    assert made[0]["password"] == password
    assert User.objects.get(username="dan").check_password(password)


def test_the_api_creates_users_through_the_service(api, calls):
    made = calls("create_user")

    response = api.post("/api/v1/users/", {"username": "dave", "balance": "1"})

    assert response.status_code == 201
    assert [call["username"] for call in made] == ["dave"]
    assert User.objects.filter(username="dave").exists()


def test_the_command_creates_users_through_the_service(calls):
    made = calls("create_user")

    call_command("create_user", "erin", "--balance=2")

    assert [call["username"] for call in made] == ["erin"]
    assert User.objects.get(username="erin").balance == Decimal("2")


def test_the_admin_issues_api_tokens_through_the_service(admin_client, ops, calls):
    made = calls("create_api_token")

    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": ops.pk, "name": "billing"}
    )

    assert response.status_code == 200
    assert made == [{"user": ops, "name": "billing", "expires_at": None}]
    token = APIToken.objects.get()
    assert token.prefix in response.content.decode()


def test_each_entry_point_refuses_a_negative_balance_in_its_own_shape(
    admin_client, api, alice, calls
):
    edits = calls("edit_balance")
    form = {
        "username": "alice",
        "balance": "-5",
        "initial-balance": "10",
        "budget_period": "month",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }

    page = admin_client.post(reverse("admin:accounts_user_change", args=[alice.pk]), form)
    answer = api.patch(f"/api/v1/users/{alice.pk}/", {"balance": "-5"})
    with pytest.raises(CommandError) as command:
        call_command("set_balance", "alice", "-5")

    assert page.status_code == 200
    assert page.context["adminform"].form.errors == {
        "balance": ["A balance cannot be set below zero."]
    }
    assert (answer.status_code, answer.json()) == (
        400,
        {"balance": ["A balance cannot be set below zero."]},
    )
    assert str(command.value) == "A balance cannot be set below zero."
    assert len(edits) == 1  # the command's; the form and serializer refused before writing
    alice.refresh_from_db()
    assert alice.balance == Decimal("10")

"""User commands: create, list, set or top up balances, deactivate and activate."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models.signals import post_save

from accounts.models import User
from keys.services import create_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def saves():
    """The users post_save was sent for while the test runs."""
    sent = []

    def receiver(sender, instance, **kwargs):
        sent.append(instance.username)

    post_save.connect(receiver, sender=User, weak=False, dispatch_uid="test-user-saves")
    yield sent
    post_save.disconnect(sender=User, dispatch_uid="test-user-saves")


def run(capsys, *args) -> str:
    call_command(*args)
    return capsys.readouterr().out


# --------------------------------------------------------------------------- create_user


def test_it_creates_a_consumer_without_a_usable_password(capsys):
    out = run(
        capsys,
        "create_user",
        "alice",
        "--email=alice@example.com",
        "--organization=Acme",
        "--balance=25.50",
    )

    alice = User.objects.get()
    assert (alice.username, alice.email, alice.organization) == (
        "alice",
        "alice@example.com",
        "Acme",
    )
    assert alice.balance == Decimal("25.50")
    assert not alice.has_usable_password()
    assert not alice.is_staff and alice.is_active
    assert "Created user alice (balance 25.50)." in out
    assert "create_key --user alice" in out


def test_a_user_without_balance_is_not_on_prepaid_billing(capsys):
    out = run(capsys, "create_user", "bob")

    assert User.objects.get().balance is None
    assert "no prepaid balance" in out


def test_a_staff_user_is_told_how_to_set_a_password(capsys):
    out = run(capsys, "create_user", "ops", "--staff")

    ops = User.objects.get()
    assert ops.is_staff and not ops.is_superuser and not ops.has_usable_password()
    assert "changepassword ops" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alice"], "username: A user with that username already exists."),
        (["bad name!"], "username: Enter a valid username."),
        (["carol", "--email=nope"], "email: Enter a valid email address."),
        (["carol", "--balance=lots"], "balance: “lots” value must be a decimal number."),
        (["carol", "--balance=-1"], "balance: A balance cannot be set below zero."),
        (["carol", "--balance=0.123456789012"], "balance: Ensure that there are no more than 10"),
    ],
)
def test_it_refuses_invalid_users_with_the_reason(args, message):
    User.objects.create_user("alice")

    with pytest.raises(CommandError) as error:
        call_command("create_user", *args)

    assert message in str(error.value)
    assert User.objects.count() == 1


# --------------------------------------------------------------------------- list_users


def test_it_lists_active_users_with_balance_and_key_count(capsys):
    alice = User.objects.create_user("alice", email="a@example.com", balance=Decimal("9.995"))
    create_key(owner=alice, name="one")
    create_key(owner=alice, name="two")
    User.objects.create_user("bob", organization="Acme")
    User.objects.create_user("gone", is_active=False)
    User.objects.create_superuser("root", "", "pw")

    out = run(capsys, "list_users")

    lines = [line.split() for line in out.splitlines()]
    assert " ".join(lines[0]) == "username email organization balance active staff keys joined"
    assert lines[1][:7] == ["alice", "a@example.com", "-", "9.995", "yes", "no", "2"]
    assert lines[2][:7] == ["bob", "-", "Acme", "-", "yes", "no", "0"]
    assert lines[3][:7] == ["root", "-", "-", "-", "yes", "superuser", "0"]
    assert len(lines) == 4

    assert "gone" in run(capsys, "list_users", "--inactive")


# --------------------------------------------------------------------------- set_balance


@pytest.mark.parametrize(
    ("start", "args", "expected", "message"),
    [
        (None, ["12.5"], Decimal("12.5"), "alice's balance is now 12.5."),
        (Decimal("3"), ["0"], Decimal("0"), "alice's balance is now 0."),
        (Decimal("3"), ["none"], None, "alice's balance is now none (no prepaid enforcement)."),
        (Decimal("3"), ["--add=2.25"], Decimal("5.25"), "alice's balance is now 5.25."),
        (Decimal("3"), ["--add=-1"], Decimal("2"), "alice's balance is now 2."),
    ],
)
def test_it_sets_or_adds_to_a_balance_and_tells_the_gateway(
    capsys, announced, django_capture_on_commit_callbacks, start, args, expected, message
):
    alice = User.objects.create_user("alice", balance=start)
    stamp = alice.updated_at

    with django_capture_on_commit_callbacks(execute=True):
        out = run(capsys, "set_balance", "alice", *args)

    alice.refresh_from_db()
    assert alice.balance == expected
    assert message in out
    assert announced == [User] and alice.updated_at > stamp


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody", "5"], 'There is no user "nobody"'),
        (["alice"], "Give either AMOUNT or --add AMOUNT."),
        (["alice", "5", "--add=1"], "Give either AMOUNT or --add AMOUNT."),
        (["alice", "-5"], "A balance cannot be set below zero."),
        (["alice", "lots"], "“lots” value must be a decimal number."),
        (["alice", "--add=0"], "--add needs a non-zero amount."),
        (["bob", "--add=5"], "bob has no prepaid balance to add to; set one first"),
    ],
)
def test_it_refuses_a_bad_balance_change(args, message):
    User.objects.create_user("alice", balance=Decimal("3"))
    User.objects.create_user("bob")

    with pytest.raises(CommandError) as error:
        call_command("set_balance", *args)

    assert message in str(error.value)
    assert User.objects.get(username="alice").balance == Decimal("3")
    assert User.objects.get(username="bob").balance is None


# --------------------------------------------------------------------------- (de)activate


def test_it_deactivates_and_reactivates_a_user_with_save(capsys, saves):
    User.objects.create_user("alice")
    saves.clear()

    assert "Deactivated alice." in run(capsys, "deactivate_user", "alice")
    assert not User.objects.get().is_active
    assert "alice is inactive already" in run(capsys, "deactivate_user", "alice")
    assert "Activated alice." in run(capsys, "activate_user", "alice")
    assert User.objects.get().is_active
    assert saves == ["alice", "alice"]


def test_deactivating_an_unknown_user_is_an_error():
    with pytest.raises(CommandError, match='There is no user "nobody"'):
        call_command("deactivate_user", "nobody")

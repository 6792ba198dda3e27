"""Key commands: create, rotate, list, deactivate and activate from the command line."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import ManagementUtility, call_command
from django.core.management.base import CommandError
from django.db.models.signals import post_save
from django.utils import timezone

from keys.models import APIKey, digest
from keys.services import create_key
from models_registry.models import Model

pytestmark = pytest.mark.django_db

SECRET_LINE = re.compile(r"^(ag-[A-Za-z0-9_-]{43})$", re.MULTILINE)


@pytest.fixture
def saves():
    """The API keys post_save was sent for while the test runs."""
    sent = []

    def receiver(sender, instance, **kwargs):
        sent.append(instance.pk)

    post_save.connect(receiver, sender=APIKey, weak=False, dispatch_uid="test-key-saves")
    yield sent
    post_save.disconnect(sender=APIKey, dispatch_uid="test-key-saves")


def run(capsys, *args) -> str:
    call_command(*args)
    captured = capsys.readouterr()
    return captured.out + captured.err


def issued_secret(out: str) -> str:
    """The one secret in `out`, after its label; fails if there is not exactly one."""
    assert "shown only now" in out
    secrets = SECRET_LINE.findall(out)
    assert len(secrets) == 1, out
    return secrets[0]


# --------------------------------------------------------------------------- create_key


def test_it_creates_a_key_and_prints_its_secret_once(alice, capsys):
    llama = Model.objects.create(name="llama3")
    gpt = Model.objects.create(name="gpt-4o")

    out = run(
        capsys,
        "create_key",
        "--user=alice",
        "--name=ci",
        "--rate-limit=60/m,1000/d",
        "--capabilities=text,EMBEDDING",
        "--models=llama3,gpt-4o",
        "--log-content",
        "--expires=2099-01-31T12:00:00+00:00",
    )

    secret = issued_secret(out)
    key = APIKey.objects.get()
    assert out.count(secret) == 1
    assert key.digest == digest(secret) and key.digest not in out
    assert f"Created API key {key.pk} ({key.prefix}…)" in out
    assert key.owner == alice and key.name == "ci" and key.log_content
    assert key.rate_limit == "60/m,1000/d"
    assert key.allowed_capabilities == ["TEXT", "EMBEDDING"]
    assert set(key.allowed_models.all()) == {llama, gpt}
    assert key.expires_at.isoformat() == "2099-01-31T12:00:00+00:00"


def test_a_key_without_options_is_unlimited_and_never_expires(alice, capsys):
    issued_secret(run(capsys, "create_key", "--user", "alice", "--name", "app"))

    key = APIKey.objects.get()
    assert (key.rate_limit, key.allowed_capabilities, key.expires_at) == ("", [], None)
    assert not key.allowed_models.exists() and not key.log_content


def test_it_creates_a_key_with_token_rates_concurrency_and_a_budget(alice, capsys):
    out = run(
        capsys,
        "create_key",
        "--user=alice",
        "--name=agent",
        "--rate-limit=60/m,100000tok/m",
        "--max-concurrent=4",
        "--budget=25",
        "--budget-soft=20.5",
        "--budget-period=week",
    )

    issued_secret(out)
    key = APIKey.objects.get()
    assert (key.rate_limit, key.max_concurrent) == ("60/m,100000tok/m", 4)
    assert (key.budget, key.budget_soft, key.budget_period) == (
        Decimal("25"),
        Decimal("20.5"),
        "week",
    )


def test_a_key_without_those_options_has_no_budget_and_no_concurrency_limit(alice, capsys):
    run(capsys, "create_key", "--user=alice", "--name=app")

    key = APIKey.objects.get()
    assert (key.max_concurrent, key.budget, key.budget_soft, key.budget_period) == (
        None,
        None,
        None,
        "month",
    )


def test_the_command_creates_keys_through_the_service(alice, capsys, create_key_calls):
    run(capsys, "create_key", "--user=alice", "--name=ci", "--budget=5", "--max-concurrent=2")

    assert [(c["budget"], c["max_concurrent"]) for c in create_key_calls] == [("5", "2")]
    assert APIKey.objects.get().budget == Decimal("5")


def test_an_expiry_date_alone_means_its_midnight(alice, capsys):
    run(capsys, "create_key", "--user=alice", "--name=ci", "--expires=2099-01-31")

    expires = timezone.localtime(APIKey.objects.get().expires_at)
    assert (expires.date().isoformat(), expires.hour, expires.minute) == ("2099-01-31", 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user=nobody"], 'There is no user "nobody"'),
        (["--rate-limit=lots"], 'rate_limit: "lots" is not a rate'),
        (["--rate-limit=0/m"], 'rate_limit: "0/m" allows nothing'),
        (["--capabilities=TEXT,VIDEO"], "allowed_capabilities: Must be a list of capabilities"),
        (["--models=llama3,nope,gone"], "Unknown model(s): gone, nope."),
        (["--expires=next week"], '--expires "next week" is not an ISO date'),
        (["--expires=2001-01-01"], "is in the past"),
        (["--name="], "name: This field cannot be blank."),
        (["--rate-limit=10tok/x"], 'rate_limit: "10tok/x" is not a rate'),
        (["--max-concurrent=0"], "max_concurrent: Ensure this value is greater than or equal to 1"),
        (["--max-concurrent=many"], "max_concurrent: “many” value must be an integer."),
        (["--budget=-1"], "budget: Ensure this value is greater than or equal to 0."),
        (["--budget=lots"], "budget: “lots” value must be a decimal number."),
        (
            ["--budget=10", "--budget-soft=12"],
            "budget_soft: The alert must be at or below the hard limit.",
        ),
    ],
)
def test_it_refuses_bad_input_with_the_reason(alice, args, message):
    Model.objects.create(name="llama3")

    with pytest.raises(CommandError) as error:
        call_command("create_key", "--user=alice", "--name=ci", *args)

    assert message in str(error.value)
    assert not APIKey.objects.exists()


def test_the_command_exits_non_zero_on_an_error(alice, capsys):
    with pytest.raises(SystemExit) as exit_:
        # As from a shell: argv parsing, and CommandError becomes an exit status.
        ManagementUtility(["manage.py", "create_key", "--user=nobody", "--name=x"]).execute()

    assert exit_.value.code == 1
    assert 'There is no user "nobody"' in capsys.readouterr().err


# --------------------------------------------------------------------------- rotate_key


def test_it_rotates_a_key_by_id_and_prints_the_new_secret_once(alice, capsys, saves):
    key, old = create_key(owner=alice, name="ci")
    saves.clear()

    out = run(capsys, "rotate_key", str(key.pk))

    new = issued_secret(out)
    key.refresh_from_db()
    assert key.digest == digest(new) != digest(old)
    assert key.rotated_at is not None
    assert old not in out and key.digest not in out
    assert f"{old[:11]}… no longer works, its new prefix is {key.prefix}…" in out
    assert saves == [key.pk]


def test_it_finds_a_key_by_a_shortened_prefix(alice, capsys):
    key, _ = create_key(owner=alice, name="ci")

    issued_secret(run(capsys, "rotate_key", key.prefix[:8]))

    assert APIKey.objects.get().rotated_at is not None


def test_it_refuses_an_ambiguous_prefix_or_an_unknown_key(alice):
    create_key(owner=alice, name="one")
    create_key(owner=alice, name="two")

    with pytest.raises(CommandError, match=r'2 API keys have a prefix starting with "ag-"'):
        call_command("rotate_key", "ag-")
    with pytest.raises(CommandError, match="There is no API key with id 999"):
        call_command("rotate_key", "999")
    with pytest.raises(CommandError, match='There is no API key with id or prefix "zz"'):
        call_command("rotate_key", "zz")
    assert not APIKey.objects.filter(rotated_at__isnull=False).exists()


def test_a_prefix_is_matched_with_its_case(alice):
    key, _ = create_key(owner=alice, name="ci")
    swapped = key.prefix[:3] + key.prefix[3:].swapcase()
    if swapped == key.prefix:
        pytest.skip("this random prefix has no letters to swap")

    with pytest.raises(CommandError, match="There is no API key"):
        call_command("deactivate_key", swapped)


# --------------------------------------------------------------------------- list_keys


def test_it_lists_keys_without_secrets_or_digests(alice, django_user_model, capsys):
    bob = django_user_model.objects.create_user("bob")
    ci, ci_secret = create_key(
        owner=alice, name="ci", rate_limit="60/m", expires_at=timezone.now() + timedelta(days=2)
    )
    app, app_secret = create_key(owner=bob, name="app")
    APIKey.objects.filter(pk=app.pk).update(last_used_at=timezone.now())
    gone, gone_secret = create_key(owner=bob, name="gone", is_active=False)

    out = run(capsys, "list_keys")

    lines = out.splitlines()
    assert lines[0].split() == (
        "id prefix name owner state rate limit concurrent budget expires last used".split()
    )
    assert len(lines) == 3
    assert lines[1].split()[:6] == [str(app.pk), f"{app.prefix}…", "app", "bob", "usable", "-"]
    assert lines[2].split()[:6] == [str(ci.pk), f"{ci.prefix}…", "ci", "alice", "usable", "60/m"]
    assert "gone" not in out
    for key, secret in ((ci, ci_secret), (app, app_secret), (gone, gone_secret)):
        assert secret not in out and key.digest not in out


def test_it_lists_each_keys_concurrency_and_budget(alice, capsys):
    create_key(
        owner=alice, name="week", max_concurrent=4, budget=Decimal("25"), budget_period="week"
    )
    create_key(owner=alice, name="total", budget=Decimal("1234.5"), budget_period="none")

    out = run(capsys, "list_keys")

    rows = {line.split()[2]: line for line in out.splitlines()[1:]}
    assert rows["week"].split()[5:8] == ["-", "4", "$25.00/week"]
    assert rows["total"].split()[5:9] == ["-", "-", "$1,234.50", "total"]


def test_it_lists_inactive_keys_and_one_users_keys_on_request(alice, django_user_model, capsys):
    bob = django_user_model.objects.create_user("bob")
    create_key(owner=alice, name="ci")
    create_key(owner=bob, name="gone", is_active=False)
    create_key(owner=bob, name="app", expires_at=timezone.now() + timedelta(seconds=1))
    APIKey.objects.filter(name="app").update(expires_at=timezone.now() - timedelta(days=1))

    out = run(capsys, "list_keys", "--user=bob", "--inactive")

    rows = {line.split()[2]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"gone", "app"}
    assert rows["gone"].split()[4] == "inactive"
    assert rows["app"].split()[4] == "expired"


def test_it_says_when_there_is_nothing_to_list_and_refuses_an_unknown_user(alice, capsys):
    assert run(capsys, "list_keys").strip() == "No active API keys."
    with pytest.raises(CommandError, match='There is no user "nobody"'):
        call_command("list_keys", "--user=nobody")


# --------------------------------------------------------------------------- (de)activate


def test_it_deactivates_and_reactivates_a_key_with_save(alice, capsys, saves):
    key, _ = create_key(owner=alice, name="ci")
    saves.clear()
    stamp = key.updated_at

    out = run(capsys, "deactivate_key", key.prefix)

    key.refresh_from_db()
    assert not key.is_active and key.updated_at > stamp
    assert f"Deactivated API key {key.pk} ({key.prefix}…)" in out
    assert saves == [key.pk]  # the proxy's catalog listens to post_save

    out = run(capsys, "activate_key", str(key.pk))

    key.refresh_from_db()
    assert key.is_active and "Activated API key" in out
    assert saves == [key.pk, key.pk]


def test_it_changes_nothing_for_a_key_already_in_that_state(alice, capsys, saves):
    key, _ = create_key(owner=alice, name="ci")
    saves.clear()

    out = run(capsys, "activate_key", str(key.pk))

    assert "is active already; nothing to do" in out
    assert saves == []


def test_deactivating_an_unknown_key_is_an_error():
    with pytest.raises(CommandError, match="There is no API key with id 42"):
        call_command("deactivate_key", "42")


def test_a_pasted_whole_key_is_found_by_digest_and_not_echoed(alice, capsys):
    key, secret = create_key(owner=alice, name="leaked")

    out = run(capsys, "deactivate_key", secret)

    assert not APIKey.objects.get().is_active
    assert secret not in out and key.digest not in out
    with pytest.raises(CommandError, match="No API key has that secret") as error:
        call_command("activate_key", secret + "x")
    assert secret not in str(error.value)

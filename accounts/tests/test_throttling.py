"""Failed-login throttling: the admin login form and staff API tokens lock out, in the database."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts import services, throttling
from accounts.models import Lockout, LoginFailure
from aethergate.testing import FakeClock
from logs.models import AuditEntry

pytestmark = pytest.mark.django_db

ADDRESS = "203.0.113.7"
LOGIN = "/admin/login/"


@pytest.fixture(autouse=True)
def limits(settings):
    settings.AETHERGATE_LOGIN_FAILURE_LIMIT = 5
    settings.AETHERGATE_LOGIN_ADDRESS_FAILURE_LIMIT = 8
    settings.AETHERGATE_LOGIN_FAILURE_WINDOW = 900
    settings.AETHERGATE_LOGIN_LOCKOUT_SECONDS = 600
    # Each refused login hashes a password: a fast hasher keeps 30 of them quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.fixture
def later(monkeypatch):
    """`later(seconds)`: set the throttle's clock, stopped at 0 until then, instead of sleeping."""
    start = timezone.now()
    clock = FakeClock(start)
    monkeypatch.setattr(throttling, "clock", clock)

    def move(seconds: float):
        clock.now = start + timedelta(seconds=seconds)

    return move


def log_in(client, username, password, address=ADDRESS):
    return client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


# Admin -------------------------------------------------------------------------------------


def test_the_admin_refuses_the_right_password_after_the_configured_failures(client, staff, later):
    statuses = [log_in(client, "root", f"wrong-{n}").status_code for n in range(30)]

    assert statuses[:4] == [200] * 4
    assert set(statuses[4:]) == {429}
    refused = log_in(client, "root", "pw-root-123")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == 600
    assert "Too many failed logins" in refused.content.decode()
    assert 'name="password"' in refused.content.decode()  # the login page, with its message
    assert not logged_in(client)
    assert client.get("/admin/").status_code == 302


def test_a_good_login_works_until_the_limit(client, staff):
    for n in range(4):
        log_in(client, "root", f"wrong-{n}")
    assert log_in(client, "root", "pw-root-123").status_code == 302
    assert logged_in(client)


def test_the_lockout_expires_after_its_duration(client, staff, later):
    for n in range(5):
        log_in(client, "root", f"wrong-{n}")
    later(599)
    assert log_in(client, "root", "pw-root-123").status_code == 429

    later(601)
    assert log_in(client, "root", "pw-root-123").status_code == 302
    assert logged_in(client)


def test_failures_older_than_the_window_are_not_counted(client, staff, later):
    for n in range(4):
        log_in(client, "root", f"wrong-{n}")
    later(901)
    assert log_in(client, "root", "wrong-again").status_code == 200
    assert log_in(client, "root", "pw-root-123").status_code == 302


def test_one_address_trying_many_accounts_is_locked_out(client, staff, django_user_model):
    for n in range(8):
        log_in(client, f"guess-{n}", "wrong")

    assert log_in(client, "root", "pw-root-123").status_code == 429
    assert log_in(client, "root", "pw-root-123", address="198.51.100.9").status_code == 302


def test_the_lockout_is_recorded_in_the_audit_log_without_the_password(client, staff):
    for n in range(5):
        log_in(client, "root", f"wrong-password-{n}")

    entry = AuditEntry.objects.get(action="lockout")
    assert (entry.surface, entry.address, entry.object_kind) == ("admin", ADDRESS, "login")
    assert (entry.object_name, entry.changes["failures"]) == ("user:root", 5)
    stored = [*Lockout.objects.values_list("key", flat=True), entry.changes, entry.object_name]
    assert "wrong-password" not in repr(stored)


@pytest.fixture
def stopped_redis(redis_server, settings):
    settings.REDIS_URL = redis_server.url
    redis_server.stop()
    yield redis_server
    redis_server.start()


def test_the_lockout_holds_with_redis_stopped(client, staff, stopped_redis):
    assert not stopped_redis.ping()
    for n in range(5):
        log_in(client, "root", f"wrong-{n}")
    assert log_in(client, "root", "pw-root-123").status_code == 429
    assert not logged_in(client)


# API tokens --------------------------------------------------------------------------------


@pytest.fixture
def token_secret(ops):
    _, secret = services.create_api_token(user=ops, name="ci")
    return secret


def test_a_token_is_refused_after_the_configured_failures_for_its_prefix(
    bearer, token_secret, later
):
    guess = token_secret[:12] + "x" * (len(token_secret) - 12)
    statuses = [
        bearer(guess).get("/api/v1/users/", REMOTE_ADDR=f"198.51.100.{n}").status_code
        for n in range(30)
    ]
    assert statuses[:4] == [401] * 4
    assert set(statuses[4:]) == {429}

    refused = bearer(token_secret).get("/api/v1/users/", REMOTE_ADDR="192.0.2.1")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == 600
    assert refused.json()["detail"].startswith("Too many failed API credential attempts")


def test_random_tokens_from_one_address_lock_the_address_out(bearer, token_secret, later):
    for n in range(8):
        bearer(f"agt-{n:08d}xxxxxxxxxxxxxxxx").get("/api/v1/users/", REMOTE_ADDR=ADDRESS)

    assert bearer(token_secret).get("/api/v1/users/", REMOTE_ADDR=ADDRESS).status_code == 429
    assert bearer(token_secret).get("/api/v1/users/", REMOTE_ADDR="192.0.2.1").status_code == 200
    later(601)
    assert bearer(token_secret).get("/api/v1/users/", REMOTE_ADDR=ADDRESS).status_code == 200


def test_wrong_master_keys_lock_the_address_out_but_never_the_key(
    api_client_class, settings, later
):
    settings.MASTER_API_KEY = "the-real-master-key-0123456789"

    def call(key, address):
        client = api_client_class()
        return client.get("/api/v1/users/", HTTP_X_ADMIN_KEY=key, REMOTE_ADDR=address)

    statuses = [call(f"guess-{n}", ADDRESS).status_code for n in range(10)]

    assert statuses == [401] * 7 + [429] * 3
    assert call(settings.MASTER_API_KEY, ADDRESS).status_code == 429
    # Only that address: the operators keep their break-glass key elsewhere.
    assert call(settings.MASTER_API_KEY, "192.0.2.1").status_code == 200
    later(601)
    assert call(settings.MASTER_API_KEY, ADDRESS).status_code == 200


def test_a_token_lockout_is_audited_as_an_api_event(bearer, token_secret, stopped_redis):
    for _ in range(8):
        bearer("not-a-token").get("/api/v1/users/", REMOTE_ADDR=ADDRESS)

    entry = AuditEntry.objects.get(action="lockout")
    assert (entry.surface, entry.address, entry.object_name) == (
        "api",
        ADDRESS,
        f"address:{ADDRESS}",
    )
    assert not LoginFailure.objects.filter(key__contains="not-a-token").exists()


# Lifting a lockout -------------------------------------------------------------------------


def test_clear_lockout_lets_the_account_log_in_again_and_is_audited(client, staff):
    for n in range(5):
        log_in(client, "root", f"wrong-{n}")
    out = io.StringIO()
    call_command("clear_lockout", "--list", stdout=out)
    assert "user:root" in out.getvalue()

    call_command("clear_lockout", "--username", "root", stdout=out)
    assert "Lifted 1 lockout." in out.getvalue()
    assert log_in(client, "root", "pw-root-123").status_code == 302
    unlock = AuditEntry.objects.get(action="unlock")
    assert (unlock.surface, unlock.command, unlock.object_name) == (
        "command",
        "clear_lockout",
        "user:root",
    )


def test_staff_lift_a_lockout_from_the_admin(client, staff, django_user_model):
    for n in range(8):
        log_in(client, f"guess-{n}", "wrong", address="198.51.100.9")
    lockout = Lockout.objects.get(key="address:198.51.100.9")

    client.force_login(staff)
    changelist = reverse("admin:accounts_lockout_changelist")
    assert "address:198.51.100.9" in client.get(changelist).content.decode()
    client.post(changelist, {"action": "lift_selected", "_selected_action": [lockout.pk]})

    assert not Lockout.objects.exists()
    unlock = AuditEntry.objects.get(action="unlock")
    assert (unlock.surface, unlock.actor_name) == ("admin", "root")
    client.logout()
    assert log_in(client, "root", "pw-root-123", address="198.51.100.9").status_code == 302

"""Key storage, rotation and the usable() filter."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from keys import services
from keys.models import APIKey, digest
from logs.models import RequestLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice")


def make_log(key):
    return RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req-1",
        user=key.owner,
        username=key.owner.username,
        api_key=key,
        key_prefix=key.prefix,
        model="llama3",
        status=200,
        outcome="ok",
    )


def test_it_stores_only_the_digest_and_a_display_prefix(owner):
    key, secret = services.create_key(owner=owner, name="ci")

    key.refresh_from_db()
    assert secret.startswith("ag-")
    assert len(secret) >= 3 + 43  # 32 random bytes, urlsafe base64
    assert key.digest == digest(secret)
    assert key.prefix == secret[:11]
    stored = [str(v) for v in APIKey.objects.filter(pk=key.pk).values().get().values()]
    assert secret not in stored


def test_it_issues_a_different_secret_each_time(owner):
    secrets = {services.create_key(owner=owner, name=f"k{i}")[1] for i in range(20)}
    assert len(secrets) == 20


def test_rotation_keeps_the_row_settings_and_history(owner):
    key, old = services.create_key(owner=owner, name="ci", rate_limit="60/m", log_content=True)
    log = make_log(key)

    new = services.rotate_key(key=key)

    rotated = APIKey.objects.get(digest=digest(new))
    assert rotated.pk == key.pk
    assert (rotated.name, rotated.rate_limit, rotated.log_content) == ("ci", "60/m", True)
    assert rotated.rotated_at is not None
    assert rotated.prefix == new[:11]
    assert not APIKey.objects.filter(digest=digest(old)).exists()
    log.refresh_from_db()
    assert log.api_key_id == key.pk


def test_deleting_a_user_deletes_their_keys_and_keeps_their_logs(owner):
    key, _ = services.create_key(owner=owner, name="ci")
    log = make_log(key)

    owner.delete()

    assert not APIKey.objects.filter(pk=key.pk).exists()
    log.refresh_from_db()
    assert (log.user_id, log.api_key_id) == (None, None)
    assert (log.username, log.key_prefix) == ("alice", key.prefix)


def test_deleting_a_key_keeps_its_logs(owner):
    key, _ = services.create_key(owner=owner, name="ci")
    log = make_log(key)

    key.delete()

    log.refresh_from_db()
    assert log.api_key_id is None
    assert log.user_id == owner.pk
    assert log.key_prefix == key.prefix


def test_usable_excludes_inactive_expired_and_ownerless_keys(owner, django_user_model):
    good, _ = services.create_key(owner=owner, name="good")
    future, _ = services.create_key(
        owner=owner, name="future", expires_at=timezone.now() + timedelta(days=1)
    )
    services.create_key(owner=owner, name="off", is_active=False)
    services.create_key(owner=owner, name="old", expires_at=timezone.now() - timedelta(seconds=1))
    bob = django_user_model.objects.create_user("bob", is_active=False)
    services.create_key(owner=bob, name="bob's")

    assert set(APIKey.objects.usable()) == {good, future}


def test_it_rejects_a_bad_rate_limit_or_capability(owner):
    with pytest.raises(ValidationError) as bad_rate:
        services.create_key(owner=owner, name="x", rate_limit="60/fortnight")
    assert "rate_limit" in bad_rate.value.message_dict

    with pytest.raises(ValidationError) as bad_capability:
        services.create_key(owner=owner, name="x", allowed_capabilities=["TELEPATHY"])
    assert "allowed_capabilities" in bad_capability.value.message_dict
    assert not APIKey.objects.exists()


NOW = timezone.make_aware(timezone.datetime(2026, 6, 1, 12, 0))
EXPIRIES = {"never": None, "past": NOW - timedelta(seconds=1), "future": NOW + timedelta(days=1)}


def test_usable_and_refusal_agree_for_every_combination(django_user_model):
    owners = {
        True: django_user_model.objects.create_user("on"),
        False: django_user_model.objects.create_user("off", is_active=False),
    }
    for owner_active, owner in owners.items():
        for key_active in (True, False):
            for expiry, expires_at in EXPIRIES.items():
                name = f"key {key_active} owner {owner_active} expires {expiry}"
                services.create_key(
                    owner=owner, name=name, is_active=key_active, expires_at=expires_at
                )
    keys = list(APIKey.objects.select_related("owner"))
    assert len(keys) == 12

    let_through = {key for key in keys if key.refusal(now=NOW) is None}

    assert set(APIKey.objects.usable(now=NOW)) == let_through
    assert {key.name for key in let_through} == {
        "key True owner True expires never",
        "key True owner True expires future",
    }


def test_a_keys_state_names_its_refusal(owner, django_user_model):
    usable, _ = services.create_key(owner=owner, name="usable")
    off, _ = services.create_key(owner=owner, name="off", is_active=False)
    old, _ = services.create_key(owner=owner, name="old", expires_at=EXPIRIES["past"])
    bob = django_user_model.objects.create_user("bob", is_active=False)
    orphan, _ = services.create_key(owner=bob, name="bob's")

    states = {key.name: key.state(now=NOW) for key in (usable, off, old, orphan)}

    assert states == {
        "usable": "usable",
        "off": "inactive",
        "old": "expired",
        "bob's": "owner inactive",
    }

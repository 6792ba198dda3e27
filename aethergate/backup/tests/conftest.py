"""The backup tests' fixtures (a small complete configuration) and helpers."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import User
from aethergate.testing import deploy, make_model
from endpoints.models import Endpoint
from keys.services import create_key, rotate_key
from models_registry.models import Model

CREDENTIAL = "sk-upstream-credential-0123456789"
ROOT_PASSWORD = "pw-root-for-backups-123"


def without_time(document: dict) -> dict:
    return {k: v for k, v in document.items() if k != "exported_at"}


def wipe() -> None:
    User.objects.all().delete()  # and their keys
    Model.objects.all().delete()
    Endpoint.objects.all().delete()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2's deliberate slowness would dominate these tests' runtime.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def data():
    """A small but complete configuration; returns the consumer secrets by key name.

    gpt-4o is served by one deployment on openai; llama3 by two on local (the
    second a standby tier) and falls back to gpt-4o (also on a too-long prompt);
    embed by none.
    """
    local = Endpoint.objects.create(name="local", base_url="http://127.0.0.1:11434/v1")
    openai = Endpoint(
        name="openai",
        base_url="https://api.openai.com/v1",
        kind=Endpoint.Kind.OPENAI,
        native_responses=True,
        rpm_limit=100,
        day_limit=5000,
        connect_timeout=3.5,
        total_timeout=300.0,
        health_path="/models",
    )
    openai.set_api_key(CREDENTIAL)
    openai.save()
    gpt = make_model(
        "gpt-4o",
        "gpt-4o-2024-08-06",
        endpoint=openai,
        price_in=Decimal("0.0000025"),
        price_out=Decimal("0.00001"),
    )
    llama = make_model(
        "llama3",
        "llama3:8b",
        endpoint=local,
        fallback=gpt,
        context_fallback=gpt,
        rpm_limit=10,
        strategy=Model.Strategy.LEAST_BUSY,
    )
    deploy(llama, local, "llama3:8b-q4", weight=2, priority=1)
    Model.objects.create(
        name="embed",
        capability="EMBEDDING",
        billing_unit="REQUEST",
        is_active=False,
    )
    alice = User.objects.create_user(
        "alice",
        email="alice@example.com",
        first_name="Alice",
        organization="Acme",
        balance=Decimal("10.5"),
    )
    bob = User.objects.create_user("bob", is_active=False)
    User.objects.create_superuser("root", "root@example.com", ROOT_PASSWORD)
    _, ci = create_key(
        owner=alice,
        name="ci",
        rate_limit="60/m,1000/d",
        allowed_capabilities=["TEXT", "EMBEDDING"],
        allowed_models=[llama, gpt],
        log_content=True,
        expires_at=timezone.now() + timedelta(days=30),
    )
    old, _ = create_key(owner=alice, name="old", is_active=False)
    rotated = rotate_key(key=old)
    _, bobs = create_key(owner=bob, name="bob's")
    return {"ci": ci, "old": rotated, "bob's": bobs}

"""Writes that send no signal (`QuerySet.update()`, `bulk_create()`, `bulk_update()`) reach
this process's catalog at the next request, with the database poll slowed to a minute so
that only the announcement can bring them. Across processes: test_scale_out.py.
"""

from decimal import Decimal

import httpx
import pytest

from accounts.models import User
from aethergate.lib.changes import ChangeQuerySet
from keys.models import APIKey
from models_registry.models import Deployment, Model
from proxy.apps import catalog_models
from proxy.tests.test_admission import chat, error_of


@pytest.fixture
def http(transactional_db, settings, request):
    """A client on a gateway whose catalog polls the database only once a minute.

    The gateway is started after the setting is changed; `transactional_db` is named here
    so that the factories commit what they make (the gateway's threads must see it).
    """
    settings.AETHERGATE_CATALOG_POLL_SECONDS = 60
    gateway = request.getfixturevalue("gateway")
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client


def test_a_key_deactivated_by_queryset_update_is_refused_at_the_next_request(
    http, make_model, make_key
):
    make_model()
    key, secret = make_key()
    assert chat(http, secret).status_code == 200

    APIKey.objects.filter(pk=key.pk).update(is_active=False)

    error_of(chat(http, secret), 403, "key_inactive")


def test_a_user_changed_by_queryset_update_is_seen_at_the_next_request(
    http, make_user, make_model, make_key
):
    make_model()
    user = make_user(balance=Decimal("5"))
    _, secret = make_key(owner=user)
    assert chat(http, secret).status_code == 200

    User.objects.filter(pk=user.pk).update(balance=Decimal("0"))
    error_of(chat(http, secret), 402, "insufficient_balance")

    User.objects.filter(pk=user.pk).update(is_active=False)
    error_of(chat(http, secret), 403, "user_inactive")


def test_a_key_deactivated_by_bulk_update_is_refused_at_the_next_request(
    http, make_model, make_key
):
    make_model()
    key, secret = make_key()
    assert chat(http, secret).status_code == 200

    key.is_active = False
    APIKey.objects.bulk_update([key], ["is_active"])

    error_of(chat(http, secret), 403, "key_inactive")


def test_a_model_made_by_bulk_create_is_served_at_the_next_request(http, make_model, make_key):
    endpoint = make_model().deployments.get().endpoint
    _, secret = make_key()
    error_of(chat(http, secret, model="made in bulk"), 404, "model_not_found")

    (made,) = Model.objects.bulk_create([Model(name="made in bulk")])
    Deployment.objects.bulk_create(
        [Deployment(model=made, endpoint=endpoint, upstream_name="echo")]
    )

    assert chat(http, secret, model="made in bulk").status_code == 200


def test_every_model_the_catalog_holds_writes_through_the_announcing_queryset():
    for model in catalog_models():
        assert isinstance(model.objects.all(), ChangeQuerySet), model
        # Django's deletes (SET_NULL) and related managers write through the base manager.
        assert isinstance(model._base_manager.all(), ChangeQuerySet), model

"""The model catalog in admin: validation, fallbacks, activation, deletion."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from endpoints.models import Endpoint
from models_registry.models import MAX_FALLBACK_DEPTH, Model

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint():
    return Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1")


def form(endpoint, **overrides):
    return {
        "name": "llama3",
        "upstream_name": "llama3:8b",
        "endpoint": endpoint.pk,
        "capability": "TEXT",
        "billing_unit": "TOKEN",
        "price_in": "0.000001",
        "price_out": "0.000002",
        "is_active": "on",
        **overrides,
    }


def test_staff_create_a_model_with_decimal_prices(admin_client, endpoint):
    response = admin_client.post(reverse("admin:models_registry_model_add"), form(endpoint))

    assert response.status_code == 302
    model = Model.objects.get()
    assert model.endpoint == endpoint
    assert model.price_in == Decimal("0.000001")
    assert model.price_out == Decimal("0.000002")


def test_negative_prices_are_refused(admin_client, endpoint):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"), form(endpoint, price_out="-0.1")
    )

    assert response.status_code == 200
    assert "greater than or equal to 0" in response.content.decode()
    assert not Model.objects.exists()


def test_a_fallback_loop_is_refused(admin_client, endpoint):
    first = Model.objects.create(name="a", upstream_name="a", endpoint=endpoint)
    second = Model.objects.create(name="b", upstream_name="b", endpoint=endpoint, fallback=first)

    response = admin_client.post(
        reverse("admin:models_registry_model_change", args=[first.pk]),
        form(endpoint, name="a", upstream_name="a", fallback=second.pk),
    )

    assert "loops back" in response.content.decode()
    first.refresh_from_db()
    assert first.fallback is None


def test_a_model_cannot_fall_back_to_itself(endpoint):
    model = Model.objects.create(name="a", upstream_name="a", endpoint=endpoint)
    model.fallback = model
    with pytest.raises(ValidationError, match="loops back"):
        model.full_clean()


def test_a_fallback_chain_has_a_depth_limit(endpoint):
    previous = None
    for i in range(MAX_FALLBACK_DEPTH + 1):
        previous = Model.objects.create(
            name=f"m{i}", upstream_name="x", endpoint=endpoint, fallback=previous
        )
    head = Model(name="head", upstream_name="x", endpoint=endpoint, fallback=previous)
    with pytest.raises(ValidationError, match="at most"):
        head.full_clean()


def test_deleting_a_model_clears_fallbacks_that_point_to_it(admin_client, endpoint):
    target = Model.objects.create(name="a", upstream_name="a", endpoint=endpoint)
    user = Model.objects.create(name="b", upstream_name="b", endpoint=endpoint, fallback=target)
    url = reverse("admin:models_registry_model_delete", args=[target.pk])

    assert "1 other model falls back" in admin_client.get(url).content.decode()
    admin_client.post(url, {"post": "yes"})

    user.refresh_from_db()
    assert user.fallback is None


def test_models_are_deactivated_from_the_list(admin_client, endpoint):
    model = Model.objects.create(name="a", upstream_name="a", endpoint=endpoint)

    admin_client.post(
        reverse("admin:models_registry_model_changelist"),
        {"action": "deactivate_selected", "_selected_action": [model.pk]},
    )

    model.refresh_from_db()
    assert not model.is_active

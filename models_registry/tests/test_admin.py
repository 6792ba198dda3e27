"""The model catalog in admin: validation, fallbacks, activation, deletion."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from aethergate.testing import VIEW, make_staff
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
        "price_in": "1",
        "price_out": "2",
        "is_active": "on",
        **overrides,
    }


def test_it_stores_token_prices_entered_per_1m_tokens_per_token(admin_client, endpoint):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"),
        form(endpoint, price_in="0.15", price_out="0.6"),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert model.endpoint == endpoint
    assert model.price_in == Decimal("0.00000015")
    assert model.price_out == Decimal("0.0000006")


@pytest.mark.parametrize(
    ("unit", "capability"), [("IMAGE", "IMAGE"), ("MINUTE", "AUDIO_STT"), ("REQUEST", "TEXT")]
)
def test_it_stores_other_units_prices_as_entered(admin_client, endpoint, unit, capability):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"),
        form(
            endpoint,
            billing_unit=unit,
            capability=capability,
            price_in="0.04",
            price_out="0.0000000001",
        ),
    )

    assert response.status_code == 302
    model = Model.objects.get()
    assert (model.price_in, model.price_out) == (Decimal("0.04"), Decimal("0.0000000001"))


def test_it_refuses_a_billing_unit_the_capability_cannot_measure(admin_client, endpoint):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"), form(endpoint, billing_unit="MINUTE")
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["billing_unit"] == [
        "Text (chat, completions) cannot be billed per minute of audio: choose one of token, "
        "request."
    ]
    assert not Model.objects.exists()


def test_it_refuses_a_price_per_1m_tokens_with_more_than_4_decimals(admin_client, endpoint):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"), form(endpoint, price_in="0.12345")
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["price_in"] == [
        "Enter at most 4 decimal places per 1M tokens: prices are stored per single unit with 10."
    ]
    assert not Model.objects.exists()


def test_it_refuses_a_price_too_large_for_the_column(admin_client, endpoint):
    response = admin_client.post(
        reverse("admin:models_registry_model_add"),
        form(endpoint, billing_unit="REQUEST", price_in="12345678901"),
    )

    assert response.status_code == 200
    assert "price_in" in response.context["adminform"].form.errors
    assert not Model.objects.exists()


def test_the_model_page_shows_prices_per_the_billing_unit(admin_client, endpoint):
    tokens = Model.objects.create(
        name="chat", upstream_name="x", endpoint=endpoint, price_in=Decimal("0.0000025")
    )
    images = Model.objects.create(
        name="draw",
        upstream_name="y",
        endpoint=endpoint,
        billing_unit="IMAGE",
        price_out=Decimal("0.04"),
    )

    page = admin_client.get(reverse("admin:models_registry_model_change", args=[tokens.pk]))
    html = page.content.decode()
    assert 'name="price_in" value="2.5"' in html
    assert "Input price (per 1M tokens)" in html
    assert "90 s is 1.5 minutes" in html  # the billing unit's rules, in its help text
    page = admin_client.get(reverse("admin:models_registry_model_change", args=[images.pk]))
    assert 'name="price_out" value="0.04"' in page.content.decode()
    assert "Output price (per image)" in page.content.decode()


def test_saving_a_model_page_unchanged_keeps_its_prices(admin_client, endpoint):
    model = Model.objects.create(
        name="chat", upstream_name="x", endpoint=endpoint, price_in=Decimal("0.0000025")
    )
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    shown = admin_client.get(url).context["adminform"].form

    admin_client.post(
        url,
        form(
            endpoint,
            name="chat",
            upstream_name="x",
            price_in=shown["price_in"].value(),
            price_out=shown["price_out"].value(),
        ),
    )

    model.refresh_from_db()
    assert (model.price_in, model.price_out) == (Decimal("0.0000025"), Decimal("0"))


def test_changing_the_unit_asks_for_prices_per_the_new_unit(admin_client, endpoint):
    model = Model.objects.create(
        name="chat", upstream_name="x", endpoint=endpoint, price_in=Decimal("0.0000025")
    )
    url = reverse("admin:models_registry_model_change", args=[model.pk])
    fields = {"name": "chat", "upstream_name": "x", "billing_unit": "REQUEST", "price_out": "0"}

    kept = admin_client.post(url, form(endpoint, price_in="2.5", **fields))
    model.refresh_from_db()
    assert kept.context["adminform"].form.errors["price_in"] == [
        "The billing unit changed: enter this price per request."
    ]
    assert (model.billing_unit, model.price_in) == ("TOKEN", Decimal("0.0000025"))

    admin_client.post(url, form(endpoint, price_in="0.01", **fields))
    model.refresh_from_db()
    assert (model.billing_unit, model.price_in) == ("REQUEST", Decimal("0.01"))


def test_a_read_only_model_page_shows_prices_for_people(client, endpoint):
    model = Model.objects.create(
        name="chat", upstream_name="x", endpoint=endpoint, price_in=Decimal("0.00000015")
    )
    client.force_login(make_staff("viewer", VIEW))
    url = reverse("admin:models_registry_model_change", args=[model.pk])

    page = client.get(url).content.decode()
    posted = client.post(url, {})

    assert '<div class="readonly">$0.15 / 1M tokens</div>' in page
    assert "0.0000001500" not in page
    assert posted.status_code == 403
    model.refresh_from_db()
    assert model.price_in == Decimal("0.00000015")


def test_the_list_shows_prices_for_people(admin_client, endpoint):
    Model.objects.create(
        name="chat",
        upstream_name="x",
        endpoint=endpoint,
        price_in=Decimal("0.00000015"),
        price_out=Decimal("0.0000006"),
    )
    Model.objects.create(
        name="tts",
        upstream_name="y",
        endpoint=endpoint,
        billing_unit="REQUEST",
        price_in=Decimal("0.015"),
    )

    html = admin_client.get(reverse("admin:models_registry_model_changelist")).content.decode()

    assert "$0.15 / 1M tokens" in html
    assert "$0.60 / 1M tokens" in html
    assert "$0.015 / request" in html
    assert "0.0000001500" not in html


def test_the_api_keeps_per_unit_prices(admin_client, endpoint):
    Model.objects.create(
        name="chat", upstream_name="x", endpoint=endpoint, price_in=Decimal("0.00000015")
    )

    listed = admin_client.get("/api/v1/models/").json()

    assert listed["results"][0]["price_in"] == "0.0000001500"


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

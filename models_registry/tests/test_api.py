"""The management API for the model catalog: names, fallbacks and the model's own rules."""

from decimal import Decimal

import pytest

from endpoints.models import Endpoint
from keys import services as key_services
from models_registry.models import MAX_FALLBACK_DEPTH, Model

pytestmark = pytest.mark.django_db


@pytest.fixture
def local(db):
    return Endpoint.objects.create(name="local", base_url="http://127.0.0.1:11434/v1")


@pytest.fixture
def llama(local):
    return Model.objects.create(name="llama3", upstream_name="llama3:8b", endpoint=local)


def test_it_creates_a_model_with_relations_by_name(api, local, llama):
    response = api.post(
        "/api/v1/models/",
        {
            "name": "openai/gpt-4o",
            "upstream_name": "gpt-4o",
            "endpoint": "local",
            "capability": "TEXT",
            "billing_unit": "TOKEN",
            "price_in": "0.0000025",
            "price_out": "0.00001",
            "rpm_limit": 100,
            "fallback": "llama3",
        },
    )

    assert response.status_code == 201
    model = Model.objects.get(name="openai/gpt-4o")
    assert (model.endpoint, model.fallback, model.rpm_limit) == (local, llama, 100)
    assert model.price_in == Decimal("0.0000025")
    data = response.json()
    assert (data["endpoint"], data["fallback"], data["price_out"]) == (
        "local",
        "llama3",
        "0.0000100000",
    )


def test_it_creates_a_model_with_defaults(api):
    data = api.post("/api/v1/models/", {"name": "m", "upstream_name": "m"}).json()

    assert (data["endpoint"], data["capability"], data["billing_unit"]) == (None, "TEXT", "TOKEN")
    assert data["is_active"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"upstream_name": ""}, "upstream_name"),
        ({"capability": "TELEPATHY"}, "capability"),
        ({"billing_unit": "HOUR"}, "billing_unit"),
        ({"price_in": "-1"}, "price_in"),
        ({"price_out": "free"}, "price_out"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"endpoint": "nowhere"}, "endpoint"),
        ({"fallback": "nothing"}, "fallback"),
    ],
)
def test_it_answers_bad_input_with_field_errors(api, body, field):
    response = api.post("/api/v1/models/", {"name": "m", "upstream_name": "m", **body})

    assert response.status_code == 400
    assert field in response.json()
    assert not Model.objects.filter(name="m").exists()


def test_a_duplicate_name_is_a_conflict(api, llama):
    response = api.post("/api/v1/models/", {"name": "llama3", "upstream_name": "x"})

    assert response.status_code == 409
    assert response.json() == {"name": ["Model with this Name already exists."]}
    assert Model.objects.count() == 1


def test_it_refuses_a_fallback_loop_with_the_models_own_rule(api, llama):
    other = Model.objects.create(name="mistral", upstream_name="mistral", fallback=llama)

    to_itself = api.patch(f"/api/v1/models/{llama.pk}/", {"fallback": "llama3"})
    loop = api.patch(f"/api/v1/models/{llama.pk}/", {"fallback": "mistral"})

    assert to_itself.status_code == loop.status_code == 400
    assert loop.json() == {"fallback": ["This fallback chain loops back on itself."]}
    llama.refresh_from_db()
    assert llama.fallback is None
    assert other.fallback == llama


def test_it_refuses_a_fallback_chain_deeper_than_the_proxy_follows(api):
    chain = None
    for n in range(MAX_FALLBACK_DEPTH + 1):
        chain = Model.objects.create(name=f"m{n}", upstream_name="x", fallback=chain)

    response = api.post(
        "/api/v1/models/", {"name": "top", "upstream_name": "x", "fallback": chain.name}
    )

    assert response.status_code == 400
    assert "at most" in response.json()["fallback"][0]


def test_patch_moves_a_model_to_another_endpoint_or_none(api, llama):
    Endpoint.objects.create(name="gpu", base_url="http://gpu.example/v1")

    moved = api.patch(f"/api/v1/models/{llama.pk}/", {"endpoint": "gpu", "price_in": "0.5"})
    llama.refresh_from_db()
    assert moved.status_code == 200
    assert (llama.endpoint.name, llama.price_in) == ("gpu", Decimal("0.5"))

    api.patch(f"/api/v1/models/{llama.pk}/", {"endpoint": None})
    llama.refresh_from_db()
    assert llama.endpoint is None


def test_put_replaces_a_model(api, llama):
    response = api.put(
        f"/api/v1/models/{llama.pk}/",
        {"name": "llama3.1", "upstream_name": "llama3.1:8b", "capability": "EMBEDDING"},
    )

    assert response.status_code == 200
    llama.refresh_from_db()
    assert (llama.name, llama.upstream_name, llama.capability) == (
        "llama3.1",
        "llama3.1:8b",
        "EMBEDDING",
    )


def test_it_lists_filters_searches_and_orders_models(api, local, llama):
    gpu = Endpoint.objects.create(name="gpu", base_url="http://gpu.example/v1")
    Model.objects.create(name="embed", upstream_name="nomic", capability="EMBEDDING", endpoint=gpu)
    Model.objects.create(
        name="whisper", upstream_name="whisper-1", capability="AUDIO_STT", billing_unit="MINUTE"
    )
    Model.objects.create(name="old", upstream_name="old", is_active=False, price_in="2")

    def names(**params):
        response = api.get("/api/v1/models/", params)
        assert response.status_code == 200
        return [m["name"] for m in response.json()["results"]]

    assert names() == ["embed", "llama3", "old", "whisper"]
    assert names(is_active="false") == ["old"]
    assert names(capability="EMBEDDING") == ["embed"]
    assert names(billing_unit="MINUTE") == ["whisper"]
    assert names(endpoint="local") == ["llama3"]
    assert names(endpoint=str(gpu.pk)) == ["embed"]
    assert names(search="nomic") == ["embed"]
    assert names(ordering="-price_in") == ["old", "embed", "llama3", "whisper"]
    assert api.get("/api/v1/models/", {"capability": "TELEPATHY"}).status_code == 400


def test_it_retrieves_a_model_and_404s_an_unknown_one(api, llama):
    assert api.get(f"/api/v1/models/{llama.pk}/").json()["upstream_name"] == "llama3:8b"
    assert api.get("/api/v1/models/999999/").status_code == 404
    assert api.delete("/api/v1/models/999999/").status_code == 404


def test_deleting_a_model_clears_fallbacks_and_key_allowances(api, django_user_model, llama):
    other = Model.objects.create(name="mistral", upstream_name="mistral", fallback=llama)
    key, _ = key_services.create_key(
        owner=django_user_model.objects.create_user("alice"), name="k", allowed_models=[llama]
    )

    assert api.delete(f"/api/v1/models/{llama.pk}/").status_code == 204

    other.refresh_from_db()
    assert other.fallback is None
    assert not key.allowed_models.exists()


@pytest.mark.parametrize(
    ("capability", "unit", "allowed"),
    [
        ("TEXT", "MINUTE", "token, request"),
        ("AUDIO_TTS", "IMAGE", "token, request"),
        ("IMAGE", "MINUTE", "image, token, request"),
    ],
)
def test_it_refuses_a_billing_unit_the_capabilitys_routes_cannot_measure(
    api, capability, unit, allowed
):
    response = api.post(
        "/api/v1/models/",
        {"name": "m", "upstream_name": "x", "capability": capability, "billing_unit": unit},
    )

    assert response.status_code == 400
    assert allowed in response.json()["billing_unit"][0]
    assert not Model.objects.exists()


@pytest.mark.parametrize(
    ("capability", "unit"),
    [("IMAGE", "IMAGE"), ("AUDIO_STT", "MINUTE"), ("AUDIO_TTS", "REQUEST"), ("TEXT", "TOKEN")],
)
def test_it_takes_each_unit_its_capability_measures(api, capability, unit):
    response = api.post(
        "/api/v1/models/",
        {"name": "m", "upstream_name": "x", "capability": capability, "billing_unit": unit},
    )

    assert response.status_code == 201
    assert Model.objects.get().billing_unit == unit

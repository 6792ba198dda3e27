"""The management API for the model catalog: deployments, names, fallbacks and the model's rules."""

from decimal import Decimal

import pytest
from django.db import IntegrityError

from aethergate.testing import deploy, make_endpoint, make_model, served_by
from keys import services as key_services
from models_registry.models import MAX_FALLBACK_DEPTH, Deployment, Model

pytestmark = pytest.mark.django_db


@pytest.fixture
def llama(local):
    return make_model("llama3", "llama3:8b", endpoint=local)


def row(endpoint, upstream_name, weight=1, priority=0) -> dict:
    return {
        "endpoint": endpoint,
        "upstream_name": upstream_name,
        "weight": weight,
        "priority": priority,
    }


# --------------------------------------------------------------------------- create and read


def test_it_creates_a_model_with_its_deployments_and_relations_by_name(api, local, gpu, llama):
    response = api.post(
        "/api/v1/models/",
        {
            "name": "qwen",
            "deployments": [
                {"endpoint": "gpu", "upstream_name": "qwen3:32b", "weight": 3},
                {"endpoint": "local", "upstream_name": "qwen3:8b", "priority": 1},
            ],
            "strategy": "least_busy",
            "capability": "TEXT",
            "billing_unit": "TOKEN",
            "price_in": "0.0000025",
            "price_out": "0.00001",
            "rpm_limit": 100,
            "fallback": "llama3",
            "context_fallback": "llama3",
        },
    )

    assert response.status_code == 201, response.json()
    model = Model.objects.get(name="qwen")
    assert served_by(model) == [("gpu", "qwen3:32b", 3, 0), ("local", "qwen3:8b", 1, 1)]
    assert (model.fallback, model.context_fallback, model.strategy) == (llama, llama, "least_busy")
    assert (model.rpm_limit, model.price_in) == (100, Decimal("0.0000025"))
    data = response.json()
    assert data["deployments"] == [row("gpu", "qwen3:32b", 3), row("local", "qwen3:8b", 1, 1)]
    assert (data["fallback"], data["context_fallback"], data["price_out"]) == (
        "llama3",
        "llama3",
        "0.0000100000",
    )
    assert "endpoint" not in data and "upstream_name" not in data


def test_it_creates_a_model_with_defaults_and_no_deployment(api):
    response = api.post("/api/v1/models/", {"name": "m"})

    assert response.status_code == 201
    data = response.json()
    assert data["deployments"] == []
    assert (data["capability"], data["billing_unit"], data["strategy"]) == (
        "TEXT",
        "TOKEN",
        "weighted",
    )
    assert (data["fallback"], data["context_fallback"], data["is_active"]) == (None, None, True)
    assert not Deployment.objects.exists()


def test_it_retrieves_a_model_with_its_deployments_and_404s_an_unknown_one(api, gpu, llama):
    deploy(llama, gpu, "llama3:70b", weight=0, priority=2)

    data = api.get(f"/api/v1/models/{llama.pk}/").json()

    assert data["deployments"] == [row("local", "llama3:8b"), row("gpu", "llama3:70b", 0, 2)]
    assert "endpoint" not in data and "upstream_name" not in data
    assert api.get("/api/v1/models/999999/").status_code == 404
    assert api.delete("/api/v1/models/999999/").status_code == 404


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"capability": "TELEPATHY"}, "capability"),
        ({"billing_unit": "HOUR"}, "billing_unit"),
        ({"price_in": "-1"}, "price_in"),
        ({"price_out": "free"}, "price_out"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"strategy": "round_robin"}, "strategy"),
        ({"fallback": "nothing"}, "fallback"),
        ({"context_fallback": "nothing"}, "context_fallback"),
        ({"deployments": "local"}, "deployments"),
        ({"endpoint": "nowhere", "upstream_name": "x"}, "endpoint"),
        ({"endpoint": "local", "upstream_name": ""}, "upstream_name"),
    ],
)
def test_it_answers_bad_input_with_field_errors(api, local, body, field):
    response = api.post("/api/v1/models/", {"name": "m", **body})

    assert response.status_code == 400
    assert field in response.json()
    assert not Model.objects.filter(name="m").exists()
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    ("second", "errors"),
    [
        (
            {"endpoint": "nowhere", "upstream_name": "x"},
            {"endpoint": ["Object with name=nowhere does not exist."]},
        ),
        ({"upstream_name": "x"}, {"endpoint": ["This field is required."]}),
        (
            {"endpoint": "local", "upstream_name": ""},
            {"upstream_name": ["This field may not be blank."]},
        ),
        ({"endpoint": "local"}, {"upstream_name": ["This field is required."]}),
        (
            {"endpoint": "local", "upstream_name": "x", "weight": -1},
            {"weight": ["Ensure this value is greater than or equal to 0."]},
        ),
        (
            {"endpoint": "local", "upstream_name": "x", "priority": -1},
            {"priority": ["Ensure this value is greater than or equal to 0."]},
        ),
        (
            {"endpoint": "local", "upstream_name": "x", "weight": "heavy"},
            {"weight": ["A valid integer is required."]},
        ),
        (
            {"endpoint": "local", "upstream_name": "llama3:8b", "weight": 5},
            {
                "non_field_errors": [
                    "Another deployment of this model has this endpoint and upstream name."
                ]
            },
        ),
    ],
)
def test_a_bad_deployment_is_a_field_error_of_its_row_and_nothing_is_written(
    api, local, second, errors
):
    first = {"endpoint": "local", "upstream_name": "llama3:8b"}

    response = api.post(
        "/api/v1/models/", {"name": "m", "deployments": [first, second]}, format="json"
    )

    assert response.status_code == 400
    # DRF's shape for a list's errors: by index (as JSON, a string), only the rows in error.
    assert response.json() == {"deployments": {"1": errors}}
    assert not Model.objects.exists() and not Deployment.objects.exists()


def test_a_bad_deployment_in_an_update_leaves_the_model_and_its_set_as_they_were(api, local, llama):
    response = api.patch(
        f"/api/v1/models/{llama.pk}/",
        {"price_in": "1", "deployments": [row("local", "a"), row("local", "a")]},
    )

    assert response.status_code == 400
    llama.refresh_from_db()
    assert llama.price_in == 0
    assert served_by(llama) == [("local", "llama3:8b", 1, 0)]


def test_the_write_is_one_transaction_a_failure_midway_leaves_nothing_written(
    api, local, gpu, llama, monkeypatch
):
    save = Deployment.save

    def fail_on_gpu(self, *args, **kwargs):
        if self.endpoint == gpu:
            raise IntegrityError("a concurrent write won")
        save(self, *args, **kwargs)

    monkeypatch.setattr(Deployment, "save", fail_on_gpu)

    response = api.put(
        f"/api/v1/models/{llama.pk}/",
        {"name": "llama3", "price_in": "1", "deployments": [row("local", "x"), row("gpu", "y")]},
    )

    assert response.status_code == 409
    llama.refresh_from_db()
    assert llama.price_in == 0
    assert served_by(llama) == [("local", "llama3:8b", 1, 0)]


def test_a_duplicate_name_is_a_conflict(api, llama):
    response = api.post("/api/v1/models/", {"name": "llama3"})

    assert response.status_code == 409
    assert response.json() == {"name": ["Model with this Name already exists."]}
    assert Model.objects.count() == 1


# --------------------------------------------------------------------------- updates


def test_patch_with_deployments_replaces_the_set_and_keeps_a_matching_one(api, local, gpu, llama):
    kept = llama.deployments.get()
    deploy(llama, gpu, "llama3:70b")

    response = api.patch(
        f"/api/v1/models/{llama.pk}/",
        {"deployments": [row("local", "llama3:8b", 4), row("local", "llama3:q4", 0, 1)]},
    )

    assert response.status_code == 200
    assert response.json()["deployments"] == [
        row("local", "llama3:8b", 4),
        row("local", "llama3:q4", 0, 1),
    ]
    assert served_by(llama) == [("local", "llama3:8b", 4, 0), ("local", "llama3:q4", 0, 1)]
    # The same endpoint and upstream name: the same row, so the proxy's state for it stays.
    assert llama.deployments.get(upstream_name="llama3:8b").pk == kept.pk


def test_an_empty_list_removes_every_deployment(api, llama):
    response = api.patch(f"/api/v1/models/{llama.pk}/", {"deployments": []})

    assert response.status_code == 200
    assert response.json()["deployments"] == []
    assert not llama.deployments.exists()


def test_patch_and_put_without_deployments_leave_the_set(api, gpu, llama):
    deploy(llama, gpu, "llama3:70b")
    before = served_by(llama)

    patched = api.patch(f"/api/v1/models/{llama.pk}/", {"price_in": "0.5"})
    put = api.put(f"/api/v1/models/{llama.pk}/", {"name": "llama3.1", "capability": "EMBEDDING"})

    assert patched.status_code == put.status_code == 200
    llama.refresh_from_db()
    assert (llama.name, llama.capability, llama.price_in) == (
        "llama3.1",
        "EMBEDDING",
        Decimal("0.5"),
    )
    assert served_by(llama) == before
    assert len(put.json()["deployments"]) == 2


def test_put_with_deployments_replaces_the_model_and_its_set(api, gpu, llama):
    response = api.put(
        f"/api/v1/models/{llama.pk}/",
        {"name": "llama3.1", "deployments": [row("gpu", "llama3.1:8b")]},
    )

    assert response.status_code == 200
    llama.refresh_from_db()
    assert llama.name == "llama3.1"
    assert served_by(llama) == [("gpu", "llama3.1:8b", 1, 0)]


def test_it_refuses_a_fallback_loop_with_the_models_own_rule(api, llama):
    other = make_model(
        "mistral", "mistral", endpoint=llama.deployments.get().endpoint, fallback=llama
    )

    to_itself = api.patch(f"/api/v1/models/{llama.pk}/", {"fallback": "llama3"})
    loop = api.patch(f"/api/v1/models/{llama.pk}/", {"fallback": "mistral"})
    context_loop = api.patch(
        f"/api/v1/models/{llama.pk}/", {"context_fallback": "llama3"}, format="json"
    )

    assert to_itself.status_code == loop.status_code == context_loop.status_code == 400
    assert loop.json() == {"fallback": ["This fallback chain loops back on itself."]}
    assert context_loop.json() == {
        "context_fallback": ["This fallback chain loops back on itself."]
    }
    llama.refresh_from_db()
    assert llama.fallback is None and llama.context_fallback is None
    assert other.fallback == llama


def test_it_refuses_a_fallback_chain_deeper_than_the_proxy_follows(api):
    chain = None
    for n in range(MAX_FALLBACK_DEPTH + 1):
        chain = Model.objects.create(name=f"m{n}", fallback=chain)

    response = api.post("/api/v1/models/", {"name": "top", "fallback": chain.name})

    assert response.status_code == 400
    assert "at most" in response.json()["fallback"][0]


# --------------------------------------------------------------------------- the old fields


def test_an_old_script_creating_a_model_on_an_endpoint_gets_one_deployment(api, local):
    response = api.post(
        "/api/v1/models/", {"name": "llama3", "upstream_name": "llama3:8b", "endpoint": "local"}
    )

    assert response.status_code == 201
    assert served_by(Model.objects.get(name="llama3")) == [("local", "llama3:8b", 1, 0)]
    data = response.json()
    assert data["deployments"] == [row("local", "llama3:8b")]
    assert "endpoint" not in data and "upstream_name" not in data


def test_an_old_endpoint_without_upstream_name_serves_the_models_name(api, local):
    response = api.post("/api/v1/models/", {"name": "llama3", "endpoint": "local"})

    assert response.status_code == 201
    assert served_by(Model.objects.get()) == [("local", "llama3", 1, 0)]


def test_an_old_patch_of_the_endpoint_moves_the_model_keeping_its_upstream_name(api, gpu, llama):
    deploy(llama, make_endpoint("spare"), "llama3:q4", priority=1)

    moved = api.patch(
        f"/api/v1/models/{llama.pk}/", {"endpoint": "gpu", "price_in": "0.5"}, format="json"
    )

    assert moved.status_code == 200
    llama.refresh_from_db()
    assert llama.price_in == Decimal("0.5")
    # The first deployment's upstream name, now the model's only deployment.
    assert served_by(llama) == [("gpu", "llama3:8b", 1, 0)]


def test_an_old_patch_of_the_upstream_name_renames_on_the_first_deployments_endpoint(api, llama):
    response = api.patch(f"/api/v1/models/{llama.pk}/", {"upstream_name": "llama3:8b-q8"})

    assert response.status_code == 200
    assert served_by(llama) == [("local", "llama3:8b-q8", 1, 0)]


def test_an_old_null_endpoint_removes_every_deployment(api, gpu, llama):
    deploy(llama, gpu, "llama3:70b")

    response = api.patch(f"/api/v1/models/{llama.pk}/", {"endpoint": None})

    assert response.status_code == 200
    assert not llama.deployments.exists()


def test_an_old_upstream_name_alone_is_refused_for_a_model_without_deployments(api):
    created = api.post("/api/v1/models/", {"name": "m", "upstream_name": "m"})
    model = Model.objects.create(name="bare")
    patched = api.patch(f"/api/v1/models/{model.pk}/", {"upstream_name": "x"})

    assert created.status_code == patched.status_code == 400
    assert "send endpoint too" in patched.json()["upstream_name"][0]
    assert not Model.objects.filter(name="m").exists()
    assert not Deployment.objects.exists()


def test_old_fields_and_deployments_together_are_refused(api, local, llama):
    response = api.patch(
        f"/api/v1/models/{llama.pk}/", {"endpoint": "local", "deployments": [row("local", "other")]}
    )

    assert response.status_code == 400
    assert list(response.json()) == ["endpoint"]
    assert served_by(llama) == [("local", "llama3:8b", 1, 0)]


# --------------------------------------------------------------------------- lists


def test_it_lists_filters_searches_and_orders_models(api, local, gpu, llama):
    embed = make_model("embed", "nomic", capability="EMBEDDING", endpoint=gpu)
    deploy(embed, gpu, "nomic-v2")  # two on gpu: still listed once
    Model.objects.create(
        name="whisper", capability="AUDIO_STT", billing_unit="MINUTE", strategy="fastest"
    )
    Model.objects.create(name="old", is_active=False, price_in="2")

    def names(**params):
        response = api.get("/api/v1/models/", params)
        assert response.status_code == 200
        return [m["name"] for m in response.json()["results"]]

    assert names() == ["embed", "llama3", "old", "whisper"]
    assert names(is_active="false") == ["old"]
    assert names(capability="EMBEDDING") == ["embed"]
    assert names(billing_unit="MINUTE") == ["whisper"]
    assert names(strategy="fastest") == ["whisper"]
    assert names(endpoint="local") == ["llama3"]
    assert names(endpoint=str(gpu.pk)) == ["embed"]
    assert names(endpoint="nowhere") == []
    assert names(search="nomic") == ["embed"]
    assert names(search="llama3:8b") == ["llama3"]
    assert names(ordering="-price_in") == ["old", "embed", "llama3", "whisper"]
    assert api.get("/api/v1/models/", {"capability": "TELEPATHY"}).status_code == 400


def test_a_model_served_on_two_endpoints_is_found_by_either(api, local, gpu, llama):
    deploy(llama, gpu, "llama3:70b")

    for endpoint in ("local", "gpu"):
        results = api.get("/api/v1/models/", {"endpoint": endpoint}).json()["results"]
        assert [m["name"] for m in results] == ["llama3"]


def test_the_list_costs_the_same_queries_for_many_models_and_deployments(
    api, local, gpu, django_assert_num_queries, django_assert_max_num_queries
):
    def add(names):
        for name in names:
            deploy(make_model(name, "x", endpoint=local), gpu, "y", priority=1)

    add(["m0"])
    api.get("/api/v1/models/")  # the token's first use of the minute is recorded, once
    # Lockouts, the token, its user's permissions (two), the count, the page of models
    # and one for all their deployments with their endpoints.
    with django_assert_max_num_queries(7) as few:
        api.get("/api/v1/models/")
    add(f"m{n}" for n in range(1, 13))

    with django_assert_num_queries(len(few.captured_queries)):
        response = api.get("/api/v1/models/")

    results = response.json()["results"]
    assert len(results) == 13
    assert all(m["deployments"] == [row("local", "x"), row("gpu", "y", 1, 1)] for m in results)


# --------------------------------------------------------------------------- deletes


def test_deleting_a_model_deletes_its_deployments_and_clears_fallbacks_and_allowances(
    api, django_user_model, llama
):
    other = make_model(
        "mistral",
        "mistral",
        endpoint=llama.deployments.get().endpoint,
        fallback=llama,
        context_fallback=llama,
    )
    key, _ = key_services.create_key(
        owner=django_user_model.objects.create_user("alice"), name="k", allowed_models=[llama]
    )

    assert api.delete(f"/api/v1/models/{llama.pk}/").status_code == 204

    other.refresh_from_db()
    assert other.fallback is None and other.context_fallback is None
    assert not key.allowed_models.exists()
    assert list(Deployment.objects.values_list("upstream_name", flat=True)) == ["mistral"]


# --------------------------------------------------------------------------- billing units


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
        "/api/v1/models/", {"name": "m", "capability": capability, "billing_unit": unit}
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
        "/api/v1/models/", {"name": "m", "capability": capability, "billing_unit": unit}
    )

    assert response.status_code == 201
    assert Model.objects.get().billing_unit == unit


# ------------------------------------------------------------------- cache prices and limits


def test_it_writes_and_reads_cache_prices_per_unit_and_token_and_concurrency_limits(api):
    response = api.post(
        "/api/v1/models/",
        {
            "name": "claude",
            "price_in": "0.000003",
            "price_out": "0.000015",
            "price_cache_read": "0.0000003",
            "price_cache_write": "0.00000375",
            "tpm_limit": 400_000,
            "tpd_limit": 20_000_000,
            "max_concurrent": 16,
            "max_output_tokens": 8192,
        },
    )

    assert response.status_code == 201, response.json()
    model = Model.objects.get(name="claude")
    assert (model.price_cache_read, model.price_cache_write) == (
        Decimal("0.0000003"),
        Decimal("0.00000375"),
    )
    assert (model.tpm_limit, model.tpd_limit, model.max_concurrent, model.max_output_tokens) == (
        400_000,
        20_000_000,
        16,
        8192,
    )
    data = api.get(f"/api/v1/models/{model.pk}/").json()
    # Per single unit with the column's ten decimals, as price_in is.
    assert (data["price_in"], data["price_cache_read"], data["price_cache_write"]) == (
        "0.0000030000",
        "0.0000003000",
        "0.0000037500",
    )
    assert (data["tpm_limit"], data["tpd_limit"]) == (400_000, 20_000_000)
    assert (data["max_concurrent"], data["max_output_tokens"]) == (16, 8192)
    assert (data["is_free"], data["unpriced"]) == (False, False)


def test_cache_prices_and_limits_default_to_null_and_can_be_cleared(api, llama):
    Model.objects.filter(pk=llama.pk).update(
        price_cache_read=Decimal("0.1"), tpm_limit=10, max_concurrent=2, max_output_tokens=100
    )
    assert api.post("/api/v1/models/", {"name": "m"}).json()["price_cache_read"] is None

    response = api.patch(
        f"/api/v1/models/{llama.pk}/",
        {"price_cache_read": None, "tpm_limit": None, "max_concurrent": None},
        format="json",
    )

    assert response.status_code == 200
    llama.refresh_from_db()
    assert (llama.price_cache_read, llama.tpm_limit, llama.max_concurrent) == (None, None, None)
    assert llama.max_output_tokens == 100  # not sent: kept


@pytest.mark.parametrize(
    ("fields", "unpriced"),
    [
        ({}, True),
        ({"is_free": True}, False),
        ({"price_out": "0.000001"}, False),
        ({"billing_unit": "REQUEST", "price_out": "0.01"}, True),  # a request's is price_in
        ({"billing_unit": "REQUEST", "price_in": "0.01"}, False),
    ],
)
def test_each_model_says_whether_it_is_unpriced(api, fields, unpriced):
    created = api.post("/api/v1/models/", {"name": "m", **fields}, format="json")

    assert created.status_code == 201, created.json()
    assert created.json()["unpriced"] is unpriced
    listed = api.get("/api/v1/models/").json()["results"]
    assert [m["unpriced"] for m in listed] == [unpriced]


def test_unpriced_is_read_only_and_follows_the_prices(api, llama):
    response = api.patch(f"/api/v1/models/{llama.pk}/", {"unpriced": False}, format="json")

    assert response.status_code == 200
    assert response.json()["unpriced"] is True  # what it is, not what was sent
    marked = api.patch(f"/api/v1/models/{llama.pk}/", {"is_free": True}, format="json")
    assert (marked.json()["is_free"], marked.json()["unpriced"]) == (True, False)
    assert Model.objects.get(pk=llama.pk).is_free


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_cache_read": "-0.000001"}, "price_cache_read"),
        ({"price_cache_write": "-1"}, "price_cache_write"),
        ({"price_cache_read": "cheap"}, "price_cache_read"),
        ({"price_cache_write": "0.00000000001"}, "price_cache_write"),  # 11 decimals
        ({"price_cache_read": "12345678901"}, "price_cache_read"),  # 11 whole digits
        ({"is_free": "perhaps"}, "is_free"),
        ({"tpm_limit": 0}, "tpm_limit"),
        ({"tpd_limit": -5}, "tpd_limit"),
        ({"tpm_limit": "many"}, "tpm_limit"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 1.5}, "max_concurrent"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_it_answers_bad_prices_and_limits_with_field_errors(api, body, field):
    response = api.post("/api/v1/models/", {"name": "m", **body}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Model.objects.exists()

"""The management API for endpoints: a write-only credential, unique names, unlinking models."""

import pytest

from aethergate.testing import deploy, make_endpoint, make_model, served_by
from endpoints.models import Endpoint
from models_registry.models import Model

pytestmark = pytest.mark.django_db

CREDENTIAL = "sk-upstream-credential-0123456789"


@pytest.fixture
def endpoint(db):
    endpoint = Endpoint(name="openai", base_url="https://api.openai.com/v1")
    endpoint.set_api_key(CREDENTIAL)
    endpoint.save()
    return endpoint


def assert_credential_hidden(response, endpoint):
    body = response.content.decode()
    assert CREDENTIAL not in body
    assert not endpoint.api_key_encrypted or endpoint.api_key_encrypted not in body
    assert "api_key" not in response.json()


def test_it_creates_an_endpoint_with_an_encrypted_credential_it_never_returns(api):
    response = api.post(
        "/api/v1/endpoints/",
        {"name": "vllm", "base_url": "http://10.0.0.5:8000/v1", "api_key": CREDENTIAL},
    )

    assert response.status_code == 201
    endpoint = Endpoint.objects.get()
    assert endpoint.api_key == CREDENTIAL
    assert endpoint.api_key_encrypted != CREDENTIAL
    assert response.json()["has_credential"] is True
    assert_credential_hidden(response, endpoint)
    assert_credential_hidden(api.get(f"/api/v1/endpoints/{endpoint.pk}/"), endpoint)
    listed = api.get("/api/v1/endpoints/")
    assert CREDENTIAL not in listed.content.decode()
    assert endpoint.api_key_encrypted not in listed.content.decode()


def test_it_creates_an_endpoint_without_a_credential(api):
    response = api.post(
        "/api/v1/endpoints/", {"name": "ollama", "base_url": "http://localhost:11434/v1"}
    )

    assert response.status_code == 201
    data = response.json()
    assert data["has_credential"] is False
    assert (data["connect_timeout"], data["total_timeout"]) == (5.0, 600.0)


def test_it_creates_an_endpoint_of_the_kind_given_and_changes_it(api):
    response = api.post(
        "/api/v1/endpoints/",
        {"name": "llama", "base_url": "http://10.0.0.5:8080/v1", "kind": "llama_cpp"},
    )

    assert response.status_code == 201
    assert response.json()["kind"] == "llama_cpp"
    endpoint = Endpoint.objects.get()
    assert endpoint.kind == Endpoint.Kind.LLAMA_CPP
    changed = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"kind": "llama_cpp_python"})
    assert (changed.status_code, changed.json()["kind"]) == (200, "llama_cpp_python")
    endpoint.refresh_from_db()
    assert endpoint.kind == "llama_cpp_python"


def test_an_endpoint_created_without_a_kind_is_generic(api):
    response = api.post("/api/v1/endpoints/", {"name": "any", "base_url": "http://10.0.0.5/v1"})

    assert (response.status_code, response.json()["kind"]) == (201, "generic")
    assert Endpoint.objects.get().kind == "generic"


def test_a_kind_that_is_not_a_choice_is_a_field_error(api, endpoint):
    created = api.post(
        "/api/v1/endpoints/", {"name": "x", "base_url": "http://x.example/v1", "kind": "triton"}
    )
    changed = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"kind": "OpenAI"})

    assert (created.status_code, created.json()) == (
        400,
        {"kind": ['"triton" is not a valid choice.']},
    )
    assert (changed.status_code, list(changed.json())) == (400, ["kind"])
    assert list(Endpoint.objects.values_list("name", "kind")) == [("openai", "generic")]


def test_it_creates_an_anthropic_endpoint_and_turns_on_the_responses_api_of_another(api, endpoint):
    created = api.post(
        "/api/v1/endpoints/",
        {"name": "claude", "base_url": "https://api.anthropic.com/v1", "kind": "anthropic"},
    )
    changed = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"native_responses": True})

    assert (created.status_code, created.json()["kind"]) == (201, "anthropic")
    assert created.json()["native_responses"] is False
    assert (changed.status_code, changed.json()["native_responses"]) == (200, True)
    assert dict(Endpoint.objects.values_list("name", "native_responses")) == {
        "claude": False,
        "openai": True,
    }


NO_RESPONSES_ON_ANTHROPIC = {
    "native_responses": [
        "An Anthropic server does not serve OpenAI's Responses API: /v1/responses is "
        "translated onto its Messages API."
    ]
}


def test_the_responses_api_on_an_anthropic_endpoint_is_a_field_error(api, endpoint):
    created = api.post(
        "/api/v1/endpoints/",
        {
            "name": "claude",
            "base_url": "https://api.anthropic.com/v1",
            "kind": "anthropic",
            "native_responses": True,
        },
    )
    Endpoint.objects.filter(pk=endpoint.pk).update(native_responses=True)
    # The rule holds on the row as it would be saved, not only on the fields sent.
    changed = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"kind": "anthropic"})

    assert (created.status_code, created.json()) == (400, NO_RESPONSES_ON_ANTHROPIC)
    assert (changed.status_code, changed.json()) == (400, NO_RESPONSES_ON_ANTHROPIC)
    assert list(Endpoint.objects.values_list("name", "kind", "native_responses")) == [
        ("openai", "generic", True)
    ]


def test_the_schema_describes_the_kind_as_an_enum_of_every_choice(api):
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    components = schema["components"]["schemas"]
    kind = components["Endpoint"]["properties"]["kind"]
    enum = components[kind["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"]
    assert enum == [value for value, _ in Endpoint.Kind.choices]


def test_omitting_the_credential_keeps_it(api, endpoint):
    response = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"rpm_limit": 60})

    assert response.status_code == 200
    endpoint.refresh_from_db()
    assert (endpoint.api_key, endpoint.rpm_limit) == (CREDENTIAL, 60)
    assert_credential_hidden(response, endpoint)


def test_a_new_credential_replaces_the_old_one(api, endpoint):
    response = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"api_key": "sk-new"})

    endpoint.refresh_from_db()
    assert endpoint.api_key == "sk-new"
    assert response.json()["has_credential"] is True
    assert "sk-new" not in response.content.decode()


@pytest.mark.parametrize("cleared", ["", None])
def test_an_empty_or_null_credential_clears_it(api, endpoint, cleared):
    response = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"api_key": cleared})

    assert response.json()["has_credential"] is False
    endpoint.refresh_from_db()
    assert endpoint.api_key_encrypted == ""


def test_put_replaces_the_settings_and_keeps_an_unsent_credential(api, endpoint):
    response = api.put(
        f"/api/v1/endpoints/{endpoint.pk}/",
        {"name": "openai-eu", "base_url": "https://eu.api.openai.com/v1", "idle_timeout": 30},
    )

    assert response.status_code == 200
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.idle_timeout, endpoint.api_key) == (
        "openai-eu",
        30.0,
        CREDENTIAL,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": ""}, "base_url"),
        ({"name": ""}, "name"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"day_limit": -1}, "day_limit"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"total_timeout": "soon"}, "total_timeout"),
    ],
)
def test_it_answers_bad_input_with_field_errors(api, body, field):
    response = api.post(
        "/api/v1/endpoints/", {"name": "x", "base_url": "http://x.example/v1", **body}
    )

    assert response.status_code == 400
    assert field in response.json()
    assert not Endpoint.objects.exists()


def test_it_writes_reads_and_clears_token_limits(api, endpoint):
    created = api.post(
        "/api/v1/endpoints/",
        {"name": "vllm", "base_url": "http://10.0.0.5:8000/v1", "tpm_limit": 90_000},
    )
    patched = api.patch(
        f"/api/v1/endpoints/{endpoint.pk}/", {"tpm_limit": 450_000, "tpd_limit": 2_000_000}
    )

    assert created.status_code == 201, created.json()
    assert (created.json()["tpm_limit"], created.json()["tpd_limit"]) == (90_000, None)
    assert (patched.json()["tpm_limit"], patched.json()["tpd_limit"]) == (450_000, 2_000_000)
    endpoint.refresh_from_db()
    assert (endpoint.tpm_limit, endpoint.tpd_limit, endpoint.api_key) == (
        450_000,
        2_000_000,
        CREDENTIAL,
    )
    cleared = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"tpd_limit": None}, format="json")
    assert cleared.status_code == 200
    endpoint.refresh_from_db()
    assert (endpoint.tpm_limit, endpoint.tpd_limit) == (450_000, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tpm_limit": 0}, "tpm_limit"),
        ({"tpm_limit": -100}, "tpm_limit"),
        ({"tpd_limit": "lots"}, "tpd_limit"),
        ({"tpd_limit": 2.5}, "tpd_limit"),
        ({"tpd_limit": 2**63}, "tpd_limit"),
    ],
)
def test_it_answers_bad_token_limits_with_field_errors(api, body, field):
    response = api.post(
        "/api/v1/endpoints/",
        {"name": "x", "base_url": "http://x.example/v1", **body},
        format="json",
    )

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Endpoint.objects.exists()


def test_a_duplicate_name_is_a_conflict(api, endpoint):
    response = api.post("/api/v1/endpoints/", {"name": "openai", "base_url": "http://x.example/v1"})
    other = Endpoint.objects.create(name="other", base_url="http://y.example/v1")
    renamed = api.patch(f"/api/v1/endpoints/{other.pk}/", {"name": "openai"})

    assert response.status_code == 409
    assert response.json() == {"name": ["Endpoint with this Name already exists."]}
    assert renamed.status_code == 409
    assert Endpoint.objects.count() == 2


def test_it_lists_filters_searches_and_orders_endpoints(api, endpoint):
    Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1", is_active=False)
    Endpoint.objects.create(name="vllm", base_url="http://10.0.0.5:8000/v1")

    def names(**params):
        return [e["name"] for e in api.get("/api/v1/endpoints/", params).json()["results"]]

    assert names() == ["ollama", "openai", "vllm"]
    assert names(is_active="true") == ["openai", "vllm"]
    assert names(search="11434") == ["ollama"]
    assert names(ordering="-name") == ["vllm", "openai", "ollama"]
    assert names(page_size=1, page=3) == ["vllm"]


def test_it_retrieves_an_endpoint_and_404s_an_unknown_one(api, endpoint):
    data = api.get(f"/api/v1/endpoints/{endpoint.pk}/").json()

    assert (data["name"], data["has_credential"]) == ("openai", True)
    assert api.get("/api/v1/endpoints/999999/").status_code == 404
    assert api.patch("/api/v1/endpoints/999999/", {"rpm_limit": 1}).status_code == 404


def test_deleting_an_endpoint_deletes_its_deployments_and_keeps_the_models(api, endpoint):
    other = make_endpoint("azure", "https://azure.example/v1")
    gpt = make_model("gpt-4o", "gpt-4o", endpoint=endpoint)
    deploy(gpt, other, "gpt-4o-eu", priority=1)
    only_here = make_model("gpt-4o-mini", "gpt-4o-mini", endpoint=endpoint)

    assert api.delete(f"/api/v1/endpoints/{endpoint.pk}/").status_code == 204

    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()
    # Each model stays in the catalog with the deployments it has elsewhere, if any.
    assert served_by(gpt) == [("azure", "gpt-4o-eu", 1, 1)]
    assert Model.objects.filter(pk=only_here.pk).exists() and served_by(only_here) == []


def test_a_duplicate_saved_by_a_concurrent_request_is_a_conflict(api, endpoint, monkeypatch):
    # Both requests passed full_clean(); the database's unique index decides.
    monkeypatch.setattr(Endpoint, "validate_unique", lambda self, exclude=None: None)

    response = api.post("/api/v1/endpoints/", {"name": "openai", "base_url": "http://x.example/v1"})

    assert response.status_code == 409
    assert "retry" in response.json()["detail"]
    assert Endpoint.objects.count() == 1


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal",
        "http://[fd00:ec2::254]",
        "http://0.0.0.0",
        "http://[::]",
        "http://[::ffff:127.0.0.1]",
        "http://2130706433",
        "http://0x7f000001",
        "http://127.1",
        "http://0177.0.0.1",
    ],
)
def test_it_refuses_a_base_url_the_address_policy_refuses(api, endpoint, base_url):
    created = api.post("/api/v1/endpoints/", {"name": "imds", "base_url": base_url})
    changed = api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"base_url": base_url})

    for response in (created, changed):
        assert response.status_code == 400, response.content
        assert list(response.json()) == ["base_url"]
    assert not Endpoint.objects.filter(name="imds").exists()
    endpoint.refresh_from_db()
    assert endpoint.base_url == "https://api.openai.com/v1"


def test_a_deny_list_in_the_settings_refuses_an_address_at_save(api, settings):
    settings.AETHERGATE_UPSTREAM_DENY_CIDRS = ["10.0.0.0/8"]

    response = api.post("/api/v1/endpoints/", {"name": "vllm", "base_url": "http://10.0.0.5/v1"})

    assert response.status_code == 400
    assert response.json()["base_url"] == ["10.0.0.5 is refused by AETHERGATE_UPSTREAM_DENY_CIDRS."]
    assert not Endpoint.objects.exists()

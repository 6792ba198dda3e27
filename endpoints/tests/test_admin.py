"""Endpoints in admin: the upstream credential is write-only."""

import re

import pytest
from django.urls import reverse

from aethergate.testing import deploy, make_model
from endpoints.models import Endpoint
from models_registry.models import Model

pytestmark = pytest.mark.django_db

CREDENTIAL = "sk-upstream-0123456789abcdef"


def form(**overrides):
    return {
        "name": "local-vllm",
        "base_url": "http://127.0.0.1:8001/v1",
        "kind": "generic",
        "is_active": "on",
        "connect_timeout": "5",
        "first_byte_timeout": "120",
        "idle_timeout": "60",
        "total_timeout": "600",
        **overrides,
    }


def test_a_credential_is_set_encrypted_and_never_displayed(admin_client):
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_add"), form(new_api_key=CREDENTIAL)
    )

    assert response.status_code == 302
    endpoint = Endpoint.objects.get()
    assert endpoint.api_key == CREDENTIAL
    assert CREDENTIAL not in endpoint.api_key_encrypted
    for url in (
        reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]),
        reverse("admin:endpoints_endpoint_changelist"),
    ):
        page = admin_client.get(url).content.decode()
        assert CREDENTIAL not in page
        assert endpoint.api_key_encrypted not in page
    change = admin_client.get(reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]))
    assert ">set<" in change.content.decode()


def test_saving_without_a_new_credential_keeps_the_old_one(admin_client):
    endpoint = Endpoint(name="local-vllm", base_url="http://127.0.0.1:8001/v1")
    endpoint.set_api_key(CREDENTIAL)
    endpoint.save()

    admin_client.post(
        reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]), form(rpm_limit="30")
    )

    endpoint.refresh_from_db()
    assert endpoint.rpm_limit == 30
    assert endpoint.api_key == CREDENTIAL


def test_a_credential_is_replaced_or_cleared(admin_client):
    endpoint = Endpoint(name="local-vllm", base_url="http://127.0.0.1:8001/v1")
    endpoint.set_api_key(CREDENTIAL)
    endpoint.save()
    url = reverse("admin:endpoints_endpoint_change", args=[endpoint.pk])

    admin_client.post(url, form(new_api_key="sk-new"))
    endpoint.refresh_from_db()
    assert endpoint.api_key == "sk-new"

    admin_client.post(url, form(clear_api_key="on"))
    endpoint.refresh_from_db()
    assert endpoint.api_key == ""
    assert not endpoint.has_credential
    page = admin_client.get(url).content.decode()
    assert "not set" in page


def test_the_kind_is_chosen_among_radio_buttons_generic_first_and_checked(admin_client):
    page = admin_client.get(reverse("admin:endpoints_endpoint_add")).content.decode()

    radios = re.findall(r'<input type="radio" name="kind" value="(\w+)"[^>]*>', page)
    assert radios == [value for value, _ in Endpoint.Kind.choices]
    assert re.search(r'<input type="radio" name="kind" value="generic"[^>]*checked', page)
    assert "llama-cpp-python server" in page


def test_it_saves_the_kind_and_lists_and_filters_endpoints_by_it(admin_client):
    admin_client.post(reverse("admin:endpoints_endpoint_add"), form(kind="vllm"))
    Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1", kind="ollama")
    changelist = reverse("admin:endpoints_endpoint_changelist")

    assert Endpoint.objects.get(name="local-vllm").kind == "vllm"
    listed = admin_client.get(changelist)
    assert [e.name for e in listed.context["cl"].result_list] == ["local-vllm", "ollama"]
    assert '<td class="field-kind">vLLM</td>' in listed.content.decode()
    filtered = admin_client.get(changelist, {"kind__exact": "ollama"})
    assert [e.name for e in filtered.context["cl"].result_list] == ["ollama"]


def test_it_refuses_a_kind_that_is_not_a_choice(admin_client):
    response = admin_client.post(reverse("admin:endpoints_endpoint_add"), form(kind="triton"))

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["kind"]
    assert not Endpoint.objects.exists()


def test_it_saves_an_anthropic_endpoint_and_one_serving_the_responses_api(admin_client):
    add = reverse("admin:endpoints_endpoint_add")
    admin_client.post(
        add, form(name="claude", base_url="https://api.anthropic.com/v1", kind="anthropic")
    )
    admin_client.post(add, form(name="openai", kind="openai", native_responses="on"))

    assert dict(Endpoint.objects.values_list("name", "kind")) == {
        "claude": "anthropic",
        "openai": "openai",
    }
    assert dict(Endpoint.objects.values_list("name", "native_responses")) == {
        "claude": False,
        "openai": True,
    }
    listed = admin_client.get(reverse("admin:endpoints_endpoint_changelist")).content.decode()
    assert '<td class="field-kind">Anthropic (Messages API)</td>' in listed
    assert re.search(r'<td class="field-responses"><img [^>]*alt="True"', listed)
    change = admin_client.get(
        reverse("admin:endpoints_endpoint_change", args=[Endpoint.objects.get(name="openai").pk])
    ).content.decode()
    assert re.search(r'<input type="checkbox" name="native_responses"[^>]*checked', change)


def test_it_refuses_the_responses_api_on_an_anthropic_endpoint(admin_client):
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_add"), form(kind="anthropic", native_responses="on")
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "native_responses": [
            "An Anthropic server does not serve OpenAI's Responses API: /v1/responses is "
            "translated onto its Messages API."
        ]
    }
    assert not Endpoint.objects.exists()


def test_it_refuses_a_bad_url_or_limit_without_echoing_the_credential(admin_client):
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_add"),
        form(base_url="not a url", rpm_limit="0", new_api_key=CREDENTIAL),
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "Enter a valid URL." in page
    assert "greater than or equal to 1" in page
    assert CREDENTIAL not in page
    assert not Endpoint.objects.exists()


def test_token_limits_are_set_in_the_limits_next_to_the_request_limits(admin_client):
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_add"),
        form(rpm_limit="600", tpm_limit="450000", tpd_limit="20000000"),
    )
    endpoint = Endpoint.objects.get()
    page = admin_client.get(reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]))

    assert response.status_code == 302
    assert (endpoint.rpm_limit, endpoint.tpm_limit, endpoint.tpd_limit) == (
        600,
        450_000,
        20_000_000,
    )
    limits = next(f for f in page.context["adminform"] if f.name == "Limits")
    assert [line.fields for line in limits] == [
        ("rpm_limit", "day_limit"),
        ("tpm_limit", "tpd_limit"),
    ]
    assert "Token limits count input + output tokens" in page.content.decode()


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_token_limit_is_refused_on_its_field(admin_client, value):
    response = admin_client.post(reverse("admin:endpoints_endpoint_add"), form(tpd_limit=value))

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["tpd_limit"]
    assert not Endpoint.objects.exists()


def test_deleting_an_endpoint_names_the_models_that_lose_a_deployment(admin_client):
    gone = Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1")
    kept = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8001/v1")
    both = make_model("llama3", "llama3:8b", gone)
    deploy(both, kept, "llama3")
    deploy(both, gone, "llama3:70b")  # two on the endpoint: named once
    only = make_model("qwen2", "qwen2:7b", gone)
    make_model("phi3", "phi3", kept)
    url = reverse("admin:endpoints_endpoint_delete", args=[gone.pk])

    page = admin_client.get(url).content.decode()
    assert (
        "2 models lose a deployment, deleted with the endpoint: llama3, qwen2. The models "
        "stay in the catalog."
    ) in page
    assert "1 model has no other deployment and cannot be served until one is added: qwen2." in (
        page
    )
    assert "Request logs are kept" in page

    admin_client.post(url, {"post": "yes"})
    assert not Endpoint.objects.filter(pk=gone.pk).exists()
    assert sorted(Model.objects.values_list("name", flat=True)) == ["llama3", "phi3", "qwen2"]
    assert [(d.endpoint.name, d.upstream_name) for d in both.deployments.all()] == [
        ("gpu-b", "llama3")
    ]
    assert not only.deployments.exists()


def test_deleting_endpoints_no_model_uses_says_so(admin_client):
    first = Endpoint.objects.create(name="spare", base_url="http://127.0.0.1:8001/v1")
    second = Endpoint.objects.create(name="spare-2", base_url="http://127.0.0.1:8002/v1")

    page = admin_client.post(
        reverse("admin:endpoints_endpoint_changelist"),
        {"action": "delete_selected", "_selected_action": [first.pk, second.pk]},
    ).content.decode()

    assert "No model has a deployment on it." in page
    assert Endpoint.objects.count() == 2  # the confirmation page only


def test_a_bulk_delete_names_the_models_of_every_endpoint_picked(admin_client):
    first = Endpoint.objects.create(name="gpu-a", base_url="http://127.0.0.1:8001/v1")
    second = Endpoint.objects.create(name="gpu-b", base_url="http://127.0.0.1:8002/v1")
    model = make_model("llama3", "llama3:8b", first)
    deploy(model, second, "llama3")

    page = admin_client.post(
        reverse("admin:endpoints_endpoint_changelist"),
        {"action": "delete_selected", "_selected_action": [first.pk, second.pk]},
    ).content.decode()

    assert "1 model loses a deployment, deleted with the endpoints: llama3." in page
    assert "1 model has no other deployment" in page  # its other one goes too


def test_endpoints_are_deactivated_from_the_list(admin_client):
    endpoint = Endpoint.objects.create(name="ollama", base_url="http://127.0.0.1:11434/v1")

    admin_client.post(
        reverse("admin:endpoints_endpoint_changelist"),
        {"action": "deactivate_selected", "_selected_action": [endpoint.pk]},
    )

    endpoint.refresh_from_db()
    assert not endpoint.is_active


def test_it_refuses_a_metadata_address_with_a_form_error(admin_client):
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_add"),
        form(base_url="http://169.254.169.254/latest/meta-data"),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors == {
        "base_url": ["169.254.169.254 is a cloud metadata service, never an upstream."]
    }
    assert not Endpoint.objects.exists()


def test_an_endpoint_saved_before_the_policy_shows_the_error_when_next_edited(admin_client):
    endpoint = Endpoint.objects.create(name="old", base_url="http://2130706433:8001/v1")

    page = admin_client.get(reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]))
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]),
        form(name="old", base_url=endpoint.base_url, rpm_limit="30"),
    )

    assert page.status_code == 200
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "base_url": ["Write the address as 127.0.0.1."]
    }
    endpoint.refresh_from_db()
    assert endpoint.rpm_limit is None

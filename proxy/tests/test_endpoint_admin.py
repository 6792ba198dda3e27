"""The endpoint page's "Test connection" and "Import models", against a real local server."""

import socket

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from aethergate import testing
from aethergate.testing import CHANGE, VIEW, make_staff
from endpoints.models import Endpoint
from models_registry.models import Model
from proxy import upstream as upstream_client
from proxy.snapshot import EndpointInfo
from proxy.tests.conftest import UPSTREAM_API_KEY

pytestmark = pytest.mark.django_db


def served(model) -> list[tuple]:
    return [(d.endpoint, d.upstream_name) for d in model.deployments.select_related("endpoint")]


def page_of(endpoint):
    return reverse("admin:endpoints_endpoint_models", args=[endpoint.pk])


def test_the_endpoint_page_links_test_connection(admin_client, make_endpoint):
    endpoint = make_endpoint()

    page = admin_client.get(reverse("admin:endpoints_endpoint_change", args=[endpoint.pk]))

    assert f'href="{page_of(endpoint)}" class="testconnectionlink">Test connection' in (
        page.content.decode()
    )


def test_it_lists_the_upstreams_models_with_one_get_and_the_credential(
    admin_client, upstream, make_endpoint
):
    upstream.model_ids = ["llama3:8b", "qwen2:7b"]
    upstream.require_api_key = UPSTREAM_API_KEY
    endpoint = make_endpoint()

    response = admin_client.get(page_of(endpoint))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Connected: the upstream lists\n  2 models" in html
    assert [name for name, _ in response.context["listed"]] == ["llama3:8b", "qwen2:7b"]
    assert [(r.method, r.path) for r in upstream.received] == [("GET", "/v1/models")]
    assert upstream.received[0].headers["authorization"] == f"Bearer {UPSTREAM_API_KEY}"
    assert UPSTREAM_API_KEY not in html
    assert endpoint.api_key_encrypted not in html


def test_it_lists_an_anthropic_servers_models_with_its_credential_as_x_api_key(
    admin_client, upstream, make_endpoint
):
    upstream.model_ids = ["claude-opus-4-1", "claude-haiku-4-5"]
    endpoint = make_endpoint(kind=Endpoint.Kind.ANTHROPIC)

    response = admin_client.get(page_of(endpoint))

    assert [name for name, _ in response.context["listed"]] == [
        "claude-opus-4-1",
        "claude-haiku-4-5",
    ]
    (got,) = upstream.received
    assert (got.method, got.path) == ("GET", "/v1/models")
    assert (got.headers["x-api-key"], got.headers["anthropic-version"]) == (
        UPSTREAM_API_KEY,
        "2023-06-01",
    )
    assert "authorization" not in got.headers
    assert UPSTREAM_API_KEY not in response.content.decode()


def test_it_marks_models_already_in_the_catalog(admin_client, upstream, make_endpoint):
    upstream.model_ids = ["llama3:8b", "qwen2:7b"]
    endpoint = make_endpoint()
    known = testing.make_model("qwen2:7b", "qwen2", endpoint)

    response = admin_client.get(page_of(endpoint))

    assert response.context["listed"] == [("llama3:8b", None), ("qwen2:7b", known.pk)]
    assert response.context["new"] == 1
    html = response.content.decode()
    assert 'name="name" value="llama3:8b"' in html
    assert 'name="name" value="qwen2:7b"' not in html


def test_it_says_why_when_the_upstream_refuses_the_credential(
    admin_client, upstream, make_endpoint
):
    upstream.require_api_key = "sk-another-key-entirely"
    endpoint = make_endpoint()

    html = admin_client.get(page_of(endpoint)).content.decode()

    assert "The connection test failed. It answered HTTP 401: Incorrect API key provided." in html
    assert UPSTREAM_API_KEY not in html
    assert "Import models" not in html


def test_it_says_why_when_nothing_listens(admin_client, make_endpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    endpoint = make_endpoint(base_url=f"http://127.0.0.1:{port}/v1")

    html = admin_client.get(page_of(endpoint)).content.decode()

    assert "The connection test failed. Could not connect to it:" in html


def test_it_gives_up_after_its_timeout(admin_client, make_endpoint, monkeypatch):
    monkeypatch.setattr(upstream_client, "MODEL_LIST_TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1]
        endpoint = make_endpoint(base_url=f"http://127.0.0.1:{port}/v1")

        html = admin_client.get(page_of(endpoint)).content.decode()

    assert "The connection test failed. It did not answer within 0.3 s." in html


def test_it_never_dials_an_address_the_policy_refuses(admin_client, make_endpoint):
    # Saved past the form's validation, as an older row or a direct write could be.
    endpoint = make_endpoint()
    Endpoint.objects.filter(pk=endpoint.pk).update(base_url="http://169.254.169.254/v1")

    html = admin_client.get(page_of(endpoint)).content.decode()

    assert "The address policy refuses it" in html
    assert "a cloud metadata service" in html


def test_import_creates_the_picked_models_and_leaves_existing_ones(
    admin_client, upstream, make_endpoint
):
    upstream.model_ids = ["llama3:8b", "qwen2:7b", "phi3"]
    endpoint = make_endpoint()
    other = make_endpoint(name="other")
    existing = testing.make_model("qwen2:7b", "qwen2-q4", other)

    response = admin_client.post(
        page_of(endpoint), {"name": ["llama3:8b", "qwen2:7b", "not-listed"]}, follow=True
    )

    created = Model.objects.get(name="llama3:8b")
    assert created.price_in == 0
    assert served(created) == [(endpoint, "llama3:8b")]
    assert not Model.objects.filter(name__in=["phi3", "not-listed"]).exists()
    assert served(existing) == [(other, "qwen2-q4")]
    assert response.redirect_chain[-1][0] == (
        reverse("admin:models_registry_model_changelist")
        + f"?deployments__endpoint__id__exact={endpoint.pk}"
    )
    assert [m.name for m in response.context["cl"].result_list] == ["llama3:8b"]
    shown = [str(m) for m in response.context["messages"]]
    assert shown[0] == "1 model imported: llama3:8b. Their prices are 0 until you set them."
    assert shown[1] == "Already in the catalog, left as they are: qwen2:7b."
    assert LogEntry.objects.get(object_id=str(created.pk)).change_message == (
        "Imported from endpoint stand-in."
    )
    assert [r.path for r in upstream.received] == ["/v1/models"]  # the list, checked again


def test_import_with_nothing_picked_changes_nothing(admin_client, upstream, make_endpoint):
    endpoint = make_endpoint()

    response = admin_client.post(page_of(endpoint), {})

    assert response.status_code == 200
    assert "Pick at least one model to import." in response.content.decode()
    assert not Model.objects.exists()


def test_staff_who_may_not_add_models_see_the_list_but_cannot_import(
    client, upstream, make_endpoint
):
    endpoint = make_endpoint()
    client.force_login(make_staff("viewer", VIEW))

    listed = client.get(page_of(endpoint))
    refused = client.post(page_of(endpoint), {"name": ["echo"]})

    assert listed.status_code == 200
    assert 'name="name"' not in listed.content.decode()
    assert refused.status_code == 403
    assert not Model.objects.exists()


def test_staff_without_endpoint_permissions_are_refused(client, make_endpoint):
    endpoint = make_endpoint()
    client.force_login(make_staff("models-only", CHANGE, apps=("models_registry",)))

    assert client.get(page_of(endpoint)).status_code == 403


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b'{"object": "list"}', 'not a model list (JSON with a "data" list)'),
        (200, b"<html>", 'not a model list (JSON with a "data" list)'),
        (404, b"", "It answered HTTP 404."),
        (
            500,
            b'{"error": {"message": "boom at http://10.0.0.7/x"}}',
            "HTTP 500: boom at [redacted]",
        ),
    ],
)
def test_an_answer_that_is_no_model_list_is_reported(status, body, reason):
    endpoint = EndpointInfo.from_model(Endpoint(name="e", base_url="http://127.0.0.1:1/v1"))

    with pytest.raises(upstream_client.ModelListFailed) as failure:
        upstream_client._model_ids(status, body, endpoint)
    assert reason in str(failure.value)


def test_model_ids_are_listed_once_each_in_the_upstreams_order():
    endpoint = EndpointInfo.from_model(Endpoint(name="e", base_url="http://127.0.0.1:1/v1"))
    body = b'{"data": [{"id": "b"}, {"id": "a"}, {"id": "b"}, {"id": 3}, {"id": " "}, "x"]}'

    assert upstream_client._model_ids(200, body, endpoint) == ["b", "a"]

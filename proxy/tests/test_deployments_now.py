"""The "Deployments now" panel of the model and endpoint pages (proxy/admin.py): what the
router of the process serving the page knows, over a live gateway (uvicorn in a thread)."""

import re
import socket
from datetime import UTC, datetime

import httpx
import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse

from aethergate import testing
from aethergate.testing import FakeClock, deploy
from endpoints.models import Endpoint
from models_registry.models import Deployment
from proxy import admin as proxy_admin
from proxy.health import BreakerPolicy
from proxy.routing import Router
from proxy.snapshot import DeploymentInfo, EndpointInfo

NOON = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
POLICY = BreakerPolicy(consecutive=5, cooldown=5.0)


@pytest.fixture(autouse=True)
def _connections_closed_after_each_request(monkeypatch):
    # Django serves each ASGI request in a thread of its own: a persistent connection
    # (CONN_MAX_AGE) made there outlives the request, and PostgreSQL then refuses to drop
    # the test database at the end of the run.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)


def info(deployment) -> DeploymentInfo:
    endpoint = EndpointInfo.from_model(deployment.endpoint)
    return DeploymentInfo.from_model(deployment, endpoint=endpoint)


@pytest.fixture
def catalog(make_endpoint):
    """llama3 on gpu-a (weight 2) and gpu-b, with a standby on gpu-c; qwen2 on gpu-b."""
    gpu_a, gpu_b, gpu_c = (make_endpoint(name) for name in ("gpu-a", "gpu-b", "gpu-c"))
    llama = testing.make_model("llama3", "llama3:8b", gpu_a)
    llama.deployments.update(weight=2)
    deploy(llama, gpu_b, "llama3:8b")
    deploy(llama, gpu_c, "llama3", priority=1)
    testing.make_model("qwen2", "qwen2:7b", gpu_b)
    deployments = Deployment.objects.select_related("endpoint", "model")
    return {f"{d.endpoint}/{d.model}": d for d in deployments}


@pytest.fixture
def staff_session(settings):
    """A superuser's session cookie, for requests over the network."""
    browser = Client()
    browser.force_login(testing.superuser())
    name = settings.SESSION_COOKIE_NAME
    return {name: browser.cookies[name].value}


@pytest.fixture
def router(gateway, monkeypatch):
    """The live gateway's router, replaced by one on a fake clock; the admin's wall clock
    stands at NOON (Paris time: 13:00)."""
    clock = FakeClock()
    router = Router(policy=POLICY, clock=clock)
    router.fake_clock = clock
    gateway.app.runtime.router = router
    monkeypatch.setattr(proxy_admin.LiveStateAdmin, "wall_clock", staticmethod(lambda: NOON))
    return router


def page(gateway, session, admin_url, obj) -> str:
    response = httpx.get(
        gateway.base_url + reverse(admin_url, args=[obj.pk]), cookies=session, timeout=10
    )
    assert response.status_code == 200, response.text[:500]
    return response.text


def panel(html: str) -> str:
    start = html.index('<div class="module" id="deployments-now">')
    return html[start : html.index("</div>", start)]


def rows(html: str) -> list[str]:
    """The panel's rows as text: cells joined by " | ", tags dropped."""
    body = panel(html)
    found = []
    for tr in re.findall(r'<tr class="deployment-now[^"]*">(.*?)</tr>', body, re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)
        found.append(" | ".join(re.sub(r"<[^>]+>", "", c).strip() for c in cells))
    return found


@pytest.mark.django_db(transaction=True)
def test_the_model_page_shows_an_open_circuit_and_when_it_reopens(
    gateway, router, catalog, staff_session, settings
):
    settings.TIME_ZONE = "Europe/Paris"
    gpu_a, gpu_b = catalog["gpu-a/llama3"], catalog["gpu-b/llama3"]
    for _ in range(2):
        router.of(info(gpu_a)).taken()
    router.succeeded(info(gpu_a), ttfb=0.42)  # one answered, one still in flight
    for _ in range(POLICY.consecutive):
        router.failed(info(gpu_b))
    router.fake_clock.advance(1.5)

    html = page(gateway, staff_session, "admin:models_registry_model_change", gpu_a.model)

    assert rows(html) == [
        "gpu-a/llama3:8b | 2 | 0 | closed | 0% | 1 | 420 ms",
        "gpu-b/llama3:8b | 1 | 0 | open until 13:00:04 (reopens in 4 s) | \u2013 | 0 | \u2013",
        "gpu-c/llama3 | 1 | 1 (standby) | No traffic seen by this process yet | \u2013 | \u2013 "
        "| \u2013",
    ]
    assert 'class="deployment-now state-open"' in panel(html)
    assert "Errors (last 30 s)" in panel(html)
    assert "each process keeps its own state" in panel(html)
    assert "aethergate_breaker_state" in panel(html)


@pytest.mark.django_db(transaction=True)
def test_once_the_cooldown_is_over_the_page_says_half_open(gateway, router, catalog, staff_session):
    gpu_b = catalog["gpu-b/llama3"]
    for _ in range(POLICY.consecutive):
        router.failed(info(gpu_b))
    router.fake_clock.advance(POLICY.cooldown)

    html = page(gateway, staff_session, "admin:models_registry_model_change", gpu_b.model)

    assert rows(html)[1].startswith("gpu-b/llama3:8b | 1 | 0 | half-open: the next request is")


@pytest.mark.django_db(transaction=True)
def test_the_endpoint_page_shows_the_deployments_on_it_by_model(
    gateway, router, catalog, staff_session
):
    gpu_b = catalog["gpu-b/llama3"]
    for _ in range(POLICY.consecutive):
        router.failed(info(gpu_b))

    html = page(gateway, staff_session, "admin:endpoints_endpoint_change", gpu_b.endpoint)

    assert rows(html) == [
        "llama3 (llama3:8b) | 1 | 0 | open until 12:00:05 (reopens in 5 s) | \u2013 | 0 | \u2013",
        "qwen2 (qwen2:7b) | 1 | 0 | No traffic seen by this process yet | \u2013 | \u2013 | \u2013",
    ]
    model_page = reverse("admin:models_registry_model_change", args=[gpu_b.model_id])
    assert f'<a href="{model_page}">llama3 (llama3:8b)</a>' in panel(html)


@pytest.mark.django_db(transaction=True)
def test_a_process_that_saw_no_traffic_says_so_and_why_a_deployment_gets_none(
    gateway, router, catalog, staff_session
):
    llama = catalog["gpu-a/llama3"].model
    Deployment.objects.filter(pk=catalog["gpu-c/llama3"].pk).update(weight=0)
    Endpoint.objects.filter(name="gpu-b").update(is_active=False)

    html = page(gateway, staff_session, "admin:models_registry_model_change", llama)

    assert [r.split(" | ")[3] for r in rows(html)] == [
        "No traffic seen by this process yet",
        "No traffic seen by this process yet: gets no requests, endpoint inactive",
        "No traffic seen by this process yet: gets no requests, drained (weight 0)",
    ]


def test_without_a_runtime_in_the_process_the_panel_says_it_serves_no_traffic(
    admin_client, make_endpoint
):
    # The test client calls Django directly, as `manage.py runserver` does: no /v1 app.
    model = testing.make_model("llama3", "llama3:8b", make_endpoint("gpu-a"))

    html = admin_client.get(reverse("admin:models_registry_model_change", args=[model.pk]))

    text = panel(html.content.decode())
    assert "Not served by this process" in text
    assert "<table>" not in text
    endpoint_page = admin_client.get(
        reverse("admin:endpoints_endpoint_change", args=[model.deployments.get().endpoint_id])
    )
    assert "Not served by this process" in panel(endpoint_page.content.decode())


def test_the_add_page_has_no_panel(admin_client):
    html = admin_client.get(reverse("admin:models_registry_model_add")).content.decode()

    assert 'id="deployments-now"' not in html


@pytest.mark.django_db(transaction=True)
def test_real_traffic_opens_a_dead_deployments_circuit_and_the_page_shows_it(
    gateway, make_endpoint, make_key, staff_session
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # closed again: nothing listens there
    alive = make_endpoint("gpu-a")
    dead = make_endpoint("gpu-b", base_url=f"http://127.0.0.1:{dead_port}/v1")
    model = testing.make_model("llama3", "echo", alive)
    broken = deploy(model, dead, "echo")
    _, secret = make_key()
    router = gateway.app.runtime.router

    def opened():
        httpx.post(
            f"{gateway.v1}/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        state = router.states([broken.pk]).get(broken.pk)
        return state is not None and state["state"] == "open"

    testing.wait_for(opened, 30, interval=0, what="gpu-b's circuit to open")
    html = page(gateway, staff_session, "admin:models_registry_model_change", model)

    alive_row, dead_row = rows(html)
    assert alive_row.startswith("gpu-a/echo | 1 | 0 | closed | 0% | 0 | ")
    assert alive_row.endswith(" ms")
    assert dead_row.startswith("gpu-b/echo | 1 | 0 | open until ")

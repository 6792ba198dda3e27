"""End to end: a model with several deployments, set up in the admin in headless Chromium,
then served: one deployment's endpoint is down, its circuit opens, and the model page
shows it in "Deployments now" as the gateway process sees it.

Uses the first-run gateway of aethergate/tests/test_browser.py (uvicorn on a fresh SQLite
database), with a cooldown long enough for the open circuit to still be open when the
page is looked at. Screenshots at 1366x768 (`deployments-*.png`) go to docs/screenshots/
when AETHERGATE_SCREENSHOTS_TO_DOCS=1.
"""

import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from aethergate.testing import wait_for
from aethergate.tests import test_browser as e2e
from proxy.tests.upstream import Upstream

pytestmark = pytest.mark.browser
browser, expect = e2e.browser, e2e.expect
OPEN_FOR_SECONDS = 600  # the cooldown: the circuit stays open while the test looks at it
OPEN_STATE = 2  # aethergate_breaker_state's value for an open circuit
CHAT_REQUESTS_AT_MOST = 200
METRICS_TOKEN = "deployments-browser-test-metrics"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    settings = {
        "AETHERGATE_BREAKER_COOLDOWN_SECONDS": str(OPEN_FOR_SECONDS),
        "AETHERGATE_BREAKER_MAX_COOLDOWN_SECONDS": str(OPEN_FOR_SECONDS),
        "AETHERGATE_RETRY_BACKOFF_SECONDS": "0",
        "AETHERGATE_METRICS_TOKEN": METRICS_TOKEN,
    }
    with e2e.serve(tmp_path_factory.mktemp("aethergate-deployments"), settings) as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections to it are refused


def _add_endpoint(page, name, base_url):
    page.goto(e2e.ENDPOINTS + "add/")
    page.locator("#id_name").fill(name)
    page.locator("#id_base_url").fill(base_url)
    e2e._save(page)
    e2e._success(page, "was added successfully")


def _add_model(page, name, deployments, *, capability=None):
    page.goto(e2e.MODELS + "add/")
    page.locator("#id_name").fill(name)
    if capability:
        page.locator("#id_capability").select_option(capability)
    for index, (endpoint, upstream_name, weight, priority) in enumerate(deployments):
        e2e._add_deployment(page, index, endpoint, upstream_name, weight=weight, priority=priority)
    e2e._save(page)
    e2e._success(page, "was added successfully")


def _issue_key(page, owner) -> str:
    page.goto(e2e.KEYS + "add/")
    page.locator("#id_name").fill("traffic")
    e2e._pick_autocomplete(page, "owner", owner)
    e2e._save(page)
    expect(page.locator("#content h1")).to_have_text("API key created")
    return page.locator("code.api-key-secret").inner_text().strip()


def _chat(gateway, secret) -> int:
    request = urllib.request.Request(  # noqa: S310 -- plain http on loopback, built above
        f"{gateway.url}/v1/chat/completions",
        data=json.dumps(
            {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as refused:  # a retry budget spent: still traffic
        return refused.code


def _breaker_state(gateway, deployment) -> float | None:
    request = urllib.request.Request(  # noqa: S310 -- plain http on loopback, built above
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    found = re.search(
        rf'^aethergate_breaker_state\{{deployment="{re.escape(deployment)}"\}} (\S+)$',
        text,
        re.M,
    )
    return float(found[1]) if found else None


def _served_by(page, name) -> str:
    """The list's served-by cell of model `name`, as shown: one deployment a line."""
    return e2e._row(page, name).locator("td.field-served_by").inner_text().strip()


def _panel_rows(page) -> list[list[str]]:
    rows = page.locator("#deployments-now tbody tr")
    return [
        [cell.strip() for cell in rows.nth(i).locator("th, td").all_inner_texts()]
        for i in range(rows.count())
    ]


def test_an_open_circuit_on_the_model_page(browser, gateway, tmp_path_factory):
    e2e._drive(
        browser,
        gateway,
        tmp_path_factory.mktemp("deployments-screenshots"),
        _walk,
        viewport=e2e.LAPTOP,
    )


def _walk(page, gateway, shots):
    e2e._log_in(page, gateway)
    with Upstream() as upstream:
        _add_endpoint(page, "gpu-a", upstream.base_url)
        _add_endpoint(page, "gpu-b", f"http://127.0.0.1:{_closed_port()}/v1")
        _add_endpoint(page, "gpu-c", upstream.base_url)

        # A model on three deployments, added through the form's rows at once.
        page.goto(e2e.MODELS + "add/")
        expect(page.locator("#deployments-help")).to_contain_text("a higher number is a standby")
        _add_model(
            page,
            "llama3",
            [
                ("gpu-a", "llama3:8b", 2, None),
                ("gpu-b", "llama3:8b", None, None),
                ("gpu-c", "llama3", None, 1),
            ],
        )
        assert _served_by(page, "llama3") == (
            "gpu-a/llama3:8b \u00d72,\ngpu-b/llama3:8b,\ngpu-c/llama3 (standby)"
        )
        _add_model(page, "qwen2.5-coder", [("gpu-c", "Qwen/Qwen2.5-Coder-32B-Instruct", 3, None)])
        _add_model(
            page,
            "nomic-embed",
            [("gpu-a", "nomic-embed-text-v1.5", None, None), ("gpu-c", "nomic-embed", 0, None)],
            capability="EMBEDDING",
        )

        # Traffic: requests go to gpu-a and gpu-b; gpu-b refuses every connection, so
        # after a few failures its circuit opens (and retries land on gpu-a meanwhile).
        e2e._add_consumer(page, "traffic", "traffic@example.com", "Traffic", "100")
        secret = _issue_key(page, "traffic")
        statuses = []

        def opened():
            statuses.append(_chat(gateway, secret))
            return _breaker_state(gateway, "gpu-b/llama3:8b") == OPEN_STATE

        wait_for(opened, 60, interval=0, what="gpu-b's circuit to open")
        assert len(statuses) < CHAT_REQUESTS_AT_MOST
        assert 200 in statuses

    # The model page: its deployments, then what this process knows of each.
    e2e._open_change_page(page, e2e.MODELS, "llama3")
    rows = _panel_rows(page)
    assert [row[:3] for row in rows] == [
        ["gpu-a/llama3:8b", "2", "0"],
        ["gpu-b/llama3:8b", "1", "0"],
        ["gpu-c/llama3", "1", "1 (standby)"],
    ]
    assert rows[0][3] == "closed"
    assert rows[0][6].endswith(" ms")
    assert re.fullmatch(r"open until \d\d:\d\d:\d\d \(reopens in \d+ s\)", rows[1][3]), rows[1]
    assert rows[2][3] == "No traffic seen by this process yet"
    expect(page.locator("#deployments-now")).to_contain_text("each process keeps its own state")
    e2e._shot(page, shots, "deployments-model-1366-full.png")
    # From the end of the Routing fieldset: the deployments, and what this process knows.
    page.evaluate("document.querySelector('#deployments-help').scrollIntoView()")
    page.evaluate("window.scrollBy(0, -110)")
    e2e._viewport_shot(page, shots, "deployments-model-1366x768.png")

    # The endpoint's page: the same, for the deployments on it.
    e2e._open_change_page(page, e2e.ENDPOINTS, "gpu-b")
    assert [row[0] for row in _panel_rows(page)] == ["llama3 (llama3:8b)"]
    page.evaluate("document.querySelector('#deployments-now').scrollIntoView()")
    e2e._viewport_shot(page, shots, "deployments-endpoint-1366x768.png")

    # The list: each model's deployments in one column, within a laptop's width.
    e2e._assert_list_fits(page, e2e.MODELS)
    assert _served_by(page, "nomic-embed") == (
        "gpu-a/nomic-embed-text-v1.5,\ngpu-c/nomic-embed (drained)"
    )
    e2e._viewport_shot(page, shots, "deployments-list-1366x768.png")

    # Deleting gpu-c would leave qwen2.5-coder with no deployment: the page says so.
    e2e._open_change_page(page, e2e.ENDPOINTS, "gpu-c")
    page.get_by_role("link", name="Delete", exact=True).click()
    notes = page.locator("#delete-notes")
    expect(notes).to_contain_text(
        "3 models lose a deployment, deleted with the endpoint: llama3, nomic-embed, qwen2.5-coder."
    )
    expect(notes).to_contain_text("1 model has no other deployment")
    e2e._viewport_shot(page, shots, "deployments-delete-endpoint-1366x768.png")
    assert not re.search(r"Traceback|Internal Server Error", gateway.log_text())

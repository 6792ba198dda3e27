"""The upstream client's request headers (`proxy.upstream`), as a real local server got them."""

import asyncio

import pytest
from aiohttp import web

from proxy import upstream
from proxy.tests.fakes import endpoint_info
from proxy.tests.scripted import ScriptedUpstream

CREDENTIAL = "sk-upstream-secret"  # fakes.endpoint_info's
MODELS = {"data": [{"type": "model", "id": "claude-opus-4-1", "display_name": "Claude"}]}
# Headers aiohttp adds to every request by itself.
TRANSPORT = {"host", "content-length", "accept-encoding"}
SENT_TO_ALL = {
    "content-type": "application/json",
    "accept": "application/json",
    "user-agent": "AetherGate",
    "x-request-id": "req-1",
}
TO_ANTHROPIC = {**SENT_TO_ALL, "x-api-key": CREDENTIAL, "anthropic-version": "2023-06-01"}


@pytest.fixture
def scripted():
    """The scripted upstream, answering MODELS (or `scripted.answer`) to everything;
    `scripted.got` lists each request as (method, path with query, headers)."""
    with ScriptedUpstream() as server:
        server.got, server.answer = [], (200, MODELS)

        async def record(request):
            names = [name.lower() for name in request.headers]
            assert len(names) == len(set(names)), f"a header sent twice: {names}"
            headers = {k.lower(): v for k, v in request.headers.items()}
            server.got.append((request.method, request.path_qs, headers))
            status, body = server.answer
            return web.json_response(body, status=status)

        server.handler = record
        yield server


def got_headers(scripted) -> dict[str, str]:
    """The headers of the one request the upstream got, but the transport's own."""
    ((_, _, headers),) = scripted.got
    return {k: v for k, v in headers.items() if k not in TRANSPORT}


def on_client(call):
    """`await call(client)` on a new upstream.Client, closed after."""

    async def run():
        client = upstream.Client(max_connections=1)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def post(endpoint, headers=None) -> None:
    async def call(client):
        response = await client.post(
            endpoint, "/messages", b"{}", stream=False, request_id="req-1", headers=headers
        )
        await response.read()
        response.close()

    on_client(call)


# --------------------------------------------------------------------------- post


def test_it_sends_an_anthropic_server_its_credential_as_x_api_key_and_a_version(scripted):
    post(endpoint_info(kind="anthropic", base_url=scripted.base_url))

    assert [(method, path) for method, path, _ in scripted.got] == [("POST", "/v1/messages")]
    assert got_headers(scripted) == TO_ANTHROPIC


def test_an_anthropic_server_without_a_credential_gets_none(scripted):
    post(endpoint_info(kind="anthropic", base_url=scripted.base_url, api_key=""))

    assert got_headers(scripted) == {**SENT_TO_ALL, "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("kind", ["generic", "openai", "vllm"])
def test_other_servers_get_a_bearer_credential_and_no_anthropic_header(scripted, kind):
    post(
        endpoint_info(kind=kind, base_url=scripted.base_url),
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "output-128k-2025-02-19"},
    )

    assert got_headers(scripted) == {**SENT_TO_ALL, "authorization": f"Bearer {CREDENTIAL}"}


def test_it_passes_on_the_anthropic_version_and_beta_flags_it_is_given(scripted):
    beta = "prompt-caching-2024-07-31,output-128k-2025-02-19"

    post(
        endpoint_info(kind="anthropic", base_url=scripted.base_url),
        headers={"Anthropic-Version": "2026-10-21", "anthropic-beta": beta},
    )

    assert got_headers(scripted) == {
        **TO_ANTHROPIC,
        "anthropic-version": "2026-10-21",
        "anthropic-beta": beta,
    }


def test_it_sends_no_other_header_it_is_given(scripted):
    post(
        endpoint_info(kind="anthropic", base_url=scripted.base_url),
        headers={
            "Authorization": "Bearer sk-client-key",
            "x-api-key": "sk-client-key",
            "Host": "metadata.google.internal",
            "Content-Type": "text/plain",
            "Content-Length": "0",
            "Transfer-Encoding": "chunked",
            "X-Request-ID": "client-chosen",
            "X-Forwarded-For": "10.0.0.1",
            "anthropic-dangerous-direct-browser-access": "true",
        },
    )

    assert got_headers(scripted) == TO_ANTHROPIC


@pytest.mark.parametrize(
    "value",
    [
        "output-128k-2025-02-19\r\nX-Injected: 1",
        "output-128k-2025-02-19\nX-Injected: 1",
        "tab\there",
        "nul\x00",
        "β-flag",
        "x" * 1001,
        "",
    ],
    ids=["crlf", "lf", "tab", "nul", "non-ascii", "too-long", "empty"],
)
def test_it_drops_an_allowed_header_whose_value_is_not_short_printable_ascii(scripted, value):
    post(
        endpoint_info(kind="anthropic", base_url=scripted.base_url),
        headers={"anthropic-beta": value, "anthropic-version": value},
    )

    assert got_headers(scripted) == TO_ANTHROPIC


def test_a_value_of_1000_printable_characters_is_sent(scripted):
    value = "~ a-Z_0.9," * 100

    post(endpoint_info(kind="anthropic", base_url=scripted.base_url), {"anthropic-beta": value})

    assert got_headers(scripted) == {**TO_ANTHROPIC, "anthropic-beta": value}


# --------------------------------------------------------------------------- the GETs


def test_it_lists_an_anthropic_servers_models_in_one_page_with_its_credential(scripted):
    endpoint = endpoint_info(kind="anthropic", base_url=scripted.base_url)

    ids = on_client(lambda client: client.list_models(endpoint, seconds=5))

    assert ids == ["claude-opus-4-1"]
    assert [(method, path) for method, path, _ in scripted.got] == [
        ("GET", "/v1/models?limit=1000")
    ]
    assert got_headers(scripted) == {
        "accept": "application/json",
        "user-agent": "AetherGate",
        "x-api-key": CREDENTIAL,
        "anthropic-version": "2023-06-01",
    }


def test_an_anthropic_servers_refusal_is_reported_with_its_message(scripted):
    scripted.answer = (
        401,
        {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        },
    )
    endpoint = endpoint_info(kind="anthropic", base_url=scripted.base_url)

    with pytest.raises(upstream.ModelListFailed) as failure:
        on_client(lambda client: client.list_models(endpoint, seconds=5))

    assert str(failure.value) == "It answered HTTP 401: invalid x-api-key"


@pytest.mark.parametrize(
    ("kind", "credential"),
    [
        ("anthropic", {"x-api-key": CREDENTIAL, "anthropic-version": "2023-06-01"}),
        ("generic", {"authorization": f"Bearer {CREDENTIAL}"}),
    ],
)
def test_a_health_check_sends_the_credential_as_the_kind_wants(scripted, kind, credential):
    endpoint = endpoint_info(kind=kind, base_url=scripted.base_url)

    healthy = on_client(lambda client: client.check(endpoint, "/models", seconds=5))

    assert healthy is True
    assert [(method, path) for method, path, _ in scripted.got] == [("GET", "/v1/models")]
    assert got_headers(scripted) == {
        "accept": "application/json",
        "user-agent": "AetherGate",
        **credential,
    }

"""Fixtures for gateway tests: the upstream stand-in, a live gateway, data factories, clients."""

import contextlib
import socket
import threading
from dataclasses import dataclass

import openai
import pytest

from aethergate import testing
from proxy.tests.upstream import Upstream
from proxy.tests.wire import Recording

GATEWAY_START_SECONDS = 10.0
GATEWAY_STOP_SECONDS = 10.0
CLIENT_TIMEOUT_SECONDS = 10.0
UPSTREAM_API_KEY = "sk-upstream-secret"


@pytest.fixture(scope="session")
def _upstream_session():
    """One stand-in for the whole run: behaviour is chosen per request, by model name."""
    with Upstream() as server:
        yield server


@pytest.fixture
def upstream(_upstream_session):
    """The running stand-in with `received` and overrides cleared for this test."""
    _upstream_session.reset()
    yield _upstream_session
    _upstream_session.reset()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama-cpp-python's real server on a tiny generated model, for the whole run.

    Aliases `tiny-chat`, `tiny-embed` and `tiny-tools` (proxy/tests/llamacpp.py). Skipped
    without .venv-llama (`make llama`), unless AETHERGATE_REQUIRE_LLAMA=1 (CI): then failed.
    """
    from proxy.tests import llamacpp

    reason = llamacpp.missing()
    if reason:
        if llamacpp.required():
            pytest.fail(f"{llamacpp.REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    with llamacpp.LlamaServer(tmp_path_factory.mktemp("llama")) as server:
        yield server


@dataclass
class Gateway:
    """A live AetherGate served by uvicorn: `base_url` is its root, `v1` the OpenAI base URL."""

    base_url: str
    v1: str
    server: object
    thread: threading.Thread
    app: object  # the `/v1` App served; `app.runtime` is its Runtime while it serves


@pytest.fixture
def gateway(transactional_db):
    """AetherGate's ASGI app served by uvicorn on 127.0.0.1 in a thread, for one test.

    `transactional_db` commits what the test writes, so the server's threads see it.
    """
    import uvicorn

    from aethergate import server as http_server
    from aethergate.asgi import make_application

    application = make_application()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # As gunicorn does: without it, replies on a kept-alive connection wait
    # ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app=application,
        host="127.0.0.1",
        port=port,
        # The proxy starts its log writer and upstream pool on lifespan startup.
        lifespan="on",
        log_level="warning",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        http=http_server.HTTP,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="gateway", daemon=True
    )
    thread.start()
    with contextlib.suppress(testing.NotYet):  # not started: stopped and reported below
        testing.wait_for(
            lambda: server.started or not thread.is_alive(), GATEWAY_START_SECONDS, interval=0.005
        )
    if not server.started:
        server.should_exit = True
        thread.join(GATEWAY_STOP_SECONDS)
        sock.close()
        pytest.fail("the gateway did not start", pytrace=False)
    base_url = f"http://127.0.0.1:{port}"
    try:
        yield Gateway(
            base_url=base_url,
            v1=f"{base_url}/v1",
            server=server,
            thread=thread,
            app=application.proxy,
        )
    finally:
        server.should_exit = True
        thread.join(GATEWAY_STOP_SECONDS)
        if thread.is_alive():
            server.force_exit = True
            thread.join(GATEWAY_STOP_SECONDS)
        sock.close()


# --------------------------------------------------------------------------- factories


@pytest.fixture
def make_user(db):
    """`make_user(username="alice", balance=None, is_active=True, **fields)` → a saved User."""
    return testing.make_user


@pytest.fixture
def make_endpoint(db, upstream):
    """`make_endpoint(name="stand-in", base_url=None, api_key=..., **fields)` → a saved Endpoint.

    `base_url` defaults to the stand-in's; the credential is stored encrypted.
    """

    def make(name="stand-in", base_url=None, api_key=UPSTREAM_API_KEY, **fields):
        return testing.make_endpoint(name, base_url or upstream.base_url, api_key, **fields)

    return make


@pytest.fixture
def make_model(db, make_endpoint):
    """`make_model(name="gpt-test", upstream_name="echo", endpoint=None, **fields)` → a Model.

    Without `endpoint`, one endpoint on the stand-in is made (by the first call) and shared.
    """
    shared = []

    def make(name="gpt-test", upstream_name="echo", endpoint=None, **fields):
        if endpoint is None:
            if not shared:
                shared.append(make_endpoint())
            endpoint = shared[0]
        return testing.make_model(name, upstream_name, endpoint, **fields)

    return make


@pytest.fixture
def make_key(db, make_user):
    """`make_key(owner=None, name="test", **fields)` → `(APIKey, secret)` via `create_key`.

    Without `owner`, one user ("alice") is made (by the first call) and shared.
    """
    shared = []

    def make(owner=None, name="test", **fields):
        if owner is None:
            if not shared:
                shared.append(make_user())
            owner = shared[0]
        return testing.make_key(owner, name, **fields)

    return make


# --------------------------------------------------------------------------- clients


@pytest.fixture
def client_for(gateway):
    """`client_for(secret)` → an `openai.OpenAI` on the gateway: no retries, 10 s timeout."""
    clients = []

    def make(secret, **options):
        client = openai.OpenAI(
            base_url=gateway.v1,
            api_key=secret,
            **{"max_retries": 0, "timeout": CLIENT_TIMEOUT_SECONDS, **options},
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def async_client_for(gateway):
    """`async_client_for(secret)` → an `openai.AsyncOpenAI` on the gateway, like `client_for`.

    Close it in the event loop that used it (`async with async_client_for(secret) as c:`).
    """

    def make(secret, **options):
        return openai.AsyncOpenAI(
            base_url=gateway.v1,
            api_key=secret,
            **{"max_retries": 0, "timeout": CLIENT_TIMEOUT_SECONDS, **options},
        )

    return make


@pytest.fixture
def wire():
    """A `Recording` of answers: pass `http_client=wire.client()` (or `wire.client(httpx2)`,
    for the anthropic SDK) to an SDK, then check what it was sent (proxy/tests/wire.py)."""
    return Recording()

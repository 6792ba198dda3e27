"""Several gateway processes sharing one database and one Redis, and how each behaves when
Redis or the database goes away, or when it is told to stop.

The gateways here are real server processes (uvicorn, or gunicorn with uvicorn workers) on
loopback ports, started on the test database; the upstream is the stand-in, Redis a private
redis-server, and a database outage is a TCP proxy in front of PostgreSQL cutting every
connection.
"""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis
from django.conf import settings
from django.db import connection

from aethergate.testing import wait_for, wait_for_logs
from keys.models import APIKey
from logs.models import RequestLog
from proxy.tests.processes import FaultProxy, ServerProcess, free_port
from proxy.tests.test_forwarding import HELLO
from proxy.tests.upstream import chat_answer, stream_text

MASTER_KEY = "master-key-for-scale-out-tests-0123456789"
METRICS_TOKEN = "metrics-token-for-scale-out-tests-0123"
POSTGRES = connection.vendor == "postgresql"


def database_url(port: int | None = None) -> str:
    """The test database as a DATABASE_URL, optionally through a proxy on `port`."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return (
        f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{port or db['PORT'] or 5432}/{db['NAME']}"
    )


def gateway_env(**extra) -> dict[str, str]:
    env = {
        "AETHERGATE_ENV_FILE": "",
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,  # the same key decrypts the endpoint credential
        "DATABASE_URL": database_url(),
        "REDIS_URL": "",
        "MASTER_API_KEY": MASTER_KEY,
        "AETHERGATE_METRICS_TOKEN": METRICS_TOKEN,
        "AETHERGATE_LOG_FLUSH_SECONDS": "0.05",
    }
    env.update({name: str(value) for name, value in extra.items()})
    return env


def chat(base_url: str, secret: str, model: str = "gpt-test") -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": model, "messages": HELLO},
        timeout=10,
    )


@pytest.fixture
def started():
    """`started(process)` starts a ServerProcess and stops it after the test."""
    processes = []

    def start(process: ServerProcess) -> ServerProcess:
        processes.append(process)
        return process.start()

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def prefix():
    return f"t{os.getpid()}{time.monotonic_ns()}"


def two_gateways(started, **env):
    ports = free_port(), free_port()
    with ThreadPoolExecutor(2) as pool:
        return list(
            pool.map(lambda port: started(ServerProcess.uvicorn(port, gateway_env(**env))), ports)
        )


# --------------------------------------------------------------------------- shared limits


def test_a_key_limit_holds_across_two_processes(
    transactional_db, redis_server, prefix, started, make_model, make_key
):
    make_model()
    _, secret = make_key(rate_limit="60/m")
    first, second = two_gateways(
        started, REDIS_URL=redis_server.url, AETHERGATE_REDIS_PREFIX=prefix
    )
    urls = [first.url, second.url] * 50
    with ThreadPoolExecutor(16) as pool:
        statuses = [r.status_code for r in pool.map(lambda url: chat(url, secret), urls)]
    assert statuses.count(200) == 60
    assert statuses.count(429) == 40
    # Both processes admitted some: the limit was shared, not met by one alone.
    by_process = {url: [s for u, s in zip(urls, statuses, strict=True) if u == url] for url in urls}
    assert all(200 in s and 429 in s for s in by_process.values())


def test_a_change_made_through_one_process_reaches_the_other_within_2_s(
    transactional_db, redis_server, prefix, started, make_model, make_key, settings
):
    # Database polling is slowed to a minute: only the Redis announcement can be in time.
    # This test process announces its own changes too, as a management command does.
    settings.REDIS_URL, settings.AETHERGATE_REDIS_PREFIX = redis_server.url, prefix
    make_model()
    second_model = make_model(name="second-model")
    key, secret = make_key()
    first, second = two_gateways(
        started,
        REDIS_URL=redis_server.url,
        AETHERGATE_REDIS_PREFIX=prefix,
        AETHERGATE_CATALOG_POLL_SECONDS=60,
    )
    assert chat(second.url, secret).status_code == 200
    admin = {"X-Admin-Key": MASTER_KEY}

    response = httpx.patch(
        f"{first.url}/api/v1/keys/{key.pk}/", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: chat(second.url, secret).status_code == 403, timeout=2)

    _, other_secret = make_key(name="other")
    assert chat(second.url, other_secret, "second-model").status_code == 200
    response = httpx.patch(
        f"{first.url}/api/v1/models/{second_model.pk}/", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: chat(second.url, other_secret, "second-model").status_code == 404, 2)


def test_without_redis_a_rotation_still_reaches_every_process_within_2_s(
    transactional_db, started, make_model, make_key
):
    make_model()
    key, secret = make_key()
    first, second = two_gateways(started)
    assert chat(second.url, secret).status_code == 200
    response = httpx.post(
        f"{first.url}/api/v1/keys/{key.pk}/rotate/", headers={"X-Admin-Key": MASTER_KEY}
    )
    assert response.status_code == 200, response.text
    new_secret = response.json()["secret"]
    wait_for(lambda: chat(second.url, secret).status_code == 401, timeout=2)
    assert chat(second.url, new_secret).status_code == 200


def test_a_balance_spent_through_one_process_is_enforced_by_the_other(
    transactional_db, started, make_model, make_key, make_user
):
    make_model(price_in="1", price_out="1")  # a chat answer costs about 10
    _, secret = make_key(owner=make_user(balance="5"))
    first, second = two_gateways(started)
    assert chat(first.url, secret).status_code == 200
    # The charge is stored by the first process; the second re-reads balances at each poll.
    wait_for(lambda: chat(second.url, secret).status_code == 402, timeout=3, interval=0.2)
    assert chat(first.url, secret).status_code == 402


# --------------------------------------------------------------------------- writes without signals


def one_gateway(started, **env) -> ServerProcess:
    return started(ServerProcess.uvicorn(free_port(), gateway_env(**env)))


def refused_as_inactive(url: str, secret: str) -> bool:
    response = chat(url, secret)
    return response.status_code == 403 and response.json()["error"]["code"] == "key_inactive"


def test_a_queryset_update_stops_a_key_on_another_process_at_once_with_redis(
    transactional_db, redis_server, prefix, started, make_model, make_key, settings
):
    # Polling slowed to a minute: only the announcement over Redis can be in time. This
    # test process writes as a script or a command would, and announces on commit.
    settings.REDIS_URL, settings.AETHERGATE_REDIS_PREFIX = redis_server.url, prefix
    make_model()
    key, secret = make_key()
    gateway = one_gateway(
        started,
        REDIS_URL=redis_server.url,
        AETHERGATE_REDIS_PREFIX=prefix,
        AETHERGATE_CATALOG_POLL_SECONDS=60,
    )
    assert chat(gateway.url, secret).status_code == 200

    APIKey.objects.filter(pk=key.pk).update(is_active=False)

    wait_for(lambda: refused_as_inactive(gateway.url, secret), timeout=1, what="the key refused")


def test_without_redis_a_queryset_update_stops_a_key_on_another_process_within_a_poll(
    transactional_db, started, make_model, make_key
):
    # The update stamps updated_at, which moves the marker every process polls.
    make_model()
    key, secret = make_key()
    gateway = one_gateway(started, AETHERGATE_CATALOG_POLL_SECONDS=1)
    assert chat(gateway.url, secret).status_code == 200

    APIKey.objects.filter(pk=key.pk).update(is_active=False)

    # One poll interval, and the reload it triggers.
    wait_for(lambda: refused_as_inactive(gateway.url, secret), timeout=2, what="the key refused")


# --------------------------------------------------------------------------- Redis outage


def test_it_limits_locally_while_redis_is_down_and_shares_limits_again_after(
    transactional_db, redis_server, prefix, started, make_model, make_key
):
    make_model()
    key, secret = make_key(rate_limit="5/m")
    env = gateway_env(
        REDIS_URL=redis_server.url,
        AETHERGATE_REDIS_PREFIX=prefix,
        AETHERGATE_REDIS_RETRY_SECONDS=0.2,
    )
    gateway = started(ServerProcess.uvicorn(free_port(), env))
    ready = f"{gateway.url}/health/ready"
    assert [chat(gateway.url, secret).status_code for _ in range(3)] == [200] * 3
    window = f"{prefix}:rl:k{key.pk}:60"
    client = redis.Redis.from_url(redis_server.url)
    assert sum(map(int, client.hvals(window))) == 3
    client.close()

    redis_server.stop()
    try:
        # Never unlimited: this process now counts on its own, from zero, to the same limit.
        statuses = [chat(gateway.url, secret).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        assert httpx.get(ready).json()["rate_limits"] == "local (Redis unreachable)"
    finally:
        redis_server.restart()  # empty: the shared window starts again
    # Refused by this process's own count until its limiter tries Redis again (0.2 s after
    # the last failure), whose window is empty.
    wait_for(lambda: chat(gateway.url, secret).status_code == 200, timeout=5, interval=0.05)
    assert [chat(gateway.url, secret).status_code for _ in range(5)] == [200] * 4 + [429]
    client = redis.Redis.from_url(redis_server.url)
    assert sum(map(int, client.hvals(window))) == 5
    assert client.pttl(window) > 0
    client.close()
    assert httpx.get(ready).json()["rate_limits"] == "redis"

    metrics = httpx.get(
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ).text
    assert "aethergate_ratelimit_backend_fallbacks_total 1.0" in metrics
    assert "Redis is unreachable" in gateway.log_text()


# --------------------------------------------------------------------------- production server


def test_gunicorn_warns_that_limits_are_per_process_without_redis(
    transactional_db, redis_server, started
):
    alone = started(
        ServerProcess.gunicorn(free_port(), gateway_env(WEB_CONCURRENCY=2, REDIS_URL=""))
    )
    shared = started(
        ServerProcess.gunicorn(
            free_port(), gateway_env(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)
        )
    )
    assert "rate limits are kept per worker process" in alone.log_text()
    assert "rate limits are kept per worker process" not in shared.log_text()
    assert alone.log_text().count("Booting worker") == 2


def test_sigterm_lets_every_stream_finish_logs_them_all_and_exits_0(
    transactional_db, started, make_model, make_key
):
    make_model(upstream_name="echo+gap=0.2")  # 20 chunks: about 4 s a stream
    _, secret = make_key()
    server = started(
        ServerProcess.gunicorn(
            free_port(),
            gateway_env(WEB_CONCURRENCY=1, AETHERGATE_DRAIN_SECONDS=1),
        )
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    first_chunks = threading.Barrier(11)
    texts = []

    def stream():
        pieces = []
        events = client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
        for index, chunk in enumerate(events):
            if index == 0:
                first_chunks.wait(timeout=10)
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces)

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(stream) for _ in range(10)]
        first_chunks.wait(timeout=10)
        server.signal(signal.SIGTERM)
        # Draining: not ready any more, while the streams go on.
        wait_for(lambda: httpx.get(f"{server.url}/health/ready").status_code == 503, 1)
        texts = [future.result(timeout=30) for future in futures]
    assert server.wait(timeout=30) == 0
    expected = stream_text(chat_answer(HELLO)[0])
    assert texts == [expected] * 10
    rows = wait_for_logs(10, timeout=5)
    assert len(rows) == 10
    assert {(row.outcome, row.status, row.stream) for row in rows} == {("ok", 200, True)}
    assert all(row.output_units == 20 for row in rows)
    client.close()


def test_a_stream_still_running_after_the_grace_period_is_cut_and_logged_as_such(
    transactional_db, started, make_model, make_key
):
    make_model(upstream_name="echo+gap=0.5")  # about 10 s
    _, secret = make_key()
    server = started(
        ServerProcess.gunicorn(
            free_port(), gateway_env(WEB_CONCURRENCY=1, AETHERGATE_GRACEFUL_TIMEOUT=1)
        )
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    events = client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
    next(iter(events))
    started_at = time.monotonic()
    server.signal(signal.SIGTERM)
    with pytest.raises(Exception):  # noqa: B017 -- how the cut surfaces is the SDK's business
        for _ in events:
            pass
    assert server.wait(timeout=30) == 0
    assert time.monotonic() - started_at < 8  # well before the stream would have ended
    (row,) = wait_for_logs(1, timeout=5)
    assert (row.status, row.outcome, row.stream) == (503, "gateway_error", True)
    assert "shut down" in row.error
    client.close()


# --------------------------------------------------------------------------- database outage


@pytest.mark.skipif(not POSTGRES, reason="a database outage is a network cut to PostgreSQL")
def test_during_a_database_outage_known_keys_work_unknown_get_503_and_logs_catch_up(
    transactional_db, started, make_model, make_key
):
    make_model()
    _, secret = make_key()
    host, port = connection.settings_dict["HOST"] or "127.0.0.1", connection.settings_dict["PORT"]
    with FaultProxy(host, int(port or 5432)) as cable:
        gateway = started(
            ServerProcess.uvicorn(
                free_port(),
                gateway_env(
                    DATABASE_URL=database_url(cable.port),
                    AETHERGATE_CATALOG_POLL_SECONDS=0.5,
                    AETHERGATE_DB_CONNECT_TIMEOUT=2,
                ),
            )
        )
        assert chat(gateway.url, secret).status_code == 200
        wait_for_logs(1, timeout=5)

        cable.cut()
        unknown = "ag-" + "x" * 43
        wait_for(lambda: chat(gateway.url, unknown).status_code == 503, timeout=5)
        response = chat(gateway.url, unknown)
        assert response.json()["error"]["code"] == "service_unavailable"
        assert [chat(gateway.url, secret).status_code for _ in range(5)] == [200] * 5
        ready = httpx.get(f"{gateway.url}/health/ready", timeout=10)
        assert (ready.status_code, ready.json()["database"]) == (503, "unreachable")
        assert httpx.get(f"{gateway.url}/health/live").status_code == 200
        wait_for(lambda: "request logs failed" in gateway.log_text(), timeout=10)
        assert RequestLog.objects.count() == 1

        cable.restore()
        rows = wait_for_logs(6, timeout=30)
        assert len(rows) == 6
        assert all(row.status == 200 for row in rows)
        assert chat(gateway.url, unknown).status_code == 401
        assert httpx.get(f"{gateway.url}/health/ready").status_code == 200

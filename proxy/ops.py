"""Operations endpoints, served without Django's request cycle (no host check, no middleware).

- `GET /health/live`: the process is up and serving (touches nothing else).
- `GET /health/ready`: the database answers, migrations are applied, the
  log writer is making progress (`LogWriter.health`) and the process is not
  draining; 503 otherwise, the body saying which. Load balancers route by this one.
- `GET /metrics`: Prometheus text format; 404 unless AETHERGATE_METRICS_TOKEN
  is set, and then only with `Authorization: Bearer <token>`.
"""

import asyncio
import hmac
import json

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from aethergate.lib import metrics
from aethergate.lib.db import run_db

PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
# A readiness probe must answer before the prober gives up (commonly 1 to 5 s).
DATABASE_CHECK_SECONDS = 2.0

_migrated = False


def _check_database() -> str:
    """'ok', or 'migrations pending' (sync; raises if the database is unreachable)."""
    global _migrated
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if not _migrated:
        # Computed until true once: the code of a running process cannot lose migrations.
        executor = MigrationExecutor(connection)
        _migrated = not executor.migration_plan(executor.loader.graph.leaf_nodes())
    return "ok" if _migrated else "migrations pending"


async def readiness(runtime) -> tuple[int, dict]:
    """(status, body) of the readiness probe for a process serving `/v1` from `runtime`."""
    try:
        async with asyncio.timeout(DATABASE_CHECK_SECONDS):
            database = await run_db(_check_database)
    except Exception:
        database = "unreachable"
    # Not started yet (no lifespan startup, no /v1 request): it holds nothing to be stuck on.
    if runtime is None:
        draining, writer, rate_limits = False, "not started", "not started"
    else:
        draining, writer, rate_limits = (
            runtime.draining,
            runtime.writer.health(),
            runtime.limiter.state,
        )
    checks = {
        "database": database,
        "draining": draining,
        "rate_limits": rate_limits,
        "log_writer": writer,
    }
    ready = database == "ok" and not draining and writer in ("ok", "not started")
    return (200 if ready else 503), {"status": "ready" if ready else "unavailable", **checks}


async def app(scope, receive, send, runtime) -> None:
    """Answer an operations request; `runtime` is the `/v1` one (None before it started)."""
    path, method = scope["path"], scope["method"]
    if method not in ("GET", "HEAD"):
        await _send(send, 405, b'{"detail": "Method not allowed."}', b"application/json")
    elif path == "/health/live":
        await _send(send, 200, b'{"status": "live"}', b"application/json")
    elif path == "/health/ready":
        status, body = await readiness(runtime)
        await _send(send, status, json.dumps(body).encode(), b"application/json")
    elif _metrics_allowed(scope):
        body, content_type = metrics.exposition()
        await _send(send, 200, body, content_type.encode())
    else:
        # Off, or a wrong token: the same 404 either way, nothing to probe.
        await _send(send, 404, b'{"detail": "Not found."}', b"application/json")


def _metrics_allowed(scope) -> bool:
    token = settings.AETHERGATE_METRICS_TOKEN
    if not token:
        return False
    sent = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(sent, b"Bearer " + token.encode())


async def _send(send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

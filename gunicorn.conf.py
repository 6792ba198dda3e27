"""gunicorn settings for production: uvicorn workers serving aethergate.asgi:application.

Every value comes from the environment (or `.env`, read as the app reads it);
README "Running in production" lists them.
"""

import os
import tempfile
from pathlib import Path

import environ
from uvicorn_worker import UvicornWorker

env = environ.Env()
_env_file = os.environ.get("AETHERGATE_ENV_FILE", str(Path(__file__).parent / ".env"))
if _env_file and Path(_env_file).exists():
    environ.Env.read_env(_env_file)

bind = env.str("AETHERGATE_BIND", default="0.0.0.0:8000")
workers = env.int("WEB_CONCURRENCY", default=2)
# On SIGTERM: /health/ready turns 503 for DRAIN seconds while requests are
# still served, then in-flight requests (long streams included) get GRACE
# seconds to finish before they are cut; then request logs are flushed.
DRAIN = env.float("AETHERGATE_DRAIN_SECONDS", default=0.0)
GRACE = env.float("AETHERGATE_GRACEFUL_TIMEOUT", default=30.0)


class Worker(UvicornWorker):
    """A uvicorn worker that cuts requests still running after GRACE, so logs get flushed.

    It serves with AetherGate's HTTP protocol (header-size limit, body-read
    timeout: aethergate/server.py). uvicorn's own access log is off:
    AETHERGATE_ACCESS_LOG gives a better one.
    """

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "http": "aethergate.server:HttpProtocol"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = GRACE
        self.config.access_log = False


worker_class = Worker
# The master kills a worker that is still running after this; leave time to flush logs.
graceful_timeout = int(DRAIN + GRACE + 15)
# Longer than a load balancer's idle timeout, so it never reuses a closed socket.
keepalive = 75
accesslog = None
errorlog = "-"
# Trust X-Forwarded-* only from these proxies (comma-separated, "*" for any).
forwarded_allow_ips = env.str("AETHERGATE_FORWARDED_ALLOW_IPS", default="127.0.0.1")

# With metrics on, workers share their values through files so that /metrics,
# whichever worker answers it, reports the whole server.
if env.str("AETHERGATE_METRICS_TOKEN", default="") and workers > 1:
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="aethergate-metrics-")
    )


def on_starting(server):
    if workers > 1 and not env.str("REDIS_URL", default=""):
        server.log.warning(
            "%d workers and no REDIS_URL: rate limits are kept per worker process (a key "
            "can get %d times its limit) and changes reach other workers by polling. "
            "Set REDIS_URL to share them.",
            workers,
            workers,
        )
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        # Values left by an earlier run would be added to this one's.
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(metrics_dir).glob("*.db"):
            stale.unlink()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

"""gunicorn settings for production: uvicorn workers serving aethergate.asgi:application."""

import os

bind = os.environ.get("AETHERGATE_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
# Seconds in-flight requests (long streams included) get to finish on SIGTERM.
graceful_timeout = int(os.environ.get("AETHERGATE_GRACEFUL_TIMEOUT", "30"))
# Longer than a load balancer's idle timeout, so it never reuses a closed socket.
keepalive = 75
accesslog = None
errorlog = "-"
# Trust X-Forwarded-* only from these proxies (comma-separated, "*" for any).
forwarded_allow_ips = os.environ.get("AETHERGATE_FORWARDED_ALLOW_IPS", "127.0.0.1")

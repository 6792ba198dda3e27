"""ASGI entry point: `aethergate.asgi:application` serves admin, `/api/v1/` and `/v1/`.

`/v1/*` goes to the proxy's own ASGI app, which does not pay for Django's
request cycle and middleware; so do the health and metrics endpoints (a
load balancer probing by IP must not meet ALLOWED_HOSTS). Everything else
goes to Django. Lifespan events start and stop the proxy's runtime (log
writer, limiter, upstream pool).
"""

import os
import warnings

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aethergate.settings")

# WhiteNoise serves admin static files as sync file iterators; Django streams
# them correctly under ASGI but warns on every file, which buries real logs.
warnings.filterwarnings(
    "ignore",
    message="StreamingHttpResponse must consume synchronous iterators",
    module="django.core.handlers.asgi",
)

django_application = get_asgi_application()

from proxy import ops  # noqa: E402 -- needs the apps loaded by the line above
from proxy.app import App  # noqa: E402
from proxy.runtime import SCOPE_KEY  # noqa: E402


def make_application():
    """A new ASGI application: its own `/v1` app (`.proxy`), the operations endpoints, Django
    (each of whose requests carries the `/v1` app's runtime, see Runtime.of_request)."""
    proxy = App()

    async def application(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path == "/v1" or path.startswith("/v1/"):
            await proxy(scope, receive, send)
        elif path == "/" and scope.get("method") == "HEAD":
            # Claude Code checks that its ANTHROPIC_BASE_URL answers with HEAD /:
            # a plain 200, not the browser's redirect to the admin.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif path in ops.PATHS and scope["type"] == "http":
            await ops.app(scope, receive, send, proxy.runtime)
        else:
            # With this application's runtime, for the admin's live deployment state
            # (Runtime.of_request): each process shows what its own router learned.
            await django_application({**scope, SCOPE_KEY: proxy.runtime}, receive, send)

    application.proxy = proxy
    return application


application = make_application()

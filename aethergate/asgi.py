"""ASGI entry point: `aethergate.asgi:application` serves admin, `/api/v1/` and `/v1/`."""

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

application = get_asgi_application()

"""Django settings, read from the environment (and an optional `.env` file).

Every variable is listed, with its default, in `.env.example`.
"""

import os
import sys
import zoneinfo
from pathlib import Path

import environ

from aethergate.lib import addresses

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Variables already in the environment win over the file. An empty
# AETHERGATE_ENV_FILE reads no file (the test suite runs that way).
ENV_FILE = env.str("AETHERGATE_ENV_FILE", default=str(BASE_DIR / ".env"))
if ENV_FILE:
    environ.Env.read_env(ENV_FILE)

DEBUG = env.bool("DEBUG", default=False)

# A placeholder must never sign sessions in production: refuse to start instead.
PLACEHOLDER_SECRET_KEYS = {"", "change-me", "changeme", "secret", "django-insecure"}
SECRET_KEY = env.str("SECRET_KEY", default="")
if not DEBUG and (SECRET_KEY in PLACEHOLDER_SECRET_KEYS or len(SECRET_KEY) < 32):
    sys.exit(
        "AetherGate: set SECRET_KEY to a random string of at least 32 characters "
        "(or DEBUG=true for local development); `make run` writes one into .env."
    )
if not SECRET_KEY:
    # Only reachable with DEBUG on (refused above otherwise); constant so that
    # encrypted credentials stay readable across restarts of a dev server.
    SECRET_KEY = "django-insecure-debug-only-key-never-used-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # First, so that its templates override the admin's (admin/base_site.html: the icon).
    "aethergate",
    "aethergate.apps.AdminConfig",  # django.contrib.admin with AetherGate's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "endpoints",
    "models_registry",
    "keys",
    "logs",
    "proxy",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who changes what, from where, for the audit log (the API refines it after DRF's auth).
    "aethergate.lib.audit.audit_middleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "aethergate.urls"
ASGI_APPLICATION = "aethergate.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db(
        "DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'data' / 'aethergate.sqlite3'}"
    ),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("AETHERGATE_DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the admin read while the log writer writes; a busy timeout
    # turns brief lock contention into a wait instead of "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # An unreachable server fails a connection attempt in seconds, not minutes,
    # so the gateway notices an outage and keeps serving from its cache.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("AETHERGATE_DB_CONNECT_TIMEOUT", default=5)
    )

# Optional: shared rate limits and cache invalidation across processes and hosts.
REDIS_URL = env.str("REDIS_URL", default="")
# Prefix of every Redis key AetherGate writes, so that one Redis can serve several installations.
AETHERGATE_REDIS_PREFIX = env.str("AETHERGATE_REDIS_PREFIX", default="aethergate")
# Seconds between attempts to reach Redis again while limits are per process.
AETHERGATE_REDIS_RETRY_SECONDS = env.float("AETHERGATE_REDIS_RETRY_SECONDS", default=1.0)

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("AETHERGATE_TIME_ZONE", default="UTC")
# How money is shown to people (balances, prices, costs); stored amounts keep 10 decimals.
# Read as written: django-environ takes a value starting with "$" for the name of
# another variable, and "$" alone sends it into endless recursion.
AETHERGATE_CURRENCY_SYMBOL = os.environ.get("AETHERGATE_CURRENCY_SYMBOL", "$")
AETHERGATE_CURRENCY_DECIMALS = env.int("AETHERGATE_CURRENCY_DECIMALS", default=2)
if not 0 <= AETHERGATE_CURRENCY_DECIMALS <= 10:
    sys.exit("AetherGate: AETHERGATE_CURRENCY_DECIMALS must be 0 to 10.")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Chart.js for the usage dashboard, installed from package-lock.json by `npm ci` (make run,
# make test, the Dockerfile) and served as a static file: the admin works offline.
STATICFILES_DIRS = [("chartjs", BASE_DIR / "node_modules" / "chart.js" / "dist")]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Behind a TLS-terminating proxy, AETHERGATE_HTTPS turns on every transport
# protection `check --deploy` asks for. It is off for `make run` on plain http.
AETHERGATE_HTTPS = env.bool("AETHERGATE_HTTPS", default=False)
if AETHERGATE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("AETHERGATE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # "preload" only permits submitting the domain to browsers' preload list.
    SECURE_HSTS_PRELOAD = env.bool("AETHERGATE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Failed logins (admin form and API tokens), counted in the database so that the
# limit holds across processes and with Redis down: LIMIT failures for
# one account, or ADDRESS_LIMIT from one client address, within WINDOW seconds
# lock that account or address out for LOCKOUT seconds (see accounts/throttling.py).
AETHERGATE_LOGIN_FAILURE_LIMIT = env.int("AETHERGATE_LOGIN_FAILURE_LIMIT", default=5)
AETHERGATE_LOGIN_ADDRESS_FAILURE_LIMIT = env.int(
    "AETHERGATE_LOGIN_ADDRESS_FAILURE_LIMIT", default=20
)
AETHERGATE_LOGIN_FAILURE_WINDOW = env.int("AETHERGATE_LOGIN_FAILURE_WINDOW", default=900)
AETHERGATE_LOGIN_LOCKOUT_SECONDS = env.int("AETHERGATE_LOGIN_LOCKOUT_SECONDS", default=900)

# Optional master key for the management API (compared in constant time).
MASTER_API_KEY = env.str("MASTER_API_KEY", default="")

# Dedicated keys for upstream credentials at rest (comma-separated; the first
# encrypts, all decrypt). Empty: a key derived from SECRET_KEY.
AETHERGATE_ENCRYPTION_KEYS = env.list("AETHERGATE_ENCRYPTION_KEY", default=[])

# Log lines as plain text or as one JSON object each (AETHERGATE_LOG_FORMAT=json).
# AETHERGATE_ACCESS_LOG adds one line per /v1 request (logger aethergate.requests).
AETHERGATE_LOG_FORMAT = env.str("AETHERGATE_LOG_FORMAT", default="plain")
AETHERGATE_ACCESS_LOG = env.bool("AETHERGATE_ACCESS_LOG", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "aethergate.lib.jsonlog.JSONFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if AETHERGATE_LOG_FORMAT == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env.str("AETHERGATE_LOG_LEVEL", default="INFO")},
    "loggers": {"django": {"level": "WARNING"}},
}

# First admin account, created by `manage.py ensure_admin` when none exists.
AETHERGATE_ADMIN_USERNAME = env.str("AETHERGATE_ADMIN_USERNAME", default="admin")
AETHERGATE_ADMIN_EMAIL = env.str("AETHERGATE_ADMIN_EMAIL", default="")
AETHERGATE_ADMIN_PASSWORD = env.str("AETHERGATE_ADMIN_PASSWORD", default="")

# The /v1 proxy ---------------------------------------------------------------
# Upstream address policy (aethergate/lib/addresses.py): comma-separated CIDR
# blocks. Deny wins; a non-empty allow list admits only its addresses; the
# built-in refusals (metadata, link-local, unspecified, …) apply whatever these say.
AETHERGATE_UPSTREAM_ALLOW_CIDRS = env.list("AETHERGATE_UPSTREAM_ALLOW_CIDRS", default=[])
AETHERGATE_UPSTREAM_DENY_CIDRS = env.list("AETHERGATE_UPSTREAM_DENY_CIDRS", default=[])
try:
    addresses.networks(AETHERGATE_UPSTREAM_ALLOW_CIDRS, addresses.ALLOW_SETTING)
    addresses.networks(AETHERGATE_UPSTREAM_DENY_CIDRS, addresses.DENY_SETTING)
except ValueError as error:
    sys.exit(f"AetherGate: {error}")
# Largest request body accepted (bytes); larger ones get 413.
AETHERGATE_MAX_BODY_BYTES = env.int("AETHERGATE_MAX_BODY_BYTES", default=20 * 1024 * 1024)
# Largest upload (audio for transcription) accepted, in bytes; larger ones get 413.
# OpenAI's own limit is 25 MB. Uploads past 1 MiB are spooled to a temporary file.
AETHERGATE_MAX_UPLOAD_BYTES = env.int("AETHERGATE_MAX_UPLOAD_BYTES", default=25 * 1024 * 1024)
# Per process: /v1 requests in progress beyond this get a fast 503 (0: no cap).
AETHERGATE_MAX_CONCURRENT_REQUESTS = env.int("AETHERGATE_MAX_CONCURRENT_REQUESTS", default=1024)
# An address sending more invalid keys than this in a minute gets 429 for the rest of it.
AETHERGATE_INVALID_KEY_LIMIT = env.int("AETHERGATE_INVALID_KEY_LIMIT", default=30)
# Per process and upstream host: open connections; more requests wait for one (0: no cap).
AETHERGATE_UPSTREAM_MAX_CONNECTIONS = env.int("AETHERGATE_UPSTREAM_MAX_CONNECTIONS", default=256)
# Largest upstream answer read (after decompression), and longest line of a stream.
AETHERGATE_MAX_RESPONSE_BYTES = env.int("AETHERGATE_MAX_RESPONSE_BYTES", default=64 * 1024 * 1024)
AETHERGATE_MAX_SSE_LINE_BYTES = env.int("AETHERGATE_MAX_SSE_LINE_BYTES", default=4 * 1024 * 1024)
# The HTTP server (aethergate/server.py, every route): the most bytes of request
# line and headers it reads (431 beyond), and how long a request body may stall.
AETHERGATE_MAX_HEADER_BYTES = env.int("AETHERGATE_MAX_HEADER_BYTES", default=64 * 1024)
AETHERGATE_BODY_READ_TIMEOUT_SECONDS = env.float(
    "AETHERGATE_BODY_READ_TIMEOUT_SECONDS", default=30.0
)
# How often each process checks the database for catalog changes made elsewhere.
AETHERGATE_CATALOG_POLL_SECONDS = env.float("AETHERGATE_CATALOG_POLL_SECONDS", default=1.0)
# Routing over a model's deployments (proxy/routing.py, proxy/health.py), per process.
# A deployment's circuit opens when, over WINDOW seconds, at least MIN_REQUESTS
# attempts were made and FAILURE_RATIO of them failed, or after CONSECUTIVE failures
# in a row; it stays open COOLDOWN seconds, doubled after each failed probe up to
# MAX_COOLDOWN, then lets one request through (half-open).
AETHERGATE_BREAKER_WINDOW_SECONDS = env.float("AETHERGATE_BREAKER_WINDOW_SECONDS", default=30.0)
AETHERGATE_BREAKER_MIN_REQUESTS = env.int("AETHERGATE_BREAKER_MIN_REQUESTS", default=10)
AETHERGATE_BREAKER_FAILURE_RATIO = env.float("AETHERGATE_BREAKER_FAILURE_RATIO", default=0.5)
AETHERGATE_BREAKER_CONSECUTIVE_FAILURES = env.int(
    "AETHERGATE_BREAKER_CONSECUTIVE_FAILURES", default=5
)
AETHERGATE_BREAKER_COOLDOWN_SECONDS = env.float("AETHERGATE_BREAKER_COOLDOWN_SECONDS", default=5.0)
AETHERGATE_BREAKER_MAX_COOLDOWN_SECONDS = env.float(
    "AETHERGATE_BREAKER_MAX_COOLDOWN_SECONDS", default=300.0
)
# Retries (only before the first byte reached the client, always on another
# deployment): at most MAX_RETRIES per request, and per model at most RATIO of the
# requests of the last 10 s (but MIN in any case), each after a random wait of up
# to BACKOFF seconds, doubled per retry up to BACKOFF_MAX.
AETHERGATE_MAX_RETRIES = env.int("AETHERGATE_MAX_RETRIES", default=2)
AETHERGATE_RETRY_BUDGET_RATIO = env.float("AETHERGATE_RETRY_BUDGET_RATIO", default=0.2)
AETHERGATE_RETRY_BUDGET_MIN = env.int("AETHERGATE_RETRY_BUDGET_MIN", default=10)
AETHERGATE_RETRY_BACKOFF_SECONDS = env.float("AETHERGATE_RETRY_BACKOFF_SECONDS", default=0.05)
AETHERGATE_RETRY_BACKOFF_MAX_SECONDS = env.float(
    "AETHERGATE_RETRY_BACKOFF_MAX_SECONDS", default=1.0
)
# Session affinity: sessions remembered (least recently used dropped first), and
# seconds an idle one is kept.
AETHERGATE_AFFINITY_MAX_SESSIONS = env.int("AETHERGATE_AFFINITY_MAX_SESSIONS", default=10_000)
AETHERGATE_AFFINITY_SECONDS = env.float("AETHERGATE_AFFINITY_SECONDS", default=3600.0)
# Token limits and budgets reserve a request's input (estimated) plus its output cap
# (max_tokens, else the model's "output tokens reserved", else this) until its real
# usage settles them.
AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS = env.int("AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS", default=4096)
# Concurrency leases expire this long after their process last renewed them (it
# renews its own every third of it), so a crashed process cannot hold a key's slots.
AETHERGATE_LEASE_SECONDS = env.float("AETHERGATE_LEASE_SECONDS", default=60.0)
# Budget periods (day, week from Monday, month) start at midnight in this zone.
AETHERGATE_BUDGET_TIME_ZONE = env.str("AETHERGATE_BUDGET_TIME_ZONE", default=TIME_ZONE)
try:
    zoneinfo.ZoneInfo(AETHERGATE_BUDGET_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    sys.exit(f"AetherGate: AETHERGATE_BUDGET_TIME_ZONE {AETHERGATE_BUDGET_TIME_ZONE!r} is unknown.")
# A soft budget limit crossed is logged and, with a URL, POSTed there once per
# period, signed with HMAC-SHA256 of the body under the secret (X-AetherGate-Signature).
AETHERGATE_BUDGET_WEBHOOK_URL = env.str("AETHERGATE_BUDGET_WEBHOOK_URL", default="")
AETHERGATE_BUDGET_WEBHOOK_SECRET = env.str("AETHERGATE_BUDGET_WEBHOOK_SECRET", default="")
# A model whose prices are all zero and not marked free: "serve" it, logging its
# requests as cost unknown, or "refuse" it to keys with a budget or a balance.
AETHERGATE_UNPRICED_MODELS = env.str("AETHERGATE_UNPRICED_MODELS", default="serve")
if AETHERGATE_UNPRICED_MODELS not in ("serve", "refuse"):
    sys.exit("AetherGate: AETHERGATE_UNPRICED_MODELS must be serve or refuse.")
# A ": keep-alive" comment is sent when an upstream stream is silent this long.
AETHERGATE_SSE_KEEPALIVE_SECONDS = env.float("AETHERGATE_SSE_KEEPALIVE_SECONDS", default=15.0)
# The log writer: records per batch, seconds between flushes, and the buffer of
# records not yet stored, bounded in count and in (estimated) memory: a record
# takes about 1.5 KB, plus its prompt and completion when its key logs content.
# Past either bound the oldest are dropped (counted). A worker idles at about
# 80 MB (SQLite) to 90 MB (PostgreSQL); 8 MB of records keeps its peak under
# 100 MB through a database outage (README "Benchmark": `--stall`).
AETHERGATE_LOG_BATCH_SIZE = env.int("AETHERGATE_LOG_BATCH_SIZE", default=500)
AETHERGATE_LOG_FLUSH_SECONDS = env.float("AETHERGATE_LOG_FLUSH_SECONDS", default=0.2)
AETHERGATE_LOG_BUFFER_MAX = env.int("AETHERGATE_LOG_BUFFER_MAX", default=10_000)
AETHERGATE_LOG_BUFFER_MAX_BYTES = env.int(
    "AETHERGATE_LOG_BUFFER_MAX_BYTES", default=8 * 1024 * 1024
)
# /health/ready answers 503 once records have waited this long with no batch
# stored (nor a refused record set aside): a writer that cannot make progress.
AETHERGATE_LOG_STALL_SECONDS = env.float("AETHERGATE_LOG_STALL_SECONDS", default=60.0)
# Days a stored Responses API response (`store`, default true) is kept before
# `manage.py prune_responses` deletes it; 30, as OpenAI keeps them. 0: kept forever.
AETHERGATE_RESPONSES_RETENTION_DAYS = env.int("AETHERGATE_RESPONSES_RETENTION_DAYS", default=30)
if AETHERGATE_RESPONSES_RETENTION_DAYS < 0:
    sys.exit("AetherGate: AETHERGATE_RESPONSES_RETENTION_DAYS must be 0 (forever) or more.")

# Operations --------------------------------------------------------------------
# /metrics (Prometheus) is off unless a token is set; scrapers send it as a bearer token.
AETHERGATE_METRICS_TOKEN = env.str("AETHERGATE_METRICS_TOKEN", default="")
# On SIGTERM: seconds /health/ready answers 503 while requests are still served
# (so a load balancer stops sending new ones), before the server stops accepting.
AETHERGATE_DRAIN_SECONDS = env.float("AETHERGATE_DRAIN_SECONDS", default=0.0)
# Largest backup `import_backup` reads (bytes); a bigger file is refused before reading.
AETHERGATE_BACKUP_MAX_BYTES = env.int("AETHERGATE_BACKUP_MAX_BYTES", default=256 * 1024 * 1024)

# The management API (/api/v1/) -----------------------------------------------
# Staff only: an API token (first, so anonymous requests get a 401 challenge),
# the MASTER_API_KEY as X-Admin-Key, or an admin session (with CSRF checks).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.TokenAuthentication",
        "accounts.api.authentication.MasterKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Active staff, then Django's model permissions, as in the admin.
    "DEFAULT_PERMISSION_CLASSES": [
        "accounts.api.authentication.IsActiveStaff",
        "aethergate.lib.permissions.ModelPermissions",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "aethergate.lib.ordering.StableOrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "aethergate.lib.api.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AetherGate management API",
    "DESCRIPTION": "Users, consumer keys, endpoints, models, request logs and usage, for staff.",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs page are staff-only, like the API they describe.
    "SERVE_PERMISSIONS": ["accounts.api.authentication.IsActiveStaff"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Models and keys share one capability list: one enum in the schema.
    "ENUM_NAME_OVERRIDES": {"CapabilityEnum": "aethergate.lib.capabilities.Capability"},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

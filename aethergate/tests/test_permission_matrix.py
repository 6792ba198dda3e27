"""Every URL pattern of the root URLconf, against every kind of caller: deny by default.

MATRIX has one entry per URL pattern (admin and management API); a pattern
without an entry fails `test_every_url_pattern_has_an_entry`, so a new route
is unreachable in review until someone has said who may call it. Each entry
lists the requests to make and the status each persona gets. A refused
unsafe request must leave the database as it was. `/v1/*`, `/health` and
`/metrics` are the proxy's ASGI app, outside this URLconf.
"""

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Lockout, User
from aethergate.testing import CHANGE, VIEW, make_staff, make_world
from keys import services as key_services
from logs.models import AuditEntry
from proxy.models import StoredResponse

pytestmark = pytest.mark.django_db

MASTER = "master-key-for-the-matrix-0123456789"
PERSONAS = ("anon", "key", "none", "view", "change", "super", "master")
STAFF = ("none", "view", "change", "super")


def statuses(anon, key, none, view, change, sup, master):
    return dict(zip(PERSONAS, (anon, key, none, view, change, sup, master), strict=True))


# The management API: token and master-key callers; view perms read, change perms write.
API_READ = statuses(401, 401, 403, 200, 200, 200, 200)
API_STAFF = statuses(401, 401, 200, 200, 200, 200, 200)  # no data: any active staff
API_SUPER = statuses(401, 401, 403, 403, 403, 200, 200)


def api_write(ok):
    return statuses(401, 401, 403, 403, ok, ok, ok)


# The admin: sessions only, so a consumer key or the master key is just anonymous (302
# to the login page). `admin(none, view, change, super)` for the logged-in staff.
def admin(none, view, change, sup):
    return statuses(302, 302, none, view, change, sup, 302)


ADMIN_READ = admin(403, 200, 200, 200)  # the view permission
ADMIN_ADD = admin(403, 403, 200, 200)  # add/change/delete; 200 = the form (errors for {})
ADMIN_DELETED = admin(403, 403, 302, 302)  # deleted, then sent to the list
ADMIN_SUPER = admin(403, 403, 403, 200)  # superusers only
ADMIN_NOBODY = admin(403, 403, 403, 403)  # request logs are written by the gateway only
ADMIN_ANY_STAFF = admin(200, 200, 200, 200)
ADMIN_REDIRECT = admin(302, 302, 302, 302)
ADMIN_NOT_FOUND = admin(404, 404, 404, 404)


@dataclass
class Call:
    method: str
    url: str  # formatted with the world: {user}, {key}, {endpoint}, {model}, {log}, {ct}
    expect: dict
    body: dict | None = field(default=None)


def model_admin(path, obj, *, read=ADMIN_READ, write=ADMIN_ADD, deleted=ADMIN_DELETED):
    """The six URL patterns Django registers for each ModelAdmin."""
    base = f"/admin/{path}/"
    one = f"{base}{{{obj}}}/"
    return {
        f"admin/{path}/": [Call("get", base, read)],
        f"admin/{path}/add/": [
            Call("get", f"{base}add/", write),
            Call("post", f"{base}add/", write, {}),
        ],
        f"admin/{path}/<path:object_id>/history/": [Call("get", f"{one}history/", read)],
        f"admin/{path}/<path:object_id>/delete/": [
            Call("get", f"{one}delete/", write),
            Call("post", f"{one}delete/", deleted, {"post": "yes"}),
        ],
        f"admin/{path}/<path:object_id>/change/": [
            Call("get", f"{one}change/", read),
            Call("post", f"{one}change/", write, {}),
        ],
        f"admin/{path}/<path:object_id>/": [Call("get", one, ADMIN_REDIRECT)],
    }


def api_detail(resource, obj):
    """Read, deactivate and delete one object of the management API."""
    url = f"/api/v1/{resource}/{{{obj}}}/"
    return [
        Call("get", url, API_READ),
        Call("patch", url, api_write(200), {"is_active": False}),
        Call("delete", url, api_write(204)),
    ]


# A read-only resource: a write is 405 once the caller holds the permission it would need.
API_NO_WRITES = statuses(401, 401, 403, 403, 405, 405, 405)


def api_read_only(resource, obj):
    """The list and detail URL patterns of a read-only management API resource."""
    return {
        f"api/v1/^{resource}/$": [
            Call("get", f"/api/v1/{resource}/", API_READ),
            Call("post", f"/api/v1/{resource}/", API_NO_WRITES, {}),
        ],
        f"api/v1/^{resource}/(?P<pk>[^/.]+)/$": [
            Call("get", f"/api/v1/{resource}/{{{obj}}}/", API_READ),
            Call("delete", f"/api/v1/{resource}/{{{obj}}}/", API_NO_WRITES),
        ],
    }


# A backup that creates one user (an import of it changes the database).
BACKUP = {"format": "aethergate-backup", "version": 1, "users": [{"username": "carol"}]}

MATRIX = {
    "": [Call("get", "/", statuses(*[302] * 7))],
    "favicon.ico": [Call("get", "/favicon.ico", statuses(*[302] * 7))],
    # Django admin's own pages
    "admin/": [Call("get", "/admin/", ADMIN_ANY_STAFF)],
    "admin/login/": [Call("get", "/admin/login/", statuses(200, 200, 302, 302, 302, 302, 200))],
    "admin/logout/": [Call("post", "/admin/logout/", ADMIN_ANY_STAFF, {})],
    "admin/password_change/": [Call("get", "/admin/password_change/", ADMIN_ANY_STAFF)],
    "admin/password_change/done/": [Call("get", "/admin/password_change/done/", ADMIN_ANY_STAFF)],
    # Suggestions for a key's owner: the view permission on users.
    "admin/autocomplete/": [
        Call(
            "get",
            "/admin/autocomplete/?app_label=keys&model_name=apikey&field_name=owner&term=al",
            ADMIN_READ,
        )
    ],
    "admin/jsi18n/": [Call("get", "/admin/jsi18n/", ADMIN_ANY_STAFF)],
    # No model has a public page ("View on site" is off).
    "admin/r/<path:content_type_id>/<path:object_id>/": [
        Call("get", "/admin/r/{ct}/{user}/", ADMIN_NOT_FOUND)
    ],
    # In registration order: proxy.admin registers the endpoint and model admins last.
    "admin/^(?P<app_label>accounts|auth|keys|logs|endpoints|models_registry|proxy)/$": [
        Call("get", "/admin/keys/", admin(404, 200, 200, 200)),
        Call("get", "/admin/auth/", admin(404, 404, 404, 200)),
        Call("get", "/admin/proxy/", admin(404, 200, 200, 200)),
    ],
    "admin/(?P<url>.*)$": [Call("get", "/admin/no-such-page/", ADMIN_NOT_FOUND)],
    # Groups: permissions of the auth app, which the staff personas do not hold.
    **model_admin(
        "auth/group",
        "group",
        read=ADMIN_SUPER,
        write=ADMIN_SUPER,
        deleted=admin(403, 403, 403, 302),
    ),
    **model_admin("accounts/user", "user"),
    # Another user's password: superusers only (accounts.permissions).
    "admin/accounts/user/<id>/password/": [
        Call("get", "/admin/accounts/user/{user}/password/", ADMIN_SUPER),
        Call("post", "/admin/accounts/user/{user}/password/", ADMIN_SUPER, {}),
    ],
    # The token is the superuser's own, so other staff do not see it (accounts.permissions):
    # the admin's "no such object" (302 to the list) once they pass its permission check.
    **model_admin("accounts/apitoken", "token"),
    **{
        "admin/accounts/apitoken/<path:object_id>/history/": [
            Call("get", "/admin/accounts/apitoken/{token}/history/", admin(302, 302, 302, 200))
        ],
        "admin/accounts/apitoken/<path:object_id>/delete/": [
            Call("get", "/admin/accounts/apitoken/{token}/delete/", admin(403, 403, 302, 200)),
            Call(
                "post",
                "/admin/accounts/apitoken/{token}/delete/",
                admin(403, 403, 302, 302),
                {"post": "yes"},
            ),
        ],
        "admin/accounts/apitoken/<path:object_id>/change/": [
            Call("get", "/admin/accounts/apitoken/{token}/change/", admin(403, 302, 302, 200)),
            Call("post", "/admin/accounts/apitoken/{token}/change/", admin(403, 403, 302, 200), {}),
        ],
    },
    **model_admin("endpoints/endpoint", "endpoint"),
    # "Test connection" (proxy/admin.py): listing needs the view permission on the
    # endpoint, importing also the add permission on models ({}: nothing picked, a 200).
    "admin/endpoints/endpoint/<path:object_id>/models/": [
        Call("get", "/admin/endpoints/endpoint/{endpoint}/models/", ADMIN_READ),
        Call("post", "/admin/endpoints/endpoint/{endpoint}/models/", ADMIN_ADD, {}),
    ],
    **model_admin("models_registry/model", "model"),
    **model_admin("keys/apikey", "key"),
    # Find a key by its whole secret, sent in a POST body: the view permission.
    "admin/keys/apikey/find/": [
        Call("get", "/admin/keys/apikey/find/", ADMIN_READ),
        Call("post", "/admin/keys/apikey/find/", ADMIN_READ, {"secret": "ag-no-such-key-123"}),
    ],
    "admin/keys/apikey/<path:object_id>/rotate/": [
        Call("get", "/admin/keys/apikey/{key}/rotate/", ADMIN_ADD),
        Call("post", "/admin/keys/apikey/{key}/rotate/", ADMIN_ADD, {}),
    ],
    **model_admin("logs/requestlog", "log", write=ADMIN_NOBODY, deleted=ADMIN_NOBODY),
    # The audit log is written by the changes it records, never by hand.
    **model_admin("logs/auditentry", "audit", write=ADMIN_NOBODY, deleted=ADMIN_NOBODY),
    # Lockouts are made by failed logins; lifting one (an action) is a change.
    **model_admin("accounts/lockout", "lockout", write=ADMIN_NOBODY, deleted=ADMIN_NOBODY),
    "admin/accounts/lockout/<path:object_id>/change/": [
        Call("get", "/admin/accounts/lockout/{lockout}/change/", ADMIN_READ),
        Call("post", "/admin/accounts/lockout/{lockout}/change/", admin(403, 403, 302, 302), {}),
    ],
    # Stored responses (proxy/admin.py): written by /v1/responses only, never added or
    # changed here; deleting one is a delete.
    **model_admin("proxy/storedresponse", "stored", write=ADMIN_NOBODY),
    "admin/proxy/storedresponse/<path:object_id>/delete/": [
        Call("get", "/admin/proxy/storedresponse/{stored}/delete/", ADMIN_ADD),
        Call(
            "post", "/admin/proxy/storedresponse/{stored}/delete/", ADMIN_DELETED, {"post": "yes"}
        ),
    ],
    # The request logs' CSV export and the usage dashboard (logs/admin.py, logs/dashboard.py):
    # who may view request logs.
    "admin/logs/requestlog/export/": [Call("get", "/admin/logs/requestlog/export/", ADMIN_READ)],
    "admin/usage/": [
        Call("get", "/admin/usage/", ADMIN_READ),
        Call("get", "/admin/usage/?range=30d&export=csv", ADMIN_READ),
    ],
    # Backup and restore (aethergate/backup/admin.py): as the API's backup route.
    "admin/backup/": [
        Call("get", "/admin/backup/", ADMIN_READ),
        Call("get", "/admin/backup/?download=1", ADMIN_READ),
        Call("get", "/admin/backup/?download=1&include_secrets=1", ADMIN_SUPER),
        Call("post", "/admin/backup/", ADMIN_SUPER, {}),
        Call("post", "/admin/backup/", ADMIN_SUPER, {"confirm": "no-such-upload"}),
    ],
    # The management API
    "api/v1/": [Call("get", "/api/v1/", API_STAFF)],
    "api/v1/^users/$": [
        Call("get", "/api/v1/users/", API_READ),
        Call("options", "/api/v1/users/", API_READ),
        Call("post", "/api/v1/users/", api_write(201), {"username": "bob"}),
    ],
    "api/v1/^users/(?P<pk>[^/.]+)/$": [
        Call("get", "/api/v1/users/{user}/", API_READ),
        Call("head", "/api/v1/users/{user}/", API_READ),
        Call("put", "/api/v1/users/{user}/", api_write(200), {"username": "alice2"}),
        Call("patch", "/api/v1/users/{user}/", api_write(200), {"organization": "Initech"}),
        Call("delete", "/api/v1/users/{user}/", api_write(204)),
    ],
    "api/v1/^users/(?P<pk>[^/.]+)/credit/$": [
        Call("post", "/api/v1/users/{user}/credit/", api_write(200), {"amount": "1"})
    ],
    "api/v1/^keys/$": [
        Call("get", "/api/v1/keys/", API_READ),
        Call("post", "/api/v1/keys/", api_write(201), {"owner": "{user}", "name": "ci"}),
    ],
    "api/v1/^keys/(?P<pk>[^/.]+)/$": [
        *api_detail("keys", "key"),
        Call("put", "/api/v1/keys/{key}/", api_write(200), {"owner": "{user}", "name": "x"}),
    ],
    "api/v1/^keys/(?P<pk>[^/.]+)/rotate/$": [
        Call("post", "/api/v1/keys/{key}/rotate/", api_write(200))
    ],
    "api/v1/^endpoints/$": [
        Call("get", "/api/v1/endpoints/", API_READ),
        Call(
            "post",
            "/api/v1/endpoints/",
            api_write(201),
            {"name": "e2", "base_url": "http://127.0.0.1:8080/v1"},
        ),
    ],
    "api/v1/^endpoints/(?P<pk>[^/.]+)/$": api_detail("endpoints", "endpoint"),
    "api/v1/^models/$": [
        Call("get", "/api/v1/models/", API_READ),
        Call(
            "post",
            "/api/v1/models/",
            api_write(201),
            {"name": "m2", "deployments": [{"endpoint": "local", "upstream_name": "m2"}]},
        ),
    ],
    "api/v1/^models/(?P<pk>[^/.]+)/$": api_detail("models", "model"),
    # Logs and the audit log are read-only (api_read_only).
    **api_read_only("logs", "log"),
    **api_read_only("audit", "audit"),
    "api/v1/stats/": [Call("get", "/api/v1/stats/", API_READ)],
    # Backups (aethergate/backup/api.py): a plain export needs the view permission on every
    # backed-up kind; secrets and every import (it can change any object) superusers only.
    "api/v1/backup/": [
        Call("get", "/api/v1/backup/", API_READ),
        Call("get", "/api/v1/backup/?include_secrets=true", API_SUPER),
        Call("post", "/api/v1/backup/?dry_run=true", API_SUPER, BACKUP),
        Call("post", "/api/v1/backup/", API_SUPER, BACKUP),
    ],
    "api/v1/schema/": [Call("get", "/api/v1/schema/", API_STAFF)],
    # A browser without credentials is sent to the admin login; a bad credential is 401.
    "api/v1/docs/": [Call("get", "/api/v1/docs/", statuses(302, 401, 200, 200, 200, 200, 200))],
}


def url_patterns(patterns=None, prefix=""):
    """Every URL pattern of the root URLconf, as its full route string."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from url_patterns(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            assert isinstance(pattern, URLPattern)
            yield prefix + str(pattern.pattern)


def test_every_url_pattern_has_an_entry():
    routes = list(url_patterns())

    assert len(routes) == len(set(routes))
    assert sorted(set(routes) - MATRIX.keys()) == [], "routes without an entry in MATRIX"
    assert sorted(MATRIX.keys() - set(routes)) == [], "MATRIX entries for no route"


# Columns that change on reads (last use, last login), left out of the comparison.
VOLATILE = {"last_used_at", "last_login", "expire_date", "session_data"}


def database_state():
    """Every row of every model, without the columns that record reads."""
    return {
        model._meta.label: [
            {k: v for k, v in row.items() if k not in VOLATILE}
            for row in model._default_manager.order_by("pk").values()
        ]
        for model in apps.get_models()
        # Sessions change on reads; a refused credential is counted (login throttling).
        if model._meta.label not in ("sessions.Session", "accounts.LoginFailure")
    }


@pytest.fixture
def world(settings):
    """The ids the matrix's URLs name: make_world()'s, a superuser's token, a group."""
    settings.MASTER_API_KEY = MASTER
    world = make_world()
    root = User.objects.create_superuser("root", "root@example.com")  # no hashing: fast
    token, _ = services.create_api_token(user=root, name="root's")
    group = Group.objects.create(name="support")
    now = timezone.now()
    lockout = Lockout.objects.create(
        key="user:alice", surface="admin", failures=5, locked_at=now, until=now + timedelta(hours=1)
    )
    stored = StoredResponse.objects.create(
        id="resp_matrix", owner=world["user"], model="llama3", created_at=now, status="completed"
    )
    ids = {name: obj.pk for name, obj in world.items()}
    ids.update(
        token=token.pk,
        group=group.pk,
        ct=ContentType.objects.get_for_model(User).pk,
        lockout=lockout.pk,
        stored=stored.pk,
        audit=AuditEntry.objects.latest("id").pk,  # the world's own making was recorded
    )
    return ids


@pytest.fixture
def callers(world):
    """persona → (API client, admin client)."""
    _, consumer_key = key_services.create_key(owner=User.objects.get(pk=world["user"]), name="k")
    users = {
        "none": make_staff("staff-none"),
        "view": make_staff("staff-view", VIEW),
        "change": make_staff("staff-change", CHANGE),
        "super": User.objects.get(username="root"),
    }
    callers = {
        "anon": (APIClient(), Client()),
        "key": (
            APIClient(HTTP_AUTHORIZATION=f"Bearer {consumer_key}"),
            Client(HTTP_AUTHORIZATION=f"Bearer {consumer_key}"),
        ),
        "master": (APIClient(HTTP_X_ADMIN_KEY=MASTER), Client(HTTP_X_ADMIN_KEY=MASTER)),
    }
    for persona, user in users.items():
        _, secret = services.create_api_token(user=user, name=persona)
        session = Client()
        session.force_login(user)
        callers[persona] = (APIClient(HTTP_AUTHORIZATION=f"Bearer {secret}"), session)
    return callers


def fill(value, world):
    if isinstance(value, str):
        filled = value.format(**world)
        return int(filled) if value.startswith("{") and filled.isdigit() else filled
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    return value


UNSAFE = {"post", "put", "patch", "delete"}


@pytest.mark.parametrize("route", sorted(MATRIX))
def test_each_caller_gets_the_status_the_matrix_says(route, world, callers):
    wrong = []
    for call in MATRIX[route]:
        url, body = fill(call.url, world), fill(call.body, world)
        for persona in PERSONAS:
            api_client, admin_client = callers[persona]
            client = api_client if url.startswith("/api/") else admin_client
            kwargs = {"format": "json"} if client is api_client and body is not None else {}
            unsafe = call.method in UNSAFE
            before = database_state() if unsafe else None
            with transaction.atomic():
                response = getattr(client, call.method)(url, body, **kwargs)
                after = database_state() if unsafe else None
                transaction.set_rollback(True)  # the next persona sees the same world
            where = f"{call.method.upper()} {url} as {persona}"
            if response.status_code != call.expect[persona]:
                wrong.append(f"{where}: {response.status_code}, not {call.expect[persona]}")
            refused = response.status_code >= 400 or (
                response.status_code == 302 and "/login/" in response.get("Location", "")
            )
            if unsafe and refused and after != before:
                wrong.append(f"{where} was refused but changed the database")
    assert not wrong, "\n".join(wrong)

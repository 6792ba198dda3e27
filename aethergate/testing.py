"""What every app's tests share: named personas, factories, `wait_for` and a `FakeClock`.

Personas and factories write to the database (a test asks for `db` first)
and import models when called, so that helpers running before Django is set
up (servers, processes) can import this module; `wait_for` polls for an
event, `FakeClock` stands in for the time. Permissions
are Django's own (`accounts.view_user`, …), granted to the user directly, as a
superuser would in the admin. Tests only; nothing imports it at run time.
"""

import asyncio
import time
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import OperationalError
from django.db.models import Q

# The apps whose models staff manage in the admin and the API.
GATEWAY_APPS = ("accounts", "keys", "endpoints", "models_registry", "logs", "proxy")
VIEW = ("view",)
CHANGE = ("view", "add", "change", "delete")
ROOT_PASSWORD = "pw-root-123"
LOCAL_UPSTREAM = "http://127.0.0.1:11434/v1"


# --------------------------------------------------------------------------- time and events


class FakeClock:
    """A clock that stands still until a test moves it: `clock()` is the time.

    `start` is seconds (a stand-in for `time.monotonic`) or an aware datetime
    (for `timezone.now`); `advance(seconds)` moves either kind and returns the
    new time. Tests may also set `now` directly.
    """

    def __init__(self, start: float | datetime = 1000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        step = timedelta(seconds=seconds) if isinstance(self.now, datetime) else seconds
        self.now += step
        return self.now


class NotYet(AssertionError):
    """Raised by `wait_for` when its condition did not hold in time: the test fails."""


def wait_for(condition, timeout: float = 5.0, *, interval: float = 0.02, what: str = ""):
    """Call `condition()` every `interval` s until it returns something truthy; return that.

    For events (a row written, a server listening, a process noticing an
    outage), never for time to pass: move a `FakeClock` instead. Raises
    `NotYet`, naming `what`, once `timeout` seconds passed without.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise NotYet(f"{what or 'the condition'}: not within {timeout} s")
        time.sleep(interval)
    return result


# ASYNC109: the same signature as its sync twin, so a test reads the same in either.
async def await_for(
    condition,
    timeout: float = 5.0,  # noqa: ASYNC109
    *,
    interval: float = 0.01,
    what: str = "",
):
    """`wait_for` inside an event loop: it yields to the loop between calls of `condition`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise NotYet(f"{what or 'the condition'}: not within {timeout} s")
        await asyncio.sleep(interval)
    return result


def wait_for_logs(count: int = 1, timeout: float = 5.0, **filters) -> list:
    """The request log rows matching `filters`, in request order, once there are `count`.

    In request order (by request start, not by when the writer stored them);
    fails the test if fewer than `count` were written within `timeout`.
    """
    from logs.models import RequestLog

    def written():
        try:
            rows = list(RequestLog.objects.filter(**filters).order_by("created_at", "id"))
        except OperationalError:  # SQLite: the gateway's writer holds the table for a moment
            return None
        return rows if len(rows) >= count else None

    return wait_for(written, timeout, interval=0.05, what=f"{count} request log row(s)")


# --------------------------------------------------------------------------- permissions


def permissions(actions=CHANGE, apps=GATEWAY_APPS):
    """The Permission rows for `actions` ("view", "add", …) on every model of `apps`."""
    from django.contrib.auth.models import Permission

    by_action = Q()
    for action in actions:
        by_action |= Q(codename__startswith=f"{action}_")
    return Permission.objects.filter(by_action, content_type__app_label__in=apps)


def grant(user, actions=CHANGE, apps=GATEWAY_APPS):
    """Give `user` the `actions` permissions on `apps`' models; return the user, reloaded.

    Reloaded because Django caches a user's permissions on the instance.
    """
    user.user_permissions.add(*permissions(actions, apps))
    return type(user).objects.get(pk=user.pk)


# --------------------------------------------------------------------------- personas


def prepaid_consumer(username="alice", balance=Decimal("10"), **fields):
    """Alice: an API consumer with a prepaid balance (10 by default), of Acme."""
    from accounts.models import User

    fields.setdefault("email", f"{username}@example.com")
    fields.setdefault("organization", "Acme")
    return User.objects.create_user(username, balance=balance, **fields)


def second_consumer(username="bob", **fields):
    """Bob: another consumer, without a prepaid balance (cost tracked, nothing enforced)."""
    from accounts.models import User

    fields.setdefault("email", f"{username}@example.com")
    return User.objects.create_user(username, **fields)


def superuser(username="root", password=ROOT_PASSWORD):
    """Root: a superuser; `password=None` skips the (slow) password hashing."""
    from accounts.models import User

    return User.objects.create_superuser(username, f"{username}@example.com", password)


def make_staff(username, actions=(), apps=GATEWAY_APPS, **fields):
    """A staff member (not a superuser) holding `actions` on `apps` (none by default)."""
    from accounts.models import User

    user = User.objects.create_user(username, is_staff=True, **fields)
    return grant(user, actions, apps) if actions else user


def api_token(user, name="tests") -> str:
    """The secret of a new management API token of `user`."""
    from accounts import services

    _, secret = services.create_api_token(user=user, name=name)
    return secret


def staff_with_token(username="ops", actions=CHANGE):
    """Ops: a staff member holding `actions` (all, by default) and an API token: (user, secret)."""
    user = make_staff(username, actions)
    return user, api_token(user)


# --------------------------------------------------------------------------- factories


def make_user(username="alice", balance=None, is_active=True, **fields):
    """A saved User: a consumer without a balance unless told otherwise."""
    from accounts.models import User

    return User.objects.create_user(
        username=username, balance=balance, is_active=is_active, **fields
    )


def make_endpoint(name="local", base_url=LOCAL_UPSTREAM, api_key="", **fields):
    """A saved Endpoint; `api_key` (the upstream credential) is stored encrypted."""
    from endpoints.models import Endpoint

    endpoint = Endpoint(name=name, base_url=base_url, **fields)
    if api_key:
        endpoint.set_api_key(api_key)
    endpoint.save()
    return endpoint


def make_model(name="llama3", upstream_name="llama3:8b", endpoint=None, **fields):
    """A saved Model served by `upstream_name` on `endpoint` (a new local one by default)."""
    from models_registry.models import Model

    model = Model.objects.create(name=name, **fields)
    deploy(model, endpoint or make_endpoint(), upstream_name)
    return model


def deploy(model, endpoint, upstream_name=None, **fields):
    """A saved Deployment of `model` on `endpoint` (upstream name: the model's, by default)."""
    from models_registry.models import Deployment

    return Deployment.objects.create(
        model=model, endpoint=endpoint, upstream_name=upstream_name or model.name, **fields
    )


def served_by(model) -> list[tuple]:
    """`model`'s deployments as stored, (endpoint name, upstream name, weight, priority), by
    priority, heaviest first, then upstream name: what a test compares with what it wrote."""
    return list(
        model.deployments.order_by("priority", "-weight", "upstream_name").values_list(
            "endpoint__name", "upstream_name", "weight", "priority"
        )
    )


def make_key(owner, name="test", **fields):
    """A consumer key of `owner`, made by the keys service: (APIKey, secret)."""
    from keys.services import create_key

    return create_key(owner=owner, name=name, **fields)


def make_world():
    """One of each managed object, so that every URL has something to show.

    The prepaid consumer `alice` with a key, an endpoint, a model on it and one
    request log: {"user", "key", "endpoint", "model", "log"}.
    """
    from django.utils import timezone

    from logs.models import RequestLog

    alice = prepaid_consumer()
    endpoint = make_endpoint()
    model = make_model(endpoint=endpoint)
    key, _ = make_key(alice, name="laptop")
    log = RequestLog.objects.create(
        created_at=timezone.now(),
        request_id="req_1",
        user=alice,
        username="alice",
        api_key=key,
        key_prefix=key.prefix,
        model="llama3",
        status=200,
        outcome="ok",
    )
    return {"user": alice, "key": key, "endpoint": endpoint, "model": model, "log": log}


def request_record(key=None, **fields):
    """A RequestRecord of a plain ok request by `key` (its owner and prefix), `fields` overriding.

    Stored with `logs.services.write_batch`, as the log writer does: rows, charges and
    rollups together.
    """
    from django.utils import timezone

    from logs.records import RequestRecord

    values = {
        "created_at": timezone.now(),
        "request_id": "req-1",
        "user_id": key.owner_id if key else None,
        "username": key.owner.username if key else "",
        "api_key_id": key.pk if key else None,
        "key_prefix": key.prefix if key else "",
        "model": "llama3",
        "endpoint": "local",
        "path": "/v1/chat/completions",
        "status": 200,
        "outcome": "ok",
        "stream": False,
        "latency_ms": None,
        "ttft_ms": None,
        "input_units": 0,
        "cache_read_units": 0,
        "cache_write_units": 0,
        "output_units": 0,
        "reasoning_units": 0,
        "usage_estimated": False,
        "cost_unknown": False,
        "cost": Decimal(0),
        "prompt_text": "",
        "completion_text": "",
        "error": "",
        "attempts": [],
    }
    return RequestRecord(**(values | fields))

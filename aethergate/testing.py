"""Test personas shared by every app's tests: staff members holding chosen model permissions.

Permissions are Django's own (`accounts.view_user`, …), granted to the user
directly, as a superuser would in the admin. Tests only; nothing imports it
at run time.
"""

from django.contrib.auth.models import Permission
from django.db.models import Q

# The apps whose models staff manage in the admin and the API.
GATEWAY_APPS = ("accounts", "keys", "endpoints", "models_registry", "logs")
VIEW = ("view",)
CHANGE = ("view", "add", "change", "delete")


def permissions(actions=CHANGE, apps=GATEWAY_APPS):
    """The Permission rows for `actions` ("view", "add", …) on every model of `apps`."""
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


def make_staff(username, actions=(), apps=GATEWAY_APPS, **fields):
    """A staff member (not a superuser) holding `actions` on `apps` (none by default)."""
    from accounts.models import User

    user = User.objects.create_user(username, is_staff=True, **fields)
    return grant(user, actions, apps) if actions else user


def make_world():
    """One of each managed object, so that every URL has something to show.

    A prepaid consumer `alice` with a key, an endpoint, a model on it and one
    request log: {"user", "key", "endpoint", "model", "log"}.
    """
    from decimal import Decimal

    from django.utils import timezone

    from accounts.models import User
    from endpoints.models import Endpoint
    from keys import services as key_services
    from logs.models import RequestLog
    from models_registry.models import Model

    alice = User.objects.create_user(
        "alice", email="alice@example.com", organization="Acme", balance=Decimal("10")
    )
    endpoint = Endpoint.objects.create(name="local", base_url="http://127.0.0.1:11434/v1")
    model = Model.objects.create(name="llama3", upstream_name="llama3:8b", endpoint=endpoint)
    key, _ = key_services.create_key(owner=alice, name="laptop")
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

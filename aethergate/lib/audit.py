"""Who is changing things, from where: the context every audit entry is recorded with.

Entry points set the actor (the middleware below for admin pages, the
management API's shared base once DRF has authenticated, every management
command through `aethergate.lib.commands`); the logs app's receivers read it
when users, keys, tokens, endpoints and models are saved or deleted, and
services announce the writes signals cannot see (`QuerySet.update()`) with
`record()`. This module imports no app.
"""

import contextvars
import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.db import models
from django.dispatch import Signal
from django.utils.decorators import sync_and_async_middleware


class Surface(models.TextChoices):
    ADMIN = "admin", "Admin"
    API = "api", "Management API"
    COMMAND = "command", "Command"
    OTHER = "other", "Other"  # code run outside the three (tests, a bare script)


# The value stored in place of a secret column's old and new values.
CHANGED = "changed"


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (possibly lazy, as `request.user` is), or a named principal.

    `name` is used when there is no user row: "master key", or the OS user
    running a command (then `command` names the command).
    """

    surface: str
    user: Any = None
    name: str = ""
    address: str | None = None
    command: str = ""


_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "aethergate_audit_actor", default=None
)


def current() -> Actor:
    """The actor of the code now running; Surface.OTHER with no name outside any entry point."""
    return _actor.get() or Actor(surface=Surface.OTHER)


def set_actor(actor: Actor) -> contextvars.Token:
    """Make `actor` current until the enclosing `acting()` (or middleware) ends."""
    return _actor.set(actor)


@contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Run the block with `actor` current, then restore the one before."""
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


def command_actor(command_name: str) -> Actor:
    """The actor of a management command: the command's name and the OS user running it."""
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry or login name (some containers)
        os_user = f"uid {os.getuid()}"
    return Actor(surface=Surface.COMMAND, name=os_user, command=command_name)


def request_actor(request, surface: str) -> Actor:
    """The actor of an HTTP request: its (possibly lazy) user and Django's REMOTE_ADDR.

    REMOTE_ADDR is the client as the server saw it; the server rewrites it
    from X-Forwarded-For only for the trusted proxies of
    AETHERGATE_FORWARDED_ALLOW_IPS, so it is never read from a header here.
    """
    return Actor(
        surface=surface,
        user=getattr(request, "user", None),
        address=request.META.get("REMOTE_ADDR") or None,
    )


@sync_and_async_middleware
def audit_middleware(get_response):
    """Admin requests act as their session's user, from their address (the API overrides it)."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            with acting(request_actor(request, Surface.ADMIN)):
                return await get_response(request)

    else:

        def middleware(request):
            with acting(request_actor(request, Surface.ADMIN)):
                return get_response(request)

    return middleware


# Sent by services for writes that model signals do not see (QuerySet.update())
# and for security events; the logs app records it. Arguments: action, kind,
# object_id, name, changes (field -> [old, new], or CHANGED for a secret).
recorded = Signal()


def record(
    action: str,
    *,
    obj=None,
    kind: str = "",
    object_id: str = "",
    name: str = "",
    changes: dict | None = None,
) -> None:
    """Record one audit entry for `obj` (or the object `kind`/`object_id`/`name` describe)."""
    if obj is not None:
        kind = kind or str(obj._meta.verbose_name)
        object_id = object_id or str(obj.pk)
        name = name or str(obj)
    recorded.send(
        sender=None,
        action=action,
        kind=kind,
        object_id=object_id,
        name=name,
        changes=changes or {},
    )

"""Failed-login throttling for the admin login form and staff API tokens, in the database.

Each failure counts against the account (the username; for a token, its
display prefix) and the client address (Django's REMOTE_ADDR). After
AETHERGATE_LOGIN_FAILURE_LIMIT failures for an account, or
AETHERGATE_LOGIN_ADDRESS_FAILURE_LIMIT for an address, within
AETHERGATE_LOGIN_FAILURE_WINDOW seconds, that account or address is locked
out for AETHERGATE_LOGIN_LOCKOUT_SECONDS: every attempt is refused, the right
password or token included. State lives in the database, never in Redis or a
per-process cache, so it holds across processes and with Redis down. A
successful login does not erase failures (that would let an attacker who owns
one account reset an address's count); they age out of the window.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import TOKEN_DISPLAY_LENGTH, Lockout, LoginFailure, looks_like_token
from aethergate.lib import audit

# The clock; tests replace it to let a lockout expire without sleeping.
clock = timezone.now


class LockedOut(Exception):
    """Attempts from this account or address are refused for `retry_after` more seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed logins; retry in {retry_after} seconds.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    """Who is trying to log in: the account's key (or None) and the client's address key."""

    surface: str
    account: str | None
    address: str | None

    @classmethod
    def admin(cls, username: str | None, address: str | None) -> "Attempt":
        return cls(audit.Surface.ADMIN, f"user:{username}" if username else None, address)

    @classmethod
    def token(cls, presented: str, address: str | None) -> "Attempt":
        # Only a well-formed token's public display prefix: never any more of what was sent.
        account = None
        if looks_like_token(presented):
            account = f"token:{presented[:TOKEN_DISPLAY_LENGTH]}"
        return cls(audit.Surface.API, account, address)

    @property
    def keys(self) -> dict[str, int]:
        """Each key this attempt counts against, with its failure limit."""
        keys = {}
        if self.account:
            keys[self.account] = settings.AETHERGATE_LOGIN_FAILURE_LIMIT
        if self.address:
            keys[f"address:{self.address}"] = settings.AETHERGATE_LOGIN_ADDRESS_FAILURE_LIMIT
        return keys


def check(attempt: Attempt, *, now: datetime | None = None) -> None:
    """Raise LockedOut if the attempt's account or address is locked out now."""
    now = now or clock()
    lockout = (
        Lockout.objects.filter(key__in=attempt.keys, until__gt=now)
        .order_by("-until")
        .only("until")
        .first()
    )
    if lockout is not None:
        raise LockedOut(max(1, math.ceil((lockout.until - now).total_seconds())))


def failed(attempt: Attempt, *, now: datetime | None = None) -> LockedOut | None:
    """Count a failed attempt; return LockedOut if this failure locked its account or address.

    A lockout is recorded in the audit log, as a security event of the attempt's surface.
    """
    now = now or clock()
    window = timedelta(seconds=settings.AETHERGATE_LOGIN_FAILURE_WINDOW)
    duration = timedelta(seconds=settings.AETHERGATE_LOGIN_LOCKOUT_SECONDS)
    locked = None
    with transaction.atomic():
        LoginFailure.objects.filter(at__lte=now - window).delete()
        Lockout.objects.filter(until__lte=now).delete()
        LoginFailure.objects.bulk_create(LoginFailure(key=key, at=now) for key in attempt.keys)
        for key, limit in attempt.keys.items():
            failures = LoginFailure.objects.filter(key=key, at__gt=now - window).count()
            if failures < limit:
                continue
            Lockout.objects.update_or_create(
                key=key,
                defaults={
                    "surface": attempt.surface,
                    "address": attempt.address or "",
                    "failures": failures,
                    "locked_at": now,
                    "until": now + duration,
                },
            )
            # Counted once: after the lockout, the count starts again from zero.
            LoginFailure.objects.filter(key=key).delete()
            actor = audit.Actor(surface=attempt.surface, address=attempt.address)
            with audit.acting(actor):
                audit.record(
                    "lockout",
                    kind="login",
                    object_id=key,
                    name=key,
                    changes={"failures": failures, "until": now + duration},
                )
            locked = LockedOut(math.ceil(duration.total_seconds()))
    return locked


def clear(*, username: str = "", address: str = "", token_prefix: str = "") -> int:
    """Lift the lockouts (and forget the failures) of an account, token or address.

    Returns how many lockouts were lifted; each one is recorded in the audit log.
    """
    keys = [
        key
        for key in (
            username and f"user:{username}",
            token_prefix and f"token:{token_prefix.rstrip('…')}",
            address and f"address:{address}",
        )
        if key
    ]
    return lift(Lockout.objects.filter(key__in=keys), also_failures_of=keys)


def lift(lockouts, *, also_failures_of=()) -> int:
    """Delete `lockouts` (a queryset) and their keys' failures; record each in the audit log."""
    lifted = []
    with transaction.atomic():
        for lockout in lockouts.select_for_update():
            audit.record("unlock", kind="login", object_id=lockout.key, name=lockout.key)
            lockout.delete()
            lifted.append(lockout.key)
        LoginFailure.objects.filter(key__in={*also_failures_of, *lifted}).delete()
    return len(lifted)

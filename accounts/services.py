"""Account changes reached from more than one place: admin, the management API, commands."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import F, Q
from django.utils import timezone

from accounts import throttling
from accounts.models import APIToken, User, token_digest
from aethergate.lib import audit

# A token's last use is written at most this often, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class UserNotFound(LookupError):
    """No user has the username an operator gave; the message says so."""


def find_user(username: str) -> User:
    """The user named `username`, or UserNotFound."""
    user = User.objects.filter(username=username).first()
    if user is None:
        raise UserNotFound(f'There is no user "{username}" (see list_users).')
    return user


class NoPrepaidBalance(Exception):
    """The user is not on prepaid billing (balance is null): there is nothing to credit."""


def edit_balance(*, user: User, seen: Decimal | None, new: Decimal | None) -> None:
    """Apply a staff edit of `user`'s balance from `seen` (what they were shown) to `new`.

    Charges settle while a form is open; applying the difference (new - seen)
    in one atomic UPDATE keeps them. Turning prepaid billing on or off
    (None on either side) sets the value as given.
    """
    users = User.objects.filter(pk=user.pk)
    before = users.values_list("balance", flat=True).first()
    if seen is None or new is None:
        users.update(balance=new)
    else:
        users.update(balance=F("balance") + (new - seen))
    _record_balance("update", user, before)


def _record_balance(action: str, user: User, before: Decimal | None) -> None:
    # .update() sends no signal: the audit log hears of the change from here.
    after = User.objects.filter(pk=user.pk).values_list("balance", flat=True).first()
    if after != before:
        audit.record(action, obj=user, changes={"balance": [before, after]})


def credit_balance(*, user: User, amount: Decimal) -> Decimal:
    """Add `amount` (negative: take it away) to `user`'s prepaid balance; return the new one.

    One atomic UPDATE, so usage charges settling at the same moment are kept.
    Raises NoPrepaidBalance if the user has no balance to add to.
    """
    before = User.objects.filter(pk=user.pk).values_list("balance", flat=True).first()
    credited = User.objects.filter(pk=user.pk, balance__isnull=False).update(
        balance=F("balance") + amount
    )
    if not credited:
        raise NoPrepaidBalance(f"{user.username} has no prepaid balance; set one first.")
    _record_balance("credit", user, before)
    user.refresh_from_db(fields=["balance", "updated_at"])
    return user.balance


def create_api_token(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[APIToken, str]:
    """Validate and save a new management API token; return it with its clear text (shown once)."""
    token = APIToken(user=user, name=name, expires_at=expires_at)
    secret = token.new_token()
    token.full_clean()
    token.save()
    return token, secret


def revoke_api_token(*, token: APIToken) -> bool:
    """Revoke `token` from now on; return False if it was revoked already."""
    now = timezone.now()
    revoked = APIToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    token.refresh_from_db(fields=["revoked_at"])
    if revoked:
        # .update() sends no signal: the audit log hears of the revocation from here.
        audit.record("revoke", obj=token, changes={"revoked_at": [None, now]})
    return bool(revoked)


def authenticate_api_token(
    presented: str, *, address: str | None = None, now: datetime | None = None
) -> APIToken | None:
    """The usable token whose digest matches `presented`, or None; records its last use.

    Failures are throttled (accounts.throttling) per token prefix and per
    client `address`: raises throttling.LockedOut while either is locked out,
    even for a valid token, and when this failure locks one out. The last use
    is written at most once per LAST_USED_RESOLUTION, so a busy script does
    not turn every read into a write.
    """
    now = now or throttling.clock()
    attempt = throttling.Attempt.token(presented, address)
    throttling.check(attempt, now=now)
    token = (
        APIToken.objects.usable(at=now)
        .select_related("user")
        .filter(digest=token_digest(presented))
        .first()
    )
    if token is None:
        locked = throttling.failed(attempt, now=now)
        if locked is not None:
            raise locked
        return None
    stale = now - LAST_USED_RESOLUTION
    if token.last_used_at is None or token.last_used_at <= stale:
        APIToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token

"""Account changes reached from more than one place: admin, the management API, commands."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.db.models import F, Q
from django.utils import timezone

from accounts import throttling
from accounts.models import TOKEN_DISPLAY_LENGTH, APIToken, BudgetPeriod, User, looks_like_token
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


def create_user(
    *,
    username: str,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    organization: str = "",
    balance: Decimal | str | None = None,
    budget: Decimal | str | None = None,
    budget_soft: Decimal | str | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    password: str | None = None,
    is_active: bool = True,
    is_staff: bool = False,
) -> User:
    """Validate and save a new user; return it. Raises ValidationError, by field, for every fault.

    Checked: the model's own validation (`full_clean`, which also turns a
    balance given as text into a Decimal), `validate_balance`, and Django's
    password validators for a `password`. Without one the user has no usable
    password: consumers authenticate with API keys, staff set theirs later.
    Who may grant `is_staff` is the caller's question (accounts.permissions).
    """
    user = User(
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        organization=organization,
        balance=balance,
        budget=budget,
        budget_soft=budget_soft,
        budget_period=budget_period,
        is_active=is_active,
        is_staff=is_staff,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    errors = {}
    try:
        user.full_clean()
    except ValidationError as error:
        errors = error.error_dict
    if "balance" not in errors:  # a balance full_clean could not read is reported already
        try:
            validate_balance(user.balance)
        except ValidationError as error:
            errors["balance"] = error.error_list
    if password:
        try:
            password_validation.validate_password(password, user)
        except ValidationError as error:
            errors["password"] = error.error_list
    if errors:
        raise ValidationError(errors)
    user.save()
    return user


NEGATIVE_BALANCE = "A balance cannot be set below zero."


def validate_balance(new: Decimal | None, *, current: Decimal | None = None) -> None:
    """Raise ValidationError (code "negative_balance") if staff may not set the balance `new`.

    A balance falls below zero through usage and may stay there (`new` equal
    to `current`, the balance as it is or as the staff member was shown it);
    no one sets one below zero. Forms, serializers and commands call this (or
    a service that does) and show its message in their own shape.
    """
    if new is not None and new < 0 and new != current:
        raise ValidationError(NEGATIVE_BALANCE, code="negative_balance")


class NoPrepaidBalance(Exception):
    """The user is not on prepaid billing (balance is null): there is nothing to credit."""


def edit_balance(*, user: User, seen: Decimal | None, new: Decimal | None) -> None:
    """Apply a staff edit of `user`'s balance from `seen` (what they were shown) to `new`.

    Charges settle while a form is open; applying the difference (new - seen)
    in one atomic UPDATE keeps them. Turning prepaid billing on or off
    (None on either side) sets the value as given. Raises ValidationError
    (`validate_balance`) for a new balance below zero, writing nothing.
    Afterwards `user.balance` is the stored balance, and /v1 has heard of it.
    """
    validate_balance(new, current=seen)
    users = User.objects.filter(pk=user.pk)
    before = users.values_list("balance", flat=True).first()
    if seen is None or new is None:
        users.update(balance=new)
    else:
        users.update(balance=F("balance") + (new - seen))
    _record_balance("update", user, before)
    user.refresh_from_db(fields=["balance", "updated_at"])


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


class TokenNotFound(LookupError):
    """No token, or more than one, answers to a reference; the message says which."""


def find_api_token(reference: str) -> APIToken:
    """The token an operator means by `reference`: its id, its display prefix or the whole token.

    A whole token is looked up by digest, so it is never compared or echoed
    in clear; messages show at most a display prefix's length of `reference`.
    """
    reference = reference.strip().rstrip("…")
    tokens = APIToken.objects.select_related("user")
    if reference.isdigit():
        matches = tokens.filter(pk=int(reference))
    elif looks_like_token(reference):
        matches = tokens.with_secret(reference)
    else:
        matches = tokens.filter(prefix=reference)
    found = list(matches[:2])
    if not found:
        raise TokenNotFound(f"No API token matches {reference[:TOKEN_DISPLAY_LENGTH]!r}.")
    if len(found) > 1:
        raise TokenNotFound(f"Several API tokens have prefix {reference!r}; give the id.")
    return found[0]


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
    token = APIToken.objects.usable(at=now).select_related("user").with_secret(presented).first()
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

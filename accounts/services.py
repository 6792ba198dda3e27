"""Account changes reached from more than one place (admin now, the API later)."""

from decimal import Decimal

from django.db.models import F

from accounts.models import User


def edit_balance(*, user: User, seen: Decimal | None, new: Decimal | None) -> None:
    """Apply a staff edit of `user`'s balance from `seen` (what they were shown) to `new`.

    Charges settle while a form is open; applying the difference (new - seen)
    in one atomic UPDATE keeps them. Turning prepaid billing on or off
    (None on either side) sets the value as given.
    """
    users = User.objects.filter(pk=user.pk)
    if seen is None or new is None:
        users.update(balance=new)
    else:
        users.update(balance=F("balance") + (new - seen))

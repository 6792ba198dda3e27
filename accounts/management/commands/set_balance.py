"""Set a user's prepaid balance, top it up atomically, or turn prepaid billing off."""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts import services
from accounts.models import User
from aethergate.lib.commands import found

NONE = "none"


def amount(value: str, user: User) -> Decimal:
    """`value` as an amount of money, with the balance field's own validation."""
    try:
        parsed = User._meta.get_field("balance").clean(value, user)
    except ValidationError as error:
        raise CommandError(" ".join(error.messages)) from None
    if parsed is None:
        raise CommandError(f'"{value}" is not an amount.')
    return parsed


class Command(BaseCommand):
    help = (
        "Set USERNAME's prepaid balance to AMOUNT, or add to it with --add AMOUNT (negative "
        "takes credit away; one atomic UPDATE, so charges settling meanwhile are kept). "
        "AMOUNT 'none' turns prepaid enforcement off (cost is still tracked)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("amount", nargs="?", help="New balance, or 'none'.")
        parser.add_argument(
            "--add", metavar="AMOUNT", help="Add AMOUNT (may be negative) to the current balance."
        )

    def handle(self, *args, **options):
        if (options["amount"] is None) == (options["add"] is None):
            raise CommandError("Give either AMOUNT or --add AMOUNT.")
        user = found(services.find_user, options["username"])
        if options["add"] is not None:
            added = amount(options["add"], user)
            if not added:
                raise CommandError("--add needs a non-zero amount.")
            try:
                services.credit_balance(user=user, amount=added)
            except services.NoPrepaidBalance:
                raise CommandError(
                    f"{user.username} has no prepaid balance to add to; set one first: "
                    f"set_balance {user.username} AMOUNT"
                ) from None
        else:
            new = None
            if options["amount"].strip().lower() != NONE:
                new = amount(options["amount"], user)
                if new < 0:
                    raise CommandError("A balance cannot be set below zero.")
            services.edit_balance(user=user, seen=None, new=new)
            user.refresh_from_db(fields=["balance"])
        shown = (
            "none (no prepaid enforcement)"
            if user.balance is None
            else format(user.balance.normalize(), "f")
        )
        self.stdout.write(self.style.SUCCESS(f"{user.username}'s balance is now {shown}."))

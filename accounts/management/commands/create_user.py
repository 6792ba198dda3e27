"""Create a consumer (or staff) user from the command line."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts import services
from aethergate.lib.commands import describe


class Command(BaseCommand):
    help = (
        "Create a user. Consumers get no password (they authenticate with API keys: "
        "see create_key); --staff users set one with `manage.py changepassword`."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--organization", default="")
        parser.add_argument(
            "--balance",
            help="Prepaid credit, e.g. 25.00. Default: none (no prepaid enforcement).",
        )
        parser.add_argument(
            "--staff", action="store_true", help="May log in to the admin (once given a password)."
        )

    def handle(self, *args, **options):
        # Consumers never log in; staff choose their own password afterwards,
        # so no password is ever passed on a command line or printed.
        try:
            user = services.create_user(
                username=options["username"],
                email=options["email"],
                organization=options["organization"],
                balance=options["balance"],
                is_staff=options["staff"],
            )
        except ValidationError as error:
            raise CommandError(describe(error)) from None
        balance = "no prepaid balance" if user.balance is None else f"balance {user.balance}"
        self.stdout.write(self.style.SUCCESS(f"Created user {user.username} ({balance})."))
        if user.is_staff:
            self.stdout.write(
                f"Set their password with: python manage.py changepassword {user.username}\n"
                "and grant them permissions in the admin."
            )
        else:
            self.stdout.write(
                f"Issue a key with: python manage.py create_key --user {user.username} --name NAME"
            )

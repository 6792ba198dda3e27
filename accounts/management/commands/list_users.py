"""List users: contact, organization, balance, state and how many keys they hold."""

from django.core.management.base import BaseCommand
from django.db.models import Count
from django.utils import timezone

from accounts.models import User
from aethergate.lib.commands import table

HEADERS = ("username", "email", "organization", "balance", "active", "staff", "keys", "joined")


class Command(BaseCommand):
    help = "List users by username; a balance of '-' means no prepaid enforcement."

    def add_arguments(self, parser):
        parser.add_argument(
            "--inactive", action="store_true", help="Include deactivated users as well."
        )

    def handle(self, *args, **options):
        users = User.objects.annotate(keys=Count("api_keys")).order_by("username")
        if not options["inactive"]:
            users = users.filter(is_active=True)
        rows = [
            (
                user.username,
                user.email or "-",
                user.organization or "-",
                "-" if user.balance is None else format(user.balance.normalize(), "f"),
                "yes" if user.is_active else "no",
                "superuser" if user.is_superuser else "yes" if user.is_staff else "no",
                user.keys,
                timezone.localtime(user.date_joined).strftime("%Y-%m-%d"),
            )
            for user in users
        ]
        if not rows:
            self.stdout.write("No users." if options["inactive"] else "No active users.")
            return
        self.stdout.write(table(HEADERS, rows))

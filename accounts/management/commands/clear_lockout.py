"""Lift a failed-login lockout of an account, API token or client address."""

from django.core.management.base import BaseCommand, CommandError

from accounts import throttling
from accounts.models import Lockout
from aethergate.lib.commands import table


class Command(BaseCommand):
    help = (
        "Lift the lockout (and forget the failed logins) of a username, an API token "
        "prefix or a client address; --list shows the lockouts in force."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="", help="An admin login's username.")
        parser.add_argument("--token", default="", help="An API token's prefix (agt-XXXXXXXX).")
        parser.add_argument("--address", default="", help="A client address, e.g. 203.0.113.7.")
        parser.add_argument("--all", action="store_true", help="Every lockout.")
        parser.add_argument("--list", action="store_true", help="Only list the lockouts.")

    def handle(self, *args, **options):
        if options["list"]:
            now = throttling.clock()
            rows = [
                (lockout.key, lockout.failures, f"{lockout.until:%Y-%m-%d %H:%M:%S}")
                for lockout in Lockout.objects.filter(until__gt=now)
            ]
            self.stdout.write(table(("key", "failures", "until"), rows) if rows else "No lockouts.")
            return
        names = {k: options[k] for k in ("username", "token", "address")}
        if options["all"]:
            lifted = throttling.lift(Lockout.objects.all())
        elif any(names.values()):
            lifted = throttling.clear(
                username=names["username"], token_prefix=names["token"], address=names["address"]
            )
        else:
            raise CommandError("Give --username, --token, --address or --all (or --list).")
        noun = "lockout" if lifted == 1 else "lockouts"
        self.stdout.write(self.style.SUCCESS(f"Lifted {lifted} {noun}."))

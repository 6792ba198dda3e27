"""Revoke a staff API token, found by id, display prefix or the whole token."""

from django.core.management.base import BaseCommand

from accounts import services
from aethergate.lib.commands import found


class Command(BaseCommand):
    help = "Revoke a management API token, given its id, its display prefix or the token itself."

    def add_arguments(self, parser):
        parser.add_argument("token", help="Token id, prefix (agt-XXXXXXXX) or whole token.")

    def handle(self, *args, **options):
        token = found(services.find_api_token, options["token"])
        if services.revoke_api_token(token=token):
            self.stdout.write(
                self.style.SUCCESS(
                    f"Revoked API token {token.prefix}… ({token.name}) of {token.user.username}."
                )
            )
        else:
            self.stdout.write(f"API token {token.prefix}… ({token.name}) was already revoked.")

"""Revoke a staff API token, found by id, display prefix or the whole token."""

from django.core.management.base import BaseCommand, CommandError

from accounts import services
from accounts.models import TOKEN_DISPLAY_LENGTH, TOKEN_PREFIX, APIToken, token_digest


class Command(BaseCommand):
    help = "Revoke a management API token, given its id, its display prefix or the token itself."

    def add_arguments(self, parser):
        parser.add_argument("token", help="Token id, prefix (agt-XXXXXXXX) or whole token.")

    def handle(self, *args, **options):
        token = self.find(options["token"].strip().rstrip("…"))
        if services.revoke_api_token(token=token):
            self.stdout.write(
                self.style.SUCCESS(
                    f"Revoked API token {token.prefix}… ({token.name}) of {token.user.username}."
                )
            )
        else:
            self.stdout.write(f"API token {token.prefix}… ({token.name}) was already revoked.")

    def find(self, reference: str) -> APIToken:
        tokens = APIToken.objects.select_related("user")
        if reference.isdigit():
            matches = tokens.filter(pk=int(reference))
        elif reference.startswith(TOKEN_PREFIX) and len(reference) > TOKEN_DISPLAY_LENGTH:
            matches = tokens.filter(digest=token_digest(reference))
        else:
            matches = tokens.filter(prefix=reference)
        found = list(matches[:2])
        if not found:
            raise CommandError(f"No API token matches {reference[:TOKEN_DISPLAY_LENGTH]!r}.")
        if len(found) > 1:
            raise CommandError(f"Several API tokens have prefix {reference!r}; give the id.")
        return found[0]

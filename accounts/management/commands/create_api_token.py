"""Issue a staff API token for the management API; the token is printed once."""

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts import services
from aethergate.lib.commands import found


class Command(BaseCommand):
    help = (
        "Issue a management API token to a staff user. The token alone is printed to "
        "stdout (e.g. TOKEN=$(manage.py create_api_token …)); it is shown only now."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="Username of an active staff user.")
        parser.add_argument("--name", required=True, help="What will use it, e.g. CI.")
        parser.add_argument(
            "--expires-in-days", type=int, help="Days until it expires (default: never)."
        )

    def handle(self, *args, **options):
        user = found(services.find_user, options["user"])
        days = options["expires_in_days"]
        if days is not None and days < 1:
            raise CommandError("--expires-in-days must be at least 1.")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        try:
            token, secret = services.create_api_token(
                user=user, name=options["name"], expires_at=expires_at
            )
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        self.stdout.write(secret)
        self.stderr.write(
            self.style.SUCCESS(
                f"Issued API token {token.prefix}… ({token.name}) to {user.username}. "
                "Copy it now: it is not stored and will not be shown again."
            )
        )

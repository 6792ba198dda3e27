"""Replace a consumer key's secret and print the new one, once."""

from django.core.management.base import BaseCommand, CommandError

from keys import services


class Command(BaseCommand):
    help = (
        "Give an API key a new secret (same id, owner, limits and history) and print it "
        "once. The old secret stops working immediately."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "key", help="The key's id or display prefix (see list_keys), or the whole key."
        )

    def handle(self, *args, **options):
        try:
            key = services.find_key(options["key"])
        except services.KeyNotFound as error:
            raise CommandError(str(error)) from None
        old_prefix = key.prefix
        secret = services.rotate_key(key=key)
        self.stdout.write(
            self.style.SUCCESS(
                f'Rotated API key {key.pk} "{key.name}" of {key.owner.username}: '
                f"{old_prefix}… no longer works, its new prefix is {key.prefix}…"
            )
        )
        self.stdout.write(
            "New secret (shown only now; store it safely, it cannot be shown again):\n" + secret
        )

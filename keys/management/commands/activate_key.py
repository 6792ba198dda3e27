"""Let a deactivated API key authenticate again."""

from django.core.management.base import BaseCommand, CommandError

from keys import services


class Command(BaseCommand):
    help = "Let a deactivated API key authenticate again."

    def add_arguments(self, parser):
        parser.add_argument(
            "key", help="The key's id or display prefix (see list_keys), or the whole key."
        )

    def handle(self, *args, **options):
        try:
            key = services.find_key(options["key"])
        except services.KeyNotFound as error:
            raise CommandError(str(error)) from None
        label = f'API key {key.pk} ({key.prefix}…) "{key.name}" of {key.owner.username}'
        if services.set_active(key=key, active=True):
            self.stdout.write(self.style.SUCCESS(f"Activated {label}."))
        else:
            self.stdout.write(f"{label} is active already; nothing to do.")

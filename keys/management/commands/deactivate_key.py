"""Stop an API key from authenticating (reversible with activate_key)."""

from django.core.management.base import BaseCommand, CommandError

from keys import services


class Command(BaseCommand):
    help = "Stop an API key from authenticating (reversible with activate_key)."

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
        if services.set_active(key=key, active=False):
            self.stdout.write(self.style.SUCCESS(f"Deactivated {label}."))
        else:
            self.stdout.write(f"{label} is inactive already; nothing to do.")

"""Replace a consumer key's secret and print the new one, once."""

from keys import services
from keys.management.base import KeyCommand


class Command(KeyCommand):
    help = (
        "Give an API key a new secret (same id, owner, limits and history) and print it "
        "once. The old secret stops working immediately."
    )

    def handle_object(self, key) -> None:
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

"""Let a deactivated user's API keys work again."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User


class Command(BaseCommand):
    help = "Let a deactivated user's API keys work again."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, **options):
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f'There is no user "{options["username"]}" (see list_users).')
        if user.is_active:
            self.stdout.write(f"{user.username} is active already; nothing to do.")
            return
        user.is_active = True
        # Saved, not .update()d: post_save reaches the proxy's key cache.
        user.save(update_fields=["is_active", "updated_at"])
        self.stdout.write(self.style.SUCCESS(f"Activated {user.username}."))

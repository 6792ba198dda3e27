"""Stop all of a user's API keys from working (reversible with activate_user)."""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User


class Command(BaseCommand):
    help = "Stop all of a user's API keys from working (reversible with activate_user)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, **options):
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f'There is no user "{options["username"]}" (see list_users).')
        if not user.is_active:
            self.stdout.write(f"{user.username} is inactive already; nothing to do.")
            return
        user.is_active = False
        # Saved, not .update()d: post_save reaches the proxy's key cache.
        user.save(update_fields=["is_active", "updated_at"])
        self.stdout.write(self.style.SUCCESS(f"Deactivated {user.username}."))

"""Create the first superuser if there is none (used by `make run` and deployments)."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create a superuser when none exists, from AETHERGATE_ADMIN_USERNAME, "
        "AETHERGATE_ADMIN_EMAIL and AETHERGATE_ADMIN_PASSWORD; with no password "
        "set, one is generated and printed once."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        admins = list(
            User.objects.filter(is_superuser=True).order_by("pk").values_list("username", flat=True)
        )
        if admins:
            name = admins[0]
            self.stdout.write(
                f"An admin account exists already ({', '.join(admins)}); nothing to do.\n"
                f"Lost its password? Set a new one with: python manage.py changepassword {name}"
            )
            return
        username = settings.AETHERGATE_ADMIN_USERNAME
        password = settings.AETHERGATE_ADMIN_PASSWORD
        generated = not password
        if generated:
            password = secrets.token_urlsafe(18)
        User.objects.create_superuser(
            username=username, email=settings.AETHERGATE_ADMIN_EMAIL, password=password
        )
        if generated:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created admin account '{username}' with password: {password}\n"
                    "It is shown only now; change it in the admin after logging in."
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Created admin account '{username}' (password from env).")
            )

"""Export users, endpoints, models and API keys as an AetherGate backup (JSON)."""

from django.core.management.base import BaseCommand, CommandError

from aethergate import backup
from aethergate.backup import service

SECRETS_WARNING = (
    "This backup holds upstream credentials in clear and password hashes: keep it "
    "private (it is as sensitive as the credentials themselves)."
)


class Command(BaseCommand):
    help = (
        "Write a backup of users, endpoints, models and API keys (not request logs) to "
        "stdout, or to --output FILE created with mode 0600. Upstream credentials and "
        "password hashes are left out unless --include-secrets."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", "-o", metavar="FILE", help="Write here instead of stdout.")
        parser.add_argument("--force", action="store_true", help="Replace FILE if it exists.")
        parser.add_argument(
            "--include-secrets",
            action="store_true",
            help="Also export upstream credentials (in clear) and password hashes.",
        )

    def handle(self, *args, **options):
        include_secrets = options["include_secrets"]
        try:
            document, text = service.export_text(include_secrets=include_secrets)
        except backup.BackupError as error:
            raise CommandError(str(error)) from None
        output = options["output"]
        if output in (None, "-"):
            self.stdout.write(text, ending="")
            if include_secrets:
                self.stderr.write(SECRETS_WARNING)
            return
        try:
            backup.write_private_file(output, text, overwrite=options["force"])
        except FileExistsError:
            raise CommandError(f"{output} exists; pass --force to replace it.") from None
        except OSError as error:
            raise CommandError(f"Cannot write {output}: {error.strerror}.") from None
        counts = ", ".join(f"{len(document[kind])} {backup.LABELS[kind]}" for kind in backup.KINDS)
        self.stdout.write(self.style.SUCCESS(f"Wrote {output} (mode 0600): {counts}."))
        if include_secrets:
            self.stdout.write(self.style.WARNING(SECRETS_WARNING))

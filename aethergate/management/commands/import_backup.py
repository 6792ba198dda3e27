"""Import an AetherGate backup or the earlier version's backup, all or nothing."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from aethergate import backup


class Command(BaseCommand):
    help = (
        "Import FILE ('-' for stdin): an AetherGate export or the earlier FastAPI version's "
        "backup. Rows are matched by username, endpoint name, model name and key digest; "
        "a bad row rejects the whole file. Importing the same file again changes nothing."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", help="The backup JSON file, or - to read stdin.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check and report what would change, then roll everything back.",
        )

    def handle(self, *args, **options):
        path = options["file"]
        try:
            if path == "-":
                text = options.get("stdin", sys.stdin).read()
            else:
                text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise CommandError(f"No such file: {path}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"Cannot read {path}: {error}") from None
        try:
            report = backup.import_backup(backup.loads(text), dry_run=options["dry_run"])
        except backup.BackupError as error:
            raise CommandError(f"Nothing was imported. {error}") from None

        if report.dry_run:
            self.stdout.write(f"Dry run of an {report.source}: nothing was saved. It would have:")
        else:
            self.stdout.write(self.style.SUCCESS(f"Imported an {report.source}:"))
        width = max(len(label) for label in backup.LABELS.values())
        for kind in ("endpoints", "models", "users", "api_keys"):
            tally = report.tallies[kind]
            self.stdout.write(
                f"  {backup.LABELS[kind].ljust(width)}  {tally.created} created, "
                f"{tally.updated} updated, {tally.unchanged} unchanged"
            )
        if report.warnings:
            self.stdout.write(self.style.WARNING(f"Warnings ({len(report.warnings)}):"))
            for warning in report.warnings:
                self.stdout.write(f"  - {warning}")

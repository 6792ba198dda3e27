"""Import an AetherGate backup or the earlier version's backup, all or nothing."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from aethergate import backup
from aethergate.backup import service


class Command(BaseCommand):
    help = (
        "Import FILE ('-' for stdin): an AetherGate export or the earlier FastAPI version's "
        "backup. Rows are matched by username, endpoint name, model name and key digest; "
        "a bad row rejects the whole file. Importing the same file again changes nothing. "
        "Staff and superuser flags and password hashes are imported only with "
        "--grant-privileges."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", help="The backup JSON file, or - to read stdin.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check and report what would change, then roll everything back.",
        )
        parser.add_argument(
            "--grant-privileges",
            action="store_true",
            help="Also import users' staff and superuser flags and password hashes, and "
            "list every one granted. Without it, new users get none and existing users "
            "keep theirs.",
        )

    def handle(self, *args, **options):
        path = options["file"]
        limit = backup.max_bytes()
        try:
            if path == "-":
                text = options.get("stdin", sys.stdin).read(limit + 1)
            else:
                if Path(path).stat().st_size > limit:
                    raise CommandError(
                        f"Nothing was imported. {path} is larger than {limit} bytes."
                    )
                text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise CommandError(f"No such file: {path}") from None
        except UnicodeDecodeError:
            raise CommandError(f"Cannot read {path}: not UTF-8 text.") from None
        except OSError as error:
            raise CommandError(f"Cannot read {path}: {error.strerror or error}") from None
        try:
            report = service.import_text(
                text,
                dry_run=options["dry_run"],
                grant_privileges=options["grant_privileges"],
            )
        except backup.BackupError as error:
            raise CommandError(f"Nothing was imported. {error}") from None

        if report.dry_run:
            self.stdout.write(f"Dry run of an {report.source}: nothing was saved. It would have:")
        else:
            self.stdout.write(self.style.SUCCESS(f"Imported an {report.source}:"))
        width = max(len(label) for label in backup.LABELS.values())
        for kind in service.ORDER:
            tally = report.tallies[kind]
            self.stdout.write(
                f"  {backup.LABELS[kind].ljust(width)}  {tally.created} created, "
                f"{tally.updated} updated, {tally.unchanged} unchanged"
            )
        if report.granted:
            verb = "would grant" if report.dry_run else "granted"
            self.stdout.write(self.style.WARNING(f"Privileges {verb} ({len(report.granted)}):"))
            for grant in report.granted:
                self.stdout.write(f"  - {grant}")
        if report.warnings:
            self.stdout.write(self.style.WARNING(f"Warnings ({len(report.warnings)}):"))
            for warning in report.warnings:
                self.stdout.write(f"  - {warning}")

"""The base of the commands that delete old rows a batch at a time (prune_logs, prune_audit)."""

from django.core.management.base import BaseCommand, CommandError

from logs.services import PRUNE_BATCH_SIZE


class PruneCommand(BaseCommand):
    """Adds --batch-size and --dry-run; subclasses add the cutoff and call `prune()`.

    `noun` and `nouns` name the rows in the report ("request log", "request logs").
    """

    noun: str
    nouns: str

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=PRUNE_BATCH_SIZE,
            metavar="N",
            help=f"Rows deleted per statement (default {PRUNE_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def prune(self, service, options, *, which: str, **cutoff) -> None:
        """Run `service(**cutoff, ...)` with the batch options; report `which` rows went."""
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")

        def progress(deleted):
            if options["verbosity"] >= 2:
                self.stdout.write(f"  {deleted} deleted so far…")

        count = service(
            **cutoff,
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            progress=progress,
        )
        noun = self.noun if count == 1 else self.nouns
        if options["dry_run"]:
            self.stdout.write(f"Would delete {count} {noun} {which} (dry run).")
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {count} {noun} {which}."))

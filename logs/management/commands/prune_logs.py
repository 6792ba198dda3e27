"""Delete old request logs in batches, so the table stops growing without bound."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from logs.services import PRUNE_BATCH_SIZE, prune_logs


class Command(BaseCommand):
    help = (
        "Delete request logs older than --older-than DAYS, a batch at a time (short "
        "transactions: the gateway keeps writing meanwhile). Schedule it, e.g. daily from cron."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", type=int, required=True, metavar="DAYS", help="At least 1."
        )
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

    def handle(self, *args, **options):
        days, batch_size = options["older_than"], options["batch_size"]
        if days < 1:
            raise CommandError("--older-than must be at least 1 day.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def progress(deleted):
            if options["verbosity"] >= 2:
                self.stdout.write(f"  {deleted} deleted so far…")

        count = prune_logs(
            older_than=timedelta(days=days),
            batch_size=batch_size,
            dry_run=options["dry_run"],
            progress=progress,
        )
        noun = "request log" if count == 1 else "request logs"
        if options["dry_run"]:
            self.stdout.write(f"Would delete {count} {noun} older than {days} days (dry run).")
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {count} {noun} older than {days} days."))

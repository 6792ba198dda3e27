"""Delete old request logs in batches, so the table stops growing without bound."""

from datetime import timedelta

from django.core.management.base import CommandError

from logs.management.base import PruneCommand
from logs.services import prune_logs


class Command(PruneCommand):
    help = (
        "Delete request logs older than --older-than DAYS, a batch at a time (short "
        "transactions: the gateway keeps writing meanwhile). Schedule it, e.g. daily from cron."
    )
    noun, nouns = "request log", "request logs"

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", type=int, required=True, metavar="DAYS", help="At least 1."
        )
        super().add_arguments(parser)

    def handle(self, *args, **options):
        days = options["older_than"]
        if days < 1:
            raise CommandError("--older-than must be at least 1 day.")
        self.prune(
            prune_logs, options, which=f"older than {days} days", older_than=timedelta(days=days)
        )

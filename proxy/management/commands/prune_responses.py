"""Delete stored responses past their retention in batches (AETHERGATE_RESPONSES_RETENTION_DAYS)."""

from django.conf import settings
from django.core.management.base import CommandError

from logs.management.base import PruneCommand
from proxy.stored import prune


class Command(PruneCommand):
    help = (
        "Delete stored /v1/responses answers older than --days DAYS (default "
        "AETHERGATE_RESPONSES_RETENTION_DAYS; 0 keeps them forever), a batch at a time. "
        "Schedule it, e.g. daily from cron, as prune_logs."
    )
    noun, nouns = "stored response", "stored responses"

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=int,
            metavar="DAYS",
            help="Retention in days (default: AETHERGATE_RESPONSES_RETENTION_DAYS); 0: forever.",
        )
        super().add_arguments(parser)

    def handle(self, *args, **options):
        days = options["days"]
        if days is None:
            days = settings.AETHERGATE_RESPONSES_RETENTION_DAYS
        if days < 0:
            raise CommandError("--days must be 0 (keep forever) or more.")
        if days == 0:
            self.stdout.write("Stored responses are kept forever (retention 0): none deleted.")
            return
        self.prune(prune, options, which=f"older than {days} days", days=days)

"""Delete old audit entries in batches; the audit log is otherwise kept forever."""

import datetime as dt
from datetime import timedelta

from django.core.management.base import CommandError
from django.utils import timezone

from logs.management.base import PruneCommand
from logs.services import prune_audit


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f'"{value}" is not a date (YYYY-MM-DD).') from None


class Command(PruneCommand):
    help = (
        "Delete audit entries recorded before --before DATE (YYYY-MM-DD, midnight in "
        "AETHERGATE_TIME_ZONE) or older than --older-than DAYS. Nothing else deletes them; "
        "the pruning itself is recorded in the audit log."
    )
    noun, nouns = "audit entry", "audit entries"

    def add_arguments(self, parser):
        cutoff = parser.add_mutually_exclusive_group(required=True)
        cutoff.add_argument("--before", metavar="DATE", help="Delete entries before this date.")
        cutoff.add_argument("--older-than", type=int, metavar="DAYS", help="At least 1.")
        super().add_arguments(parser)

    def handle(self, *args, **options):
        if options["before"] is not None:
            day = _date(options["before"])
            before = timezone.make_aware(dt.datetime.combine(day, dt.time()))
            which = f"recorded before {day.isoformat()}"
        else:
            days = options["older_than"]
            if days < 1:
                raise CommandError("--older-than must be at least 1 day.")
            before = timezone.now() - timedelta(days=days)
            which = f"older than {days} days"
        self.prune(prune_audit, options, which=which, before=before)

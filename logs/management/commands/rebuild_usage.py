"""Recompute the usage rollups (the dashboard's source) from the request logs still stored."""

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from logs.services import rebuild_usage


class Command(BaseCommand):
    help = (
        "Rebuild the hourly usage rollups from the request logs, for the hours from --since to "
        "--until (ISO 8601; all hours when left out). Hours whose logs were pruned keep their "
        "rollups. The log writer keeps rollups current by itself: this is for rows stored by "
        "other means (a bulk import), or a check. Run it while no gateway writes into those hours."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", type=_when, help="From this time (ISO 8601).")
        parser.add_argument("--until", type=_when, help="Before this time (ISO 8601).")

    def handle(self, *args, **options):
        written = rebuild_usage(since=options["since"], until=options["until"])
        self.stdout.write(self.style.SUCCESS(f"Rebuilt {written} usage rollup rows."))


def _when(text: str):
    when = parse_datetime(text)
    if when is None or when.tzinfo is None:
        raise CommandError(f"{text!r} is not an ISO 8601 time with a zone (2026-12-01T00:00Z).")
    return when

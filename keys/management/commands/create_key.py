"""Issue a consumer API key and print its secret, once."""

from datetime import datetime, time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts.models import BudgetPeriod
from accounts.services import find_user
from aethergate.lib.commands import describe, found
from keys import services
from keys.models import APIKey


def split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_expiry(value: str):
    """An ISO date or datetime; a date means its midnight, naive values the server's zone."""
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime.combine(day, time.min)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(
            f'--expires "{value}" is not an ISO date or datetime (e.g. 2026-01-31 or '
            "2026-01-31T18:00:00+00:00)."
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    if moment <= timezone.now():
        raise CommandError(f"--expires {moment.isoformat()} is in the past.")
    return moment


class Command(BaseCommand):
    help = (
        "Issue an API key for a user and print its secret. The secret is shown only "
        "now: AetherGate stores its SHA-256 digest, never the key itself."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="Username of the key's owner.")
        parser.add_argument("--name", required=True, help='What the key is for, e.g. "ci".')
        parser.add_argument(
            "--rate-limit",
            default="",
            help='Requests or tokens (input + output) per window, e.g. "60/m" or '
            '"60/m,1000/d,100000tok/m". Default: none.',
        )
        parser.add_argument(
            "--max-concurrent",
            help="Requests in flight at once, across every gateway process. Default: unlimited.",
        )
        parser.add_argument(
            "--budget", help="Spend allowed per period, refused beyond (402). Default: none."
        )
        parser.add_argument(
            "--budget-soft",
            help="Spend per period that sends one alert, at most --budget. Default: none.",
        )
        parser.add_argument(
            "--budget-period",
            choices=BudgetPeriod.values,
            default=BudgetPeriod.MONTH,
            help="When the budget starts again (none: one total). Default: month.",
        )
        parser.add_argument(
            "--capabilities",
            help="Comma-separated, e.g. TEXT,EMBEDDING. Default: every capability.",
        )
        parser.add_argument(
            "--models", help="Comma-separated public model names. Default: every model."
        )
        parser.add_argument(
            "--log-content",
            action="store_true",
            help="Record prompt and completion text of this key's requests.",
        )
        parser.add_argument("--expires", help="ISO date or datetime. Default: never.")

    def handle(self, *args, **options):
        owner = found(find_user, options["user"])
        names = split(options["models"])
        models = list(APIKey.model_choices().filter(name__in=names))
        unknown = sorted(set(names) - {m.name for m in models})
        if unknown:
            raise CommandError(f"Unknown model(s): {', '.join(unknown)}.")
        fields = {
            "rate_limit": options["rate_limit"].strip(),
            "allowed_capabilities": [c.upper() for c in split(options["capabilities"])],
            "allowed_models": models,
            "log_content": options["log_content"],
            "budget_period": options["budget_period"],
            # As typed: the model's validation reads them, and names a bad one.
            **{
                name: options[name].strip()
                for name in ("max_concurrent", "budget", "budget_soft")
                if options[name] is not None
            },
        }
        if options["expires"]:
            fields["expires_at"] = parse_expiry(options["expires"])
        try:
            key, secret = services.create_key(owner=owner, name=options["name"], **fields)
        except ValidationError as error:
            raise CommandError(describe(error)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f'Created API key {key.pk} ({key.prefix}…) "{key.name}" for {owner.username}.'
            )
        )
        self.stdout.write(
            "Secret (shown only now; store it safely, it cannot be shown again):\n" + secret
        )

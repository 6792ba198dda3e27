"""List consumer API keys: prefix, owner, state and limits (never a secret or digest)."""

from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.models import BudgetPeriod
from accounts.services import find_user
from aethergate.lib.commands import found, table
from aethergate.lib.money import format_money
from keys.models import APIKey

HEADERS = (
    "id",
    "prefix",
    "name",
    "owner",
    "state",
    "rate limit",
    "concurrent",
    "budget",
    "expires",
    "last used",
)


def when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


def budget(key) -> str:
    """The key's hard budget per period ("$25.00/week", "$25.00 total"), or "-"."""
    if key.budget is None:
        return "-"
    if key.budget_period == BudgetPeriod.NONE:
        return f"{format_money(key.budget)} total"
    return f"{format_money(key.budget)}/{key.budget_period}"


class Command(BaseCommand):
    help = "List API keys (active ones unless --inactive), newest first."

    def add_arguments(self, parser):
        parser.add_argument("--user", help="Only this user's keys.")
        parser.add_argument(
            "--inactive", action="store_true", help="Include deactivated keys as well."
        )

    def handle(self, *args, **options):
        now = timezone.now()
        keys = APIKey.objects.select_related("owner").order_by("-created_at", "-pk")
        if options["user"]:
            found(find_user, options["user"])
            keys = keys.filter(owner__username=options["user"])
        if not options["inactive"]:
            keys = keys.filter(is_active=True)
        rows = [
            (
                key.pk,
                f"{key.prefix}…",
                key.name,
                key.owner.username,
                key.state(now=now),
                key.rate_limit or "-",
                key.max_concurrent or "-",
                budget(key),
                when(key.expires_at),
                when(key.last_used_at),
            )
            for key in keys
        ]
        if not rows:
            self.stdout.write("No API keys." if options["inactive"] else "No active API keys.")
            return
        self.stdout.write(table(HEADERS, rows))

"""Price the model catalog from a pinned price file, keeping the prices staff set by hand."""

from django.core.management.base import BaseCommand, CommandError

from models_registry import prices

LABELS = {
    prices.UPDATE: "updated",
    prices.UNCHANGED: "unchanged",
    prices.KEPT: "kept",
    prices.SKIPPED: "skipped",
}


class Command(BaseCommand):
    help = (
        "Set the prices of the models FILE names (an aethergate-prices JSON file: prices per "
        "1M tokens, or per image, minute or request), matched by public name or by a "
        "deployment's upstream name. Prices staff changed by hand since the last import, or "
        "set without one, are kept (--force replaces them). --overrides FILE is applied on "
        "top of FILE, entry by entry, every time. All or nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The price file (format aethergate-prices, version 1).")
        parser.add_argument(
            "--overrides",
            metavar="FILE",
            help="A price file of the operator's own prices, which win over FILE's.",
        )
        parser.add_argument(
            "--currency",
            default="USD",
            help="The currency balances are kept in; a file in another is refused (USD).",
        )
        parser.add_argument("--force", action="store_true", help="Replace prices set by hand too.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Print what would change; save nothing."
        )

    def handle(self, *args, **options):
        try:
            catalogue = prices.read(options["file"], currency=options["currency"])
            overrides = options["overrides"] and prices.read(
                options["overrides"], currency=options["currency"]
            )
        except prices.PriceFileError as error:
            raise CommandError(f"Nothing was imported. {error}") from None
        report = prices.import_prices(
            catalogue, overrides=overrides or None, force=options["force"],
            dry_run=options["dry_run"],
        )  # fmt: skip
        if report.dry_run:
            self.stdout.write("Dry run: nothing was saved. It would have:")
        else:
            self.stdout.write(self.style.SUCCESS("Imported prices:"))
        for change in report.changes:
            self.stdout.write(f"  {LABELS[change.action]:<9}  {describe(change)}")
        totals = ", ".join(f"{report.count(a)} {label}" for a, label in LABELS.items())
        self.stdout.write(f"Models: {totals}.")
        if report.unmatched:
            self.stdout.write(
                f"In the file but in no model's name or deployment ({len(report.unmatched)}): "
                + ", ".join(report.unmatched)
            )


def describe(change: prices.Change) -> str:
    """One model's line: its name, what it matched, its prices before and after or why not."""
    model = change.model
    matched = "" if change.key == model.name else f" (deployment {change.key})"
    unit = model.billing_unit
    text = prices.shown(change.old, unit)
    if change.action == prices.UPDATE:
        text = f"{text} -> {prices.shown(change.new, unit)}"
    elif change.action == prices.KEPT:
        text = f"{text}; the file has {prices.shown(change.new, unit)}"
    return f"{model.name}{matched}: {text}" + (f" ({change.reason})" if change.reason else "")

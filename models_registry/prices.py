"""Price files: a pinned JSON catalogue of vendors' prices, imported into the model catalog
(`import_prices`) without overwriting prices staff set by hand.

The format (README "Prices and cached tokens"):

    {"format": "aethergate-prices", "version": 1, "currency": "USD",
     "source": "…", "taken": "2026-12-01",
     "models": {"<public model name or deployment upstream name>":
                {"unit": "TOKEN", "input": "3", "output": "15",
                 "cache_read": "0.30", "cache_write": "3.75", "source": "…"}}}

Prices are per 1M tokens for TOKEN (as vendors publish them) and per image, minute or
request for the other units (`BillingUnit.price_basis`); numbers or decimal strings,
stored exactly per single unit (`money.price_to_store`) or refused.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from aethergate.lib.money import InexactPrice, plain_amount, price_to_show, price_to_store
from models_registry.models import BillingUnit, Deployment, Model, PriceImport
from models_registry.services import save_model

FORMAT = "aethergate-prices"
VERSION = 1
MAX_FILE_BYTES = 5 * 1024 * 1024
TOP_KEYS = {"format", "version", "currency", "source", "taken", "models"}
# An entry's prices, by the Model field each sets.
PRICE_KEYS = {
    "input": "price_in",
    "output": "price_out",
    "cache_read": "price_cache_read",
    "cache_write": "price_cache_write",
}
ENTRY_KEYS = {*PRICE_KEYS, "unit", "source"}
# The prices each unit charges (proxy.usage.cost), which its entries must give.
REQUIRED = {
    BillingUnit.TOKEN: ("input", "output"),
    BillingUnit.IMAGE: ("output",),
    BillingUnit.MINUTE: ("input",),
    BillingUnit.REQUEST: ("input",),
}
# A per-unit price the MONEY column holds (10 digits before the point).
PRICE_LIMIT = Decimal(10) ** 10


class PriceFileError(ValueError):
    """A price file refused as a whole; the message names the entry and the reason."""


@dataclass(frozen=True)
class Prices:
    """A model's four prices per single unit, as stored; a cache price None is the input
    price."""

    price_in: Decimal = Decimal(0)
    price_out: Decimal = Decimal(0)
    price_cache_read: Decimal | None = None
    price_cache_write: Decimal | None = None

    FIELDS = tuple(PRICE_KEYS.values())

    @classmethod
    def of(cls, row) -> "Prices":
        """The prices a Model or a PriceImport holds."""
        return cls(*(getattr(row, name) for name in cls.FIELDS))

    def values(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


# What a model nobody priced has: `import_prices` may price it without asking.
UNPRICED = Prices()


@dataclass(frozen=True)
class Entry:
    """One model's prices in a price file: its billing unit, prices and where they are from."""

    unit: str
    prices: Prices
    source: str = ""


@dataclass(frozen=True)
class PriceFile:
    currency: str
    source: str
    entries: dict[str, Entry]


def read(path: str | Path, *, currency: str) -> PriceFile:
    """The price file at `path`, in `currency`; PriceFileError (never another exception)
    for a file that cannot be read or is not one."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PriceFileError(f"No such file: {path}") from None
    except OSError as error:
        raise PriceFileError(f"Cannot read {path}: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PriceFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PriceFileError(f"Cannot read {path}: not UTF-8 text.") from None
    return parse(text, currency=currency, name=str(path))


def parse(text: str, *, currency: str, name: str = "the price file") -> PriceFile:
    """The price file `text` (called `name` in messages); PriceFileError if it is not one,
    is in another currency than `currency`, or has an entry it cannot store exactly."""
    try:
        # Decimals, not floats: 0.3 must be 0.3, as the vendor wrote it.
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as error:
        raise PriceFileError(f"{name} is not JSON: {error.msg} (line {error.lineno}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PriceFileError(f'{name} is not a price file: its "format" must be "{FORMAT}".')
    version = data.get("version")
    if not isinstance(version, Decimal) or version != VERSION:
        raise PriceFileError(f"{name} has version {version}; this command reads {VERSION}.")
    unknown = sorted(data.keys() - TOP_KEYS)
    if unknown:
        raise PriceFileError(f"{name} has unknown keys: {', '.join(unknown)}.")
    if data.get("currency") != currency:
        raise PriceFileError(
            f"{name} prices in {data.get('currency')!r}, and balances here are in "
            f"{currency!r} (--currency): nothing was converted."
        )
    models = data.get("models")
    if not isinstance(models, dict):
        raise PriceFileError(f'{name} has no "models" object.')
    entries = {}
    for key, entry in models.items():
        if not key.strip():
            raise PriceFileError(f"{name}: a model with an empty name.")
        try:
            entries[key] = _entry(entry)
        except PriceFileError as error:
            raise PriceFileError(f'{name}, model "{key}": {error}') from None
    return PriceFile(currency=currency, source=_text(data.get("source")), entries=entries)


def _entry(entry) -> Entry:
    if not isinstance(entry, dict):
        raise PriceFileError("not an object.")
    unknown = sorted(entry.keys() - ENTRY_KEYS)
    if unknown:
        raise PriceFileError(f"unknown keys: {', '.join(unknown)}.")
    unit = entry.get("unit", BillingUnit.TOKEN)
    if unit not in BillingUnit.values:
        raise PriceFileError(f"unit {unit!r} is not one of {', '.join(BillingUnit.values)}.")
    unit = BillingUnit(unit)
    missing = [key for key in REQUIRED[unit] if entry.get(key) is None]
    if missing:
        raise PriceFileError(f"no {' or '.join(missing)} price, which a {unit.label} model needs.")
    per, what = unit.price_basis
    prices = {
        PRICE_KEYS[key]: _stored(entry[key], per=per, what=what)
        for key in PRICE_KEYS
        if entry.get(key) is not None
    }
    return Entry(unit=unit, prices=Prices(**prices), source=_text(entry.get("source")))


def _stored(value, *, per: int, what: str) -> Decimal:
    """A file's price for `per` units as the stored per-unit price."""
    if isinstance(value, bool) or not isinstance(value, Decimal | str):
        raise PriceFileError(f"{value!r} is not a price.")
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise PriceFileError(f"{value!r} is not a price.") from None
    if not price.is_finite() or price < 0:
        raise PriceFileError(f"{value} is not a price (negative or not a number).")
    if price >= PRICE_LIMIT * per:
        raise PriceFileError(f"{value} per {what} is more than a price column holds.")
    try:
        return price_to_store(price, per=per, what=what)
    except InexactPrice as error:
        raise PriceFileError(f"{value}: {error}") from None


def _text(value) -> str:
    return value[:200] if isinstance(value, str) else ""


# ------------------------------------------------------------------------------ the import

UPDATE, UNCHANGED, KEPT, SKIPPED = "update", "unchanged", "kept", "skipped"
OVERRIDDEN = "operator overrides"  # the source of an override entry that names none


@dataclass
class Change:
    """What an import does to one model: `action` (UPDATE, UNCHANGED, KEPT or SKIPPED) of
    `old` to `new`, the file's key it matched by (its name, or a deployment's upstream
    name), and why, for a model it leaves alone."""

    model: Model
    key: str
    action: str
    old: Prices
    new: Prices | None = None
    reason: str = ""


@dataclass
class ImportReport:
    changes: list[Change] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # the file's keys no model has
    dry_run: bool = False

    def count(self, action: str) -> int:
        return sum(1 for change in self.changes if change.action == action)


def import_prices(
    prices: PriceFile,
    *,
    overrides: PriceFile | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Price the catalog's models from `prices`, with `overrides` (the operator's own file)
    on top, entry by entry; report what was (or, with `dry_run`, would be) done.

    A model matches the entry of its public name, else of its deployments' upstream
    names (all of those in the file must agree). Its entry must be in its billing unit.
    Its prices are replaced only when nobody set them by hand: when they are still what
    the last import wrote (`PriceImport`), or, for a model never imported, all zero
    (and not marked free). Other models keep their prices unless `force`. Each write goes
    through `save_model`, so the audit log records it and every gateway process sees it;
    one transaction, and nothing is written with `dry_run`.
    """
    entries = dict(prices.entries)
    for key, entry in (overrides.entries if overrides else {}).items():
        entries[key] = replace(entry, source=entry.source or OVERRIDDEN)
    report = ImportReport(dry_run=dry_run)
    models = list(Model.objects.select_related("price_import").order_by("name"))
    upstream = _upstream_names(models)
    matched = set()
    for model in models:
        names = [key for key in upstream.get(model.pk, []) if key in entries]
        keys = [model.name] if model.name in entries else names
        # Superseded by the model's name, its upstream names still matched something.
        matched.update(keys, names)
        if not keys:
            continue
        report.changes.append(_decide(model, keys, entries, force=force))
    report.unmatched = sorted(entries.keys() - matched)
    if not dry_run:
        _apply(report, entries, prices.source)
    return report


def _upstream_names(models: Iterable[Model]) -> dict[int, list[str]]:
    """Each model's deployments' upstream names, in routing order (one query)."""
    names: dict[int, list[str]] = {}
    rows = Deployment.objects.filter(model__in=list(models)).order_by("model", "priority", "pk")
    for model_id, name in rows.values_list("model_id", "upstream_name"):
        if name not in names.setdefault(model_id, []):
            names[model_id].append(name)
    return names


def _decide(model: Model, keys: list[str], entries: dict[str, Entry], *, force: bool) -> Change:
    old = Prices.of(model)
    change = Change(model=model, key=keys[0], action=SKIPPED, old=old)
    priced = {entries[key].prices for key in keys}
    if len(priced) > 1:
        change.reason = f"its deployments are priced differently in the file ({', '.join(keys)})"
        return change
    entry = entries[keys[0]]
    if entry.unit != model.billing_unit:
        change.reason = (
            f"billed per {BillingUnit(model.billing_unit).price_basis[1]}, the file prices it "
            f"per {BillingUnit(entry.unit).price_basis[1]}"
        )
        return change
    change.new = entry.prices
    if entry.prices == old:
        change.action = UNCHANGED
        return change
    recorded = getattr(model, "price_import", None)
    if recorded is not None and Prices.of(recorded) != old:
        by_hand = "changed by hand since the last import"
    elif recorded is None and model.is_free:
        by_hand = "marked free on purpose"
    elif recorded is None and old != UNPRICED:
        by_hand = "priced by hand, not by an import"
    else:
        by_hand = ""
    if by_hand and not force:
        change.action, change.reason = KEPT, f"{by_hand}; --force replaces them"
        return change
    change.action, change.reason = UPDATE, by_hand and f"{by_hand}, replaced (--force)"
    return change


def _apply(report: ImportReport, entries: dict[str, Entry], source: str) -> None:
    """Write the report's updates, and remember what this import set (its updates and the
    models it found already at the file's prices)."""
    now = timezone.now()
    with transaction.atomic():
        for change in report.changes:
            if change.action == UPDATE:
                model = change.model
                for name, value in change.new.values().items():
                    setattr(model, name, value)
                save_model(model, update_fields=[*Prices.FIELDS, "updated_at"])
            if change.action in (UPDATE, UNCHANGED):
                PriceImport.objects.update_or_create(
                    model=change.model,
                    defaults={
                        **change.new.values(),
                        "source": entries[change.key].source or source,
                        "imported_at": now,
                    },
                )


def shown(prices: Prices, unit: str) -> str:
    """`prices` as people read them, per the unit's basis: "in 3, cache read 0.3, cache
    write 3.75, out 15 per 1M tokens" (a cache price unset: "= in")."""
    per, what = BillingUnit(unit).price_basis

    def one(value) -> str:
        return "= in" if value is None else plain_amount(price_to_show(value, per=per))

    parts = [f"in {one(prices.price_in)}"]
    if unit == BillingUnit.TOKEN:
        parts += [
            f"cache read {one(prices.price_cache_read)}",
            f"cache write {one(prices.price_cache_write)}",
        ]
    parts.append(f"out {one(prices.price_out)}")
    return f"{', '.join(parts)} per {what}"

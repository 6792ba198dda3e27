"""Money for people: amounts rounded to the currency setting when shown; full precision kept.

Balances, prices and costs are stored with 10 decimals (`accounts.models.MONEY`);
only what is shown is rounded, never what is stored or exported. Prices are
entered and shown per a number of billing units (1M tokens, one image, …) and
stored per single unit, exactly (`price_to_store`).
"""

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from django.conf import settings

# A non-zero amount smaller than the shown step keeps this many significant digits,
# so that a request that cost $0.00012 is not shown as free.
SIGNIFICANT_DIGITS = 2
MAX_DECIMALS = 10
STORED_STEP = Decimal(10) ** -MAX_DECIMALS


def format_money(amount: Decimal | int | None) -> str:
    """`amount` as people read it: the currency symbol, rounded to the configured decimals,
    thousands separated ("$1,234.57"); an amount below one step ("$0.00012") keeps two
    significant digits; None is "-"."""
    if amount is None:
        return "-"
    amount = Decimal(amount)
    decimals = settings.AETHERGATE_CURRENCY_DECIMALS
    if amount and abs(amount) < Decimal(10) ** -decimals:
        # Its first significant digit's place, counted from the decimal point.
        first = -amount.adjusted()
        decimals = min(first + SIGNIFICANT_DIGITS - 1, MAX_DECIMALS)
    return _shown(amount, decimals)


def format_price(price: Decimal | int | None) -> str:
    """A price as people read it: like `format_money`, but never rounded ("$0.075",
    "$2.50"): a price list must show exactly what is charged. None is "-"."""
    if price is None:
        return "-"
    price = Decimal(price)
    # Digits after the point the exact value needs (an exponent is negative for those).
    needed = max(0, -price.normalize().as_tuple().exponent) if price else 0
    return _shown(price, max(settings.AETHERGATE_CURRENCY_DECIMALS, needed))


def _shown(amount: Decimal, decimals: int) -> str:
    rounded = amount.quantize(Decimal(10) ** -decimals, rounding=ROUND_HALF_EVEN)
    sign = "-" if rounded < 0 else ""
    return f"{sign}{settings.AETHERGATE_CURRENCY_SYMBOL}{abs(rounded):,.{decimals}f}"


def plain_amount(amount: Decimal | None) -> str:
    """`amount` for a form input: exact, without the stored column's trailing zeros
    ("10", "0.000001"), never in exponent form; None is ""."""
    if amount is None:
        return ""
    text = format(Decimal(amount).normalize(), "f")
    return "0" if text == "-0" else text


class InexactPrice(ValueError):
    """An entered price that the per-unit column cannot hold exactly; the message says why."""


def price_to_store(entered: Decimal, *, per: int, what: str) -> Decimal:
    """The per-unit price to store for `entered`, a price for `per` units (a power of ten:
    10**6 for "1M tokens").

    Raises InexactPrice when the per-unit price would need more than the
    column's 10 decimals (more than 4 decimals per 1M tokens), naming `what`
    the entry is per: rounding it would charge another price than the staff typed.
    """
    try:
        stored = Decimal(entered) / per
        exact = stored == stored.quantize(STORED_STEP)
    except InvalidOperation:
        exact = False
    if not exact:
        allowed = MAX_DECIMALS - Decimal(per).adjusted()
        raise InexactPrice(
            f"Enter at most {allowed} decimal places per {what}: "
            f"prices are stored per single unit with {MAX_DECIMALS}."
        )
    return stored


def price_to_show(stored: Decimal | None, *, per: int) -> Decimal | None:
    """The price for `per` units of a stored per-unit price (exact; `price_to_store` reversed)."""
    return None if stored is None else Decimal(stored) * per

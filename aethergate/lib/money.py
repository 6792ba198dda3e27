"""Money for people: amounts rounded to the currency setting when shown; full precision kept.

Balances, prices and costs are stored with 10 decimals (`accounts.models.MONEY`);
only what is shown is rounded, never what is stored or exported.
"""

from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings

# A non-zero amount smaller than the shown step keeps this many significant digits,
# so that a request that cost $0.00012 is not shown as free.
SIGNIFICANT_DIGITS = 2
MAX_DECIMALS = 10


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
    rounded = amount.quantize(Decimal(10) ** -decimals, rounding=ROUND_HALF_EVEN)
    sign = "-" if rounded < 0 else ""
    return f"{sign}{settings.AETHERGATE_CURRENCY_SYMBOL}{abs(rounded):,.{decimals}f}"

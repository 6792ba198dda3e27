"""How amounts are shown to people (aethergate.lib.money)."""

from decimal import Decimal

import pytest

from aethergate.lib.money import format_money


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0"), "$0.00"),
        (Decimal("1234.5678"), "$1,234.57"),
        (Decimal("0.005"), "$0.0050"),
        (Decimal("0.00012345"), "$0.00012"),
        (Decimal("0.0000000001"), "$0.0000000001"),
        (Decimal("-2.5"), "-$2.50"),
        (7, "$7.00"),
        (None, "-"),
    ],
)
def test_it_rounds_for_people_and_keeps_tiny_amounts_visible(amount, shown):
    assert format_money(amount) == shown


def test_it_follows_the_currency_setting(settings):
    settings.AETHERGATE_CURRENCY_SYMBOL = "€"
    settings.AETHERGATE_CURRENCY_DECIMALS = 0
    assert format_money(Decimal("1999.5")) == "€2,000"
    assert format_money(Decimal("0.4")) == "€0.40"

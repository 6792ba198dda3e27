"""How amounts are shown to people (aethergate.lib.money)."""

from decimal import Decimal

import pytest

from aethergate.lib.money import (
    InexactPrice,
    format_money,
    format_price,
    plain_amount,
    price_to_show,
    price_to_store,
)

MILLION = 1_000_000


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


@pytest.mark.parametrize(
    ("price", "shown"),
    [
        (Decimal("0.075"), "$0.075"),
        (Decimal("2.5000000000"), "$2.50"),
        (Decimal("0.0000015"), "$0.0000015"),
        (Decimal("1234"), "$1,234.00"),
        (None, "-"),
    ],
)
def test_it_shows_prices_exactly(price, shown):
    assert format_price(price) == shown


@pytest.mark.parametrize(
    ("amount", "plain"),
    [
        (Decimal("10.0000000000"), "10"),
        (Decimal("0.0000010000"), "0.000001"),
        (Decimal("100"), "100"),
        (Decimal("-0E-10"), "0"),
        (None, ""),
    ],
)
def test_it_writes_amounts_for_inputs_without_trailing_zeros(amount, plain):
    assert plain_amount(amount) == plain


def test_it_stores_a_price_per_1m_tokens_per_token_exactly():
    stored = price_to_store(Decimal("0.1500"), per=MILLION, what="1M tokens")

    assert stored == Decimal("0.00000015")
    assert price_to_show(stored, per=MILLION) == Decimal("0.15")


def test_it_keeps_a_per_unit_price_as_entered():
    assert price_to_store(Decimal("0.0400000001"), per=1, what="image") == Decimal("0.0400000001")


@pytest.mark.parametrize(
    ("entered", "per", "what", "allowed"),
    [
        ("0.00001", MILLION, "1M tokens", "4"),
        ("0.00000000001", 1, "request", "10"),
    ],
)
def test_it_refuses_a_price_the_column_cannot_hold_exactly(entered, per, what, allowed):
    with pytest.raises(InexactPrice, match=f"at most {allowed} decimal places per {what}"):
        price_to_store(Decimal(entered), per=per, what=what)

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.errors import InexactAmount, UnknownCurrency
from billing.money import (
    line_amount_minor_half_up,
    minor_unit_exponent,
    parse_decimal,
    parse_unit_amount_decimal,
    round_half_up_to_minor,
    to_major_units,
    to_minor_units_exact,
)


@pytest.mark.parametrize(
    ("currency", "exponent"), [("usd", 2), ("eur", 2), ("jpy", 0), ("krw", 0), ("kwd", 3), ("bhd", 3)]
)
def test_each_currency_has_its_minor_unit_exponent(currency, exponent):
    assert minor_unit_exponent(currency) == exponent


@pytest.mark.parametrize("currency", ["USD", "us", "usdx", "", "u$d"])
def test_a_malformed_currency_code_is_refused(currency):
    with pytest.raises(UnknownCurrency):
        minor_unit_exponent(currency)


@pytest.mark.parametrize(
    ("amount_minor", "currency", "major"),
    [(1050, "usd", Decimal("10.50")), (1000, "jpy", Decimal("1000")), (1234, "kwd", Decimal("1.234"))],
)
def test_minor_units_convert_to_major_units_and_back_exactly(amount_minor, currency, major):
    assert to_major_units(amount_minor, currency) == major
    assert to_minor_units_exact(major, currency) == amount_minor


def test_a_fraction_of_a_minor_unit_is_not_an_exact_amount():
    with pytest.raises(InexactAmount):
        to_minor_units_exact(Decimal("10.505"), "usd")


@pytest.mark.parametrize(
    ("quantity", "unit_amount_decimal", "amount_minor"),
    [
        ("3000", "3", 9000),  # the walkthrough's input tokens
        ("1", "1.5", 2),  # Stripe's example: 1.5 rounds to 2
        ("1", "2.5", 3),  # half up, not half even
        ("1", "0.4999999999999", 0),
        ("3", "0.333333333333", 1),
        ("7", "0.000000000001", 0),
        ("0", "5", 0),
        ("2.5", "1", 3),
    ],
)
def test_a_line_amount_is_quantity_times_unit_price_rounded_half_up(quantity, unit_amount_decimal, amount_minor):
    assert line_amount_minor_half_up(Decimal(quantity), Decimal(unit_amount_decimal)) == amount_minor


def test_each_line_is_rounded_before_lines_are_summed():
    lines = [line_amount_minor_half_up(Decimal(1), Decimal("0.5")) for _ in range(3)]
    assert sum(lines) == 3  # not round(1.5) == 2


def test_money_arithmetic_refuses_float():
    with pytest.raises(InexactAmount):
        line_amount_minor_half_up(Decimal(1), 0.1)  # type: ignore[arg-type]
    with pytest.raises(InexactAmount):
        round_half_up_to_minor(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "value"), [("3000", Decimal(3000)), ("-2.5", Decimal("-2.5")), (" 1e3 ", Decimal(1000))])
def test_decimal_strings_parse_exactly(text, value):
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", ["", "abc", "NaN", "Infinity", "1,5", "0x10"])
def test_non_decimal_strings_do_not_parse(text):
    assert parse_decimal(text) is None


def test_unit_amount_decimal_allows_twelve_decimal_places_and_no_more():
    assert parse_unit_amount_decimal("0.000000000001") == Decimal("0.000000000001")
    with pytest.raises(InexactAmount):
        parse_unit_amount_decimal("0.0000000000001")
    with pytest.raises(InexactAmount):
        parse_unit_amount_decimal("-1")


@given(
    quantity=st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False),
    unit_amount_decimal=st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
)
def test_a_line_amount_is_within_half_a_minor_unit_of_the_exact_product(quantity, unit_amount_decimal):
    amount_minor = line_amount_minor_half_up(quantity, unit_amount_decimal)
    exact = quantity * unit_amount_decimal
    assert isinstance(amount_minor, int)
    assert -Decimal("0.5") < Decimal(amount_minor) - exact <= Decimal("0.5")


@pytest.mark.parametrize("text", ["1e5000", "1E+8", "100000000", "9" * 40, "99999999.9999999999999", "1E-5000"])
def test_unit_amount_decimal_is_below_ten_to_the_eighth_minor_units(text):
    with pytest.raises(InexactAmount):
        parse_unit_amount_decimal(text)


def test_the_largest_unit_amount_decimal_and_negative_zero_parse():
    assert parse_unit_amount_decimal("99999999.999999999999") == Decimal("99999999.999999999999")
    assert str(parse_unit_amount_decimal("-0")) == "0"


def test_the_bounds_keep_every_amount_within_avro_long():
    """The arithmetic of billing.money's "Bounds" comment, checked."""
    from billing.money import (LONG_MAX, MAX_GRANT_AMOUNT_MINOR, MAX_LICENSED_QUANTITY, MAX_METER_VALUE,
                               MAX_TIMESTAMP_S, MAX_UNIT_PRICE_MINOR)
    from billing.grants import MAX_UNUSED_GRANTS_PER_CUSTOMER

    assert 20 * MAX_LICENSED_QUANTITY * MAX_UNIT_PRICE_MINOR < LONG_MAX
    assert MAX_UNUSED_GRANTS_PER_CUSTOMER * MAX_GRANT_AMOUNT_MINOR < LONG_MAX
    assert 92 * MAX_METER_VALUE * MAX_UNIT_PRICE_MINOR < LONG_MAX
    assert MAX_TIMESTAMP_S * 1000 < LONG_MAX

"""Money: integer minor units per currency, Decimal unit prices, rounding named at each call. Never float.

A price's `unit_amount_decimal` is already in minor units per unit (Stripe: cents per unit, up to 12
decimal places), so a line amount is `quantity x unit_amount_decimal` rounded to a whole minor unit.
The exponent table is only needed to convert to and from major units (display, API amounts in
major units), e.g. 1000 usd minor = 10.00 usd, 1000 jpy minor = 1000 jpy.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

from billing.errors import InexactAmount, UnknownCurrency

# Currencies whose minor unit is not 1/100 of the major unit (ISO 4217, as Stripe lists them).
# Every other well-formed currency code is taken to have 2 decimal places.
_ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
_THREE_DECIMAL_CURRENCIES = frozenset("bhd jod kwd omr tnd".split())

# Decimal's default context keeps 28 digits and rounds silently. Money arithmetic uses this one:
# wide enough for any real amount, and it raises instead of rounding, so a result is exact or an error.
EXACT_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[Inexact, InvalidOperation, Overflow, DivisionByZero])

# Stripe accepts unit_amount_decimal with at most 12 decimal places.
UNIT_AMOUNT_MAX_DECIMAL_PLACES = 12


def minor_unit_exponent(currency: str) -> int:
    """Number of decimal places of `currency`'s minor unit: 0 for jpy, 2 for usd, 3 for kwd."""
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha() or not currency.islower():
        raise UnknownCurrency(f"currency must be a lowercase ISO 4217 code, got {currency!r}")
    if currency in _ZERO_DECIMAL_CURRENCIES:
        return 0
    if currency in _THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_major_units(amount_minor: int, currency: str) -> Decimal:
    """Exact major-unit value of an amount in minor units: (1050, "usd") -> Decimal("10.50")."""
    exponent = minor_unit_exponent(currency)
    return Decimal(amount_minor).scaleb(-exponent)


def to_minor_units_exact(amount_major: Decimal, currency: str) -> int:
    """Minor units of a major-unit amount that must be a whole number of minor units (else InexactAmount)."""
    _require_decimal(amount_major)
    scaled = Decimal(amount_major).scaleb(minor_unit_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InexactAmount(f"{amount_major} {currency} is not a whole number of minor units")
    return int(scaled)


def round_half_up_to_minor(amount_minor: Decimal) -> int:
    """Round a fractional minor-unit amount to a whole minor unit, half away from zero (1.5 -> 2)."""
    _require_decimal(amount_minor)
    return int(Decimal(amount_minor).to_integral_value(rounding=ROUND_HALF_UP))


def line_amount_minor_half_up(quantity: Decimal, unit_amount_decimal: Decimal) -> int:
    """A line's amount: quantity x unit price (minor units per unit), rounded HALF UP per line, before summing."""
    _require_decimal(quantity)
    _require_decimal(unit_amount_decimal)
    return round_half_up_to_minor(multiply_exact(quantity, unit_amount_decimal))


def add_exact(first: Decimal, second: Decimal) -> Decimal:
    """first + second, exactly (raises rather than rounds)."""
    return EXACT_CONTEXT.add(first, second)


def multiply_exact(first: Decimal, second: Decimal) -> Decimal:
    """first x second, exactly (raises rather than rounds)."""
    return EXACT_CONTEXT.multiply(first, second)


def parse_decimal(text: str) -> Decimal | None:
    """A finite Decimal from its string form, or None when `text` is not a finite decimal number."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None
    return value if value.is_finite() else None


def parse_unit_amount_decimal(text: str) -> Decimal:
    """A price's unit_amount_decimal: finite, not negative, at most 12 decimal places (else InexactAmount)."""
    value = parse_decimal(text)
    if value is None or value < 0:
        raise InexactAmount(f"unit_amount_decimal must be a non-negative decimal, got {text!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > UNIT_AMOUNT_MAX_DECIMAL_PLACES:
        raise InexactAmount(f"unit_amount_decimal {text!r} has more than 12 decimal places")
    return value


def _require_decimal(value: object) -> None:
    # bool and float would silently corrupt money; int is exact and allowed where a Decimal is.
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise InexactAmount(f"money arithmetic needs Decimal or int, got {type(value).__name__}")

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

# --- Bounds: every number that enters the engine, in one place ------------------------------------
#
# Amounts leave the engine as Avro `long`: at most LONG_MAX = 2^63 - 1 (about 9.22e18) minor units.
# The API (and the workers, which re-validate meter events) refuse anything beyond these bounds:
#
#   unit price            P < 10^8 minor units per unit, <= 12 decimal places (unit_amount at most
#                         99,999,999: Stripe's eight-digit amount ceiling)
#   meter event value    |v| < 10^9 per event, <= 12 decimal places
#   licensed quantity     q <= 10^9 per item, at most 20 items per subscription
#   grant amount          g <= 10^15 minor units, at most 100 unused grants per customer
#   timestamps            <= 253,402,300,799 s (9999-12-31T23:59:59Z): 2.6e14 as milliseconds
#
# So: a licensed line q x P < 10^17 and a subscription's 20 lines < 2e18 < LONG_MAX; a customer's
# credit balance is at most 100 x 10^15 = 1e17 (used-up, voided and expired grants hold nothing);
# one meter event adds less than 10^9 x 10^8 = 1e17 to a metered line, so a period's line stays
# within LONG_MAX for at least 92 events that are each at both extremes at once (10^9 units at
# $999,999.99 a unit), for 9.2e10 units at the largest price, and for 9.2e18 units at one minor
# unit a unit. Beyond that only volume, not any single input, can go, and no per-request check
# can bound a period's volume: the worker dead-letters a fact whose amount cannot be encoded.
# Decimal places are bounded too, so every product is exact in EXACT_CONTEXT (12 + 12 places and
# at most 9 + 8 integer digits per factor: far below its 60 digits).
LONG_MAX = 2**63 - 1
MAX_UNIT_PRICE_MINOR = 10**8  # exclusive
UNIT_AMOUNT_MAX_DECIMAL_PLACES = 12  # Stripe
MAX_METER_VALUE = 10**9  # exclusive, either sign
MAX_METER_VALUE_DECIMAL_PLACES = 12
MAX_LICENSED_QUANTITY = 10**9
MAX_GRANT_AMOUNT_MINOR = 10**15
MAX_TIMESTAMP_S = 253_402_300_799


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
    """A price's unit_amount_decimal: finite, 0 <= value < MAX_UNIT_PRICE_MINOR, at most 12 decimal
    places (else InexactAmount). Read digits-first, so `1e5000` is refused before it is ever expanded."""
    value = parse_decimal(text)
    if value is None or value < 0:
        raise InexactAmount(f"unit_amount_decimal must be a non-negative decimal, got {text[:50]!r}")
    if decimal_places(value) > UNIT_AMOUNT_MAX_DECIMAL_PLACES:
        raise InexactAmount(f"unit_amount_decimal {text[:50]!r} has more than 12 decimal places")
    if integer_digits(value) > 8 or value >= MAX_UNIT_PRICE_MINOR:
        raise InexactAmount(f"unit_amount_decimal {text[:50]!r} must be less than {MAX_UNIT_PRICE_MINOR}")
    return value + 0  # + 0: -0 becomes 0


def decimal_places(value: Decimal) -> int:
    """Digits after the point of a finite Decimal as written: 1.50 -> 2, 1E+3 -> 0."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int), "finite Decimal"
    return max(0, -exponent)


def integer_digits(value: Decimal) -> int:
    """Digits before the point of a finite Decimal as written, from its digits and exponent (never
    expanding it): 123.4 -> 3, 1E+5000 -> 5001, 0.5 -> 0."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "finite Decimal"
    return max(0, len(digits) + exponent)


def _require_decimal(value: object) -> None:
    # bool and float would silently corrupt money; int is exact and allowed where a Decimal is.
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise InexactAmount(f"money arithmetic needs Decimal or int, got {type(value).__name__}")

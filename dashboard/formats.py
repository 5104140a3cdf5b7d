"""How the dashboard shows amounts and times (Jinja filters). Money stays exact: minor units become
a Decimal in major units (billing.money.to_major_units), never a float."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from billing.errors import BillingError
from billing.money import minor_unit_exponent, to_major_units

CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def money(amount_minor: int | None, currency: str | None) -> str:
    """1050, "usd" -> "$10.50"; -1000 -> "-$10.00"; unknown symbols -> "10.50 CHF"."""
    if amount_minor is None or not currency:
        return "-"
    try:
        exponent = minor_unit_exponent(currency)
    except BillingError:
        return f"{amount_minor} {currency}"
    major = abs(to_major_units(amount_minor, currency))
    text = f"{major:,.{exponent}f}"
    sign = "-" if amount_minor < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


def unit_price(unit_amount_decimal: Any, currency: str | None) -> str:
    """A unit price in minor units, exact ("3" usd -> "3¢" is ambiguous: show "$0.03")."""
    if unit_amount_decimal is None or not currency:
        return "-"
    try:
        exponent = minor_unit_exponent(currency)
    except BillingError:
        return f"{unit_amount_decimal} {currency}"
    major = Decimal(str(unit_amount_decimal)).scaleb(-exponent)
    places = max(exponent, -major.normalize().as_tuple().exponent)
    symbol = CURRENCY_SYMBOLS.get(currency)
    text = f"{major:,.{places}f}"
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


def when(seconds: int | None) -> str:
    """Unix seconds -> "2026-01-01 00:00 UTC"."""
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def datetime_local(seconds: int | None) -> str:
    """Unix seconds -> the value of an <input type="datetime-local"> (UTC)."""
    if seconds is None:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M")


def parse_datetime_local(text: str) -> int:
    """An <input type="datetime-local"> value read as UTC -> unix seconds (ValueError when it is none)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


FILTERS = {"money": money, "unit_price": unit_price, "when": when, "datetime_local": datetime_local}

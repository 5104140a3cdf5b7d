"""Amounts the engine can carry (the worker's side; what may enter at the edge: billing/money.py,
"Bounds"): every amount is a signed 64-bit integer of minor units (Avro
`long`, PostgreSQL `bigint`). A fact whose fold would form a larger one cannot be folded: the
worker dead-letters it (`amount_out_of_range`) and leaves the customer as it was.

Checking a customer's amounts exactly costs what a live balance costs, too much for every meter
event. So a meter event is checked exactly only when its period usage passes `safe_quantity`, the
quantity below which a line surely stays under SAFE_LINE_AMOUNT; and a customer whose exact check
found a line above that (or very many lines) is checked exactly at every fact (`large_amounts`).
Below those bounds no sum the engine forms can leave the range: at most MAX_SAFE_LINES lines of at
most SAFE_LINE_AMOUNT each, credits that were checked when granted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from billing.money import LONG_MAX

MAX_AMOUNT_MINOR = LONG_MAX
MIN_AMOUNT_MINOR = -LONG_MAX - 1
MAX_SAFE_LINES = 1 << 16
SAFE_LINE_AMOUNT = MAX_AMOUNT_MINOR // MAX_SAFE_LINES  # ~1.4e14 minor units: 1.4 trillion USD a line

AMOUNT_OUT_OF_RANGE = "amount_out_of_range"


def in_range(amount_minor: int) -> bool:
    return MIN_AMOUNT_MINOR <= amount_minor <= MAX_AMOUNT_MINOR


def safe_quantity(unit_amounts: Iterable[Decimal]) -> Decimal | None:
    """The period quantity up to which a line of any of these unit prices stays within
    SAFE_LINE_AMOUNT; None when every price is free (no quantity forms an amount)."""
    highest = max(unit_amounts, default=Decimal(0))
    if highest <= 0:
        return None
    return Decimal(SAFE_LINE_AMOUNT) / highest


@dataclass(frozen=True, slots=True)
class AmountCheck:
    """What an exact check found: the first amount out of range (None: all fit), and whether the
    customer is large (a line above SAFE_LINE_AMOUNT, or more than MAX_SAFE_LINES lines)."""

    out_of_range: str | None
    large: bool


def check_amounts(line_amounts: Iterable[int], sums: Iterable[tuple[str, int]]) -> AmountCheck:
    """`line_amounts`: every rated line; `sums`: (what it is, amount) of every sum formed from them."""
    large, count = False, 0
    for amount in line_amounts:
        count += 1
        if not in_range(amount):
            return AmountCheck(f"a line amount of {amount} minor units is beyond a 64-bit integer", True)
        large = large or abs(amount) > SAFE_LINE_AMOUNT
    for name, amount in sums:
        if not in_range(amount):
            return AmountCheck(f"{name} of {amount} minor units is beyond a 64-bit integer", True)
    return AmountCheck(None, large or count > MAX_SAFE_LINES)

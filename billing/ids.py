"""Deterministic ids of derived facts (schemas/FACTS.md): a re-emitted fact is the same fact.

Each id is a prefix plus the first 24 hex digits of sha256 over its parts. Parts are joined with the
ASCII unit separator, which cannot occur in our ids, so ("a", "bc") and ("ab", "c") never collide.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

_PART_SEPARATOR = "\x1f"
_HEX_DIGITS = 24


@lru_cache(maxsize=1 << 16, typed=True)  # pure; the same ids are derived again for every live balance and invoice preview
def _digest(*parts: object) -> str:
    joined = _PART_SEPARATOR.join(str(part) for part in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:_HEX_DIGITS]


def invoice_id(subscription_id: str, period_start_ms: int) -> str:
    """ "in_" + hash("invoice", subscription_id, period_start_ms)."""
    return "in_" + _digest("invoice", subscription_id, period_start_ms)


def invoice_line_id(invoice_id: str, subscription_item_id: str) -> str:
    """ "il_" + hash(invoice_id, subscription_item_id)."""
    return "il_" + _digest(invoice_id, subscription_item_id)


def credit_balance_transaction_id(
    reason: str, grant_id: str, invoice_id: str | None = None, invoice_line_id: str | None = None
) -> str:
    """ "cbtxn_" + hash(reason, grant_id, invoice_id or "", line_id or "")."""
    return "cbtxn_" + _digest(str(reason), grant_id, invoice_id or "", invoice_line_id or "")


def low_balance_alert_id(customer_id: str, currency: str, threshold_minor: int, crossing_sequence: int) -> str:
    """ "lbal_" + hash(customer_id, currency, threshold_minor, crossing sequence)."""
    return "lbal_" + _digest(customer_id, currency, threshold_minor, crossing_sequence)


def billing_alert_crossing_id(alert_id: str, customer_id: str, crossing: str, crossing_sequence: int) -> str:
    """ "altr_" + hash(alert_id, customer_id, crossing, crossing sequence)."""
    return "altr_" + _digest(alert_id, customer_id, str(crossing), crossing_sequence)

"""The live balance (beyond Stripe) and low-balance alerts.

live balance = available credits - accrued cost of not yet invoiced usage those credits would pay.
"Not yet invoiced" covers the open period and any closed period still in its grace period. Each
period's usage is rated exactly like its invoice (rounded half up per line), so the live balance of
the moment before finalization equals the credits the invoice leaves, when credits cover the usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from billing import ids
from billing.facts import InvoiceLine, LiveBalanceChanged, LowBalanceAlert, PriceCreated
from billing.grants import GrantState, grant_is_eligible, price_in_scope


@dataclass(frozen=True, slots=True)
class UninvoicedPeriod:
    """A period not invoiced yet: its end and its rated, uncredited lines (see invoices.rate_lines)."""

    period_end_ms: int
    lines: tuple[InvoiceLine, ...]


def _grant_is_live(state: GrantState, currency: str, as_of_ms: int) -> bool:
    return state.currency == currency and not state.is_voided() and not state.is_expired_at(as_of_ms)


def live_balance(
    customer_id: str,
    currency: str,
    grants: Iterable[GrantState],
    uninvoiced_periods: Sequence[UninvoicedPeriod],
    prices: Mapping[str, PriceCreated],
    as_of_ms: int,
) -> LiveBalanceChanged:
    """The customer's live balance in `currency` at `as_of_ms`.

    Available credits: the ledger balance of grants in `currency`, neither voided nor expired at
    `as_of_ms`, that are eligible for an uninvoiced period (with no such period: effective by
    `as_of_ms`). Accrued usage: the
    line amounts of uninvoiced periods whose price some grant eligible for that period covers.
    """
    live_grants = [state for state in grants if _grant_is_live(state, currency, as_of_ms)]
    # With usage to pay, count the grants that will pay it; with none, the grants usable now.
    counted_grant_ids: set[str] = set()
    if not uninvoiced_periods:
        counted_grant_ids = {state.grant_id for state in live_grants if state.grant.effective_at_ms <= as_of_ms}
    accrued_usage_minor = 0
    for period in uninvoiced_periods:
        eligible = [state for state in live_grants if grant_is_eligible(state, period.period_end_ms, currency)]
        counted_grant_ids.update(state.grant_id for state in eligible)
        for line in period.lines:
            price = prices[line.price_id]
            if any(price_in_scope(state.grant.scope, price) for state in eligible):
                accrued_usage_minor += line.amount_minor
    available_credits_minor = sum(
        state.ledger_balance_minor for state in live_grants if state.grant_id in counted_grant_ids
    )
    return LiveBalanceChanged(
        customer_id=customer_id,
        currency=currency,
        available_credits_minor=available_credits_minor,
        accrued_usage_minor=accrued_usage_minor,
        live_balance_minor=available_credits_minor - accrued_usage_minor,
        as_of_ms=as_of_ms,
    )


@dataclass(frozen=True, slots=True)
class LowBalanceWatch:
    """One low-balance threshold of one customer and currency.

    `at_or_below` is where the last balance stood; `crossing_count` numbers the alerts (it goes into
    the alert id, so the n-th crossing always has the same id).
    """

    customer_id: str
    currency: str
    threshold_minor: int
    at_or_below: bool = False
    crossing_count: int = 0


def detect_low_balance(
    watch: LowBalanceWatch, live_balance_minor: int, as_of_ms: int
) -> tuple[LowBalanceWatch, LowBalanceAlert | None]:
    """Alert once when the live balance crosses down to or below the threshold; re-arm only when it
    goes back above the threshold."""
    now_at_or_below = live_balance_minor <= watch.threshold_minor
    if not now_at_or_below or watch.at_or_below:
        # (unchanged nearly always: this runs with every live balance)
        return (watch if watch.at_or_below == now_at_or_below else replace(watch, at_or_below=now_at_or_below)), None
    crossing_count = watch.crossing_count + 1
    alert = LowBalanceAlert(
        alert_id=ids.low_balance_alert_id(watch.customer_id, watch.currency, watch.threshold_minor, crossing_count),
        customer_id=watch.customer_id,
        currency=watch.currency,
        threshold_minor=watch.threshold_minor,
        live_balance_minor=live_balance_minor,
        alerted_at_ms=as_of_ms,
    )
    return replace(watch, at_or_below=True, crossing_count=crossing_count), alert


def detect_low_balances(
    watches: Sequence[LowBalanceWatch], live_balance_minor: int, as_of_ms: int
) -> tuple[tuple[LowBalanceWatch, ...], tuple[LowBalanceAlert, ...]]:
    """`detect_low_balance` over several thresholds; alerts in the watches' order."""
    updated = []
    alerts = []
    for watch in watches:
        watch, alert = detect_low_balance(watch, live_balance_minor, as_of_ms)
        updated.append(watch)
        if alert is not None:
            alerts.append(alert)
    return tuple(updated), tuple(alerts)

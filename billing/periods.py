"""Billing periods: half-open [start_ms, end_ms) in epoch milliseconds UTC, counted from the anchor.

Each boundary is computed from `billing_cycle_anchor_ms` directly (anchor + k intervals, with the day
clamped to the month's last day), never from the previous boundary. So an anchor on Jan 31 bills on
Feb 28 (or 29), then on Mar 31 again, not on Mar 28.

First invoice (OURS, Stripe allows either): a subscription gets NO invoice at creation. Usage is billed
in arrears, so a zero-amount invoice at creation would carry no money and no credits, yet it would
be a fact that every projection, replay and balance summary carries forever. The first invoice is
the one for the first period, at its end plus the grace period.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from functools import lru_cache
from datetime import UTC, datetime, timedelta

from billing.errors import GracePeriodOutOfRange, InstantBeforeSubscriptionStart
from billing.facts import BillingReason, RecurringInterval

MILLISECONDS_PER_MINUTE = 60_000
MILLISECONDS_PER_HOUR = 60 * MILLISECONDS_PER_MINUTE
MILLISECONDS_PER_DAY = 24 * MILLISECONDS_PER_HOUR

DEFAULT_GRACE_PERIOD_MS = MILLISECONDS_PER_HOUR  # Stripe: drafts finalize 1 hour after period end
MAX_GRACE_PERIOD_MS = 72 * MILLISECONDS_PER_HOUR  # Stripe: configurable up to 72 hours

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """A half-open billing period [start_ms, end_ms)."""

    start_ms: int
    end_ms: int

    def contains(self, instant_ms: int) -> bool:
        """Whether `instant_ms` falls in [start_ms, end_ms)."""
        return self.start_ms <= instant_ms < self.end_ms


def _from_ms(instant_ms: int) -> datetime:
    # Integer arithmetic on timedelta stays exact to the millisecond (no float timestamps).
    return _EPOCH + timedelta(milliseconds=instant_ms)


def _to_ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _months_per_interval(interval: RecurringInterval, interval_count: int) -> int:
    if interval_count < 1:
        raise ValueError(f"recurring_interval_count must be at least 1, got {interval_count}")
    return interval_count * (12 if interval == RecurringInterval.YEAR else 1)


def add_months_clamped_ms(anchor_ms: int, months: int) -> int:
    """`anchor_ms` shifted by `months` calendar months (may be negative), the day clamped to the month's end."""
    anchor = _from_ms(anchor_ms)
    month_index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(month_index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return _to_ms(anchor.replace(year=year, month=month, day=day))


def cycle_boundary_ms(
    billing_cycle_anchor_ms: int, interval: RecurringInterval, interval_count: int, cycle_index: int
) -> int:
    """Start of cycle `cycle_index` (0 starts at the anchor; negative indices lie before it)."""
    months = _months_per_interval(interval, interval_count) * cycle_index
    return add_months_clamped_ms(billing_cycle_anchor_ms, months)


def anchored_period_containing(
    billing_cycle_anchor_ms: int, interval: RecurringInterval, interval_count: int, instant_ms: int
) -> BillingPeriod:
    """The anchor-aligned period [boundary k, boundary k+1) that contains `instant_ms`."""
    months_per_cycle = _months_per_interval(interval, interval_count)
    anchor, instant = _from_ms(billing_cycle_anchor_ms), _from_ms(instant_ms)
    month_distance = (instant.year - anchor.year) * 12 + (instant.month - anchor.month)
    # The month estimate is off by at most one cycle either way; step to the exact one.
    cycle_index = month_distance // months_per_cycle
    while cycle_boundary_ms(billing_cycle_anchor_ms, interval, interval_count, cycle_index) > instant_ms:
        cycle_index -= 1
    while cycle_boundary_ms(billing_cycle_anchor_ms, interval, interval_count, cycle_index + 1) <= instant_ms:
        cycle_index += 1
    return BillingPeriod(
        start_ms=cycle_boundary_ms(billing_cycle_anchor_ms, interval, interval_count, cycle_index),
        end_ms=cycle_boundary_ms(billing_cycle_anchor_ms, interval, interval_count, cycle_index + 1),
    )


@lru_cache(maxsize=1 << 16, typed=True)  # pure, and asked again for every live balance of the same period
def subscription_period_containing(
    subscription_start_ms: int,
    billing_cycle_anchor_ms: int,
    interval: RecurringInterval,
    interval_count: int,
    instant_ms: int,
) -> BillingPeriod:
    """The subscription's billing period containing `instant_ms`.

    Periods follow the anchor; when the anchor lies after the subscription start, the first period is
    the shorter [subscription_start_ms, first boundary after it), as Stripe does for a future anchor.
    """
    if instant_ms < subscription_start_ms:
        raise InstantBeforeSubscriptionStart(
            f"instant {instant_ms} is before the subscription start {subscription_start_ms}"
        )
    period = anchored_period_containing(billing_cycle_anchor_ms, interval, interval_count, instant_ms)
    return BillingPeriod(start_ms=max(period.start_ms, subscription_start_ms), end_ms=period.end_ms)


def next_period(
    period: BillingPeriod, billing_cycle_anchor_ms: int, interval: RecurringInterval, interval_count: int
) -> BillingPeriod:
    """The period right after `period`, still computed from the anchor."""
    return anchored_period_containing(billing_cycle_anchor_ms, interval, interval_count, period.end_ms)


def validate_grace_period_ms(grace_period_ms: int) -> int:
    """The grace period if it is within 0..72 hours, else GracePeriodOutOfRange."""
    if not 0 <= grace_period_ms <= MAX_GRACE_PERIOD_MS:
        raise GracePeriodOutOfRange(f"grace period must be within 0..{MAX_GRACE_PERIOD_MS} ms, got {grace_period_ms}")
    return grace_period_ms


def finalization_due_ms(period_end_ms: int, grace_period_ms: int = DEFAULT_GRACE_PERIOD_MS) -> int:
    """When a period's draft finalizes: period end plus the grace period (late usage counts until then)."""
    return period_end_ms + validate_grace_period_ms(grace_period_ms)


def minute_bucket_start_ms(event_time_ms: int) -> int:
    """Start of the UTC minute containing `event_time_ms` (usage buckets are minute-aligned)."""
    return event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE


@dataclass(frozen=True, slots=True)
class FinalInvoicePlan:
    """What cancellation bills: the final invoice's period and reason, or nothing (`period` None)."""

    period: BillingPeriod | None
    billing_reason: BillingReason = BillingReason.SUBSCRIPTION_CANCEL


def cancel_at_period_end(current_period: BillingPeriod) -> FinalInvoicePlan:
    """Cancel at period end: the final invoice covers the whole current period, usage included."""
    return FinalInvoicePlan(period=current_period)


def cancel_immediately(current_period: BillingPeriod, canceled_at_ms: int, invoice_now: bool) -> FinalInvoicePlan:
    """Cancel now: with invoice_now, a final invoice for [period start, canceled_at) with its usage;
    without it (Stripe's default), the accrued usage is not billed and no invoice is made.

    The final invoice finalizes at canceled_at plus the grace period, like any draft, so usage that
    arrives late for the canceled span still counts.
    """
    if not invoice_now:
        return FinalInvoicePlan(period=None)
    canceled_at_ms = max(canceled_at_ms, current_period.start_ms)
    return FinalInvoicePlan(period=BillingPeriod(start_ms=current_period.start_ms, end_ms=canceled_at_ms))

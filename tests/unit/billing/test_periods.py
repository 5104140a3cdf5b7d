import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.errors import GracePeriodOutOfRange, InstantBeforeSubscriptionStart
from billing.facts import BillingReason, RecurringInterval
from billing.periods import (
    DEFAULT_GRACE_PERIOD_MS,
    MILLISECONDS_PER_HOUR,
    BillingPeriod,
    anchored_period_containing,
    cancel_at_period_end,
    cancel_immediately,
    finalization_due_ms,
    minute_bucket_start_ms,
    next_period,
    subscription_period_containing,
)

from .conftest import utc_ms

MONTH = RecurringInterval.MONTH
YEAR = RecurringInterval.YEAR


def test_an_anchor_on_the_31st_bills_on_the_last_day_of_shorter_months_and_returns_to_the_31st():
    anchor_ms = utc_ms(2024, 1, 31, 10)
    period = anchored_period_containing(anchor_ms, MONTH, 1, anchor_ms)
    ends = []
    for _ in range(4):
        ends.append(period.end_ms)
        period = next_period(period, anchor_ms, MONTH, 1)
    assert ends == [utc_ms(2024, 2, 29, 10), utc_ms(2024, 3, 31, 10), utc_ms(2024, 4, 30, 10), utc_ms(2024, 5, 31, 10)]


@pytest.mark.parametrize(
    ("anchor", "instant", "start", "end"),
    [
        ((2025, 1, 15), (2025, 1, 15), (2025, 1, 15), (2025, 2, 15)),  # start is inclusive
        ((2025, 1, 15), (2025, 2, 15), (2025, 2, 15), (2025, 3, 15)),  # end is exclusive
        ((2025, 1, 31), (2025, 2, 28), (2025, 2, 28), (2025, 3, 31)),  # non-leap February
        ((2025, 1, 30), (2025, 3, 1), (2025, 2, 28), (2025, 3, 30)),
        ((2025, 1, 15), (2024, 12, 20), (2024, 12, 15), (2025, 1, 15)),  # before the anchor
        ((2025, 3, 31), (2026, 1, 5), (2025, 12, 31), (2026, 1, 31)),
    ],
)
def test_monthly_periods_are_half_open_and_counted_from_the_anchor(anchor, instant, start, end):
    period = anchored_period_containing(utc_ms(*anchor), MONTH, 1, utc_ms(*instant))
    assert period == BillingPeriod(start_ms=utc_ms(*start), end_ms=utc_ms(*end))


def test_a_yearly_period_anchored_on_february_29_bills_on_february_28_in_common_years():
    anchor_ms = utc_ms(2024, 2, 29)
    period = anchored_period_containing(anchor_ms, YEAR, 1, utc_ms(2025, 6, 1))
    assert period == BillingPeriod(start_ms=utc_ms(2025, 2, 28), end_ms=utc_ms(2026, 2, 28))
    assert next_period(period, anchor_ms, YEAR, 1).end_ms == utc_ms(2027, 2, 28)
    assert anchored_period_containing(anchor_ms, YEAR, 4, utc_ms(2028, 3, 1)).start_ms == utc_ms(2028, 2, 29)


def test_an_interval_count_of_three_months_makes_quarterly_periods():
    period = anchored_period_containing(utc_ms(2025, 1, 1), MONTH, 3, utc_ms(2025, 5, 5))
    assert period == BillingPeriod(start_ms=utc_ms(2025, 4, 1), end_ms=utc_ms(2025, 7, 1))


def test_a_future_anchor_makes_a_shorter_first_period_from_the_subscription_start():
    period = subscription_period_containing(utc_ms(2025, 1, 10), utc_ms(2025, 2, 1), MONTH, 1, utc_ms(2025, 1, 20))
    assert period == BillingPeriod(start_ms=utc_ms(2025, 1, 10), end_ms=utc_ms(2025, 2, 1))


def test_there_is_no_period_before_the_subscription_starts():
    with pytest.raises(InstantBeforeSubscriptionStart):
        subscription_period_containing(utc_ms(2025, 1, 10), utc_ms(2025, 1, 10), MONTH, 1, utc_ms(2025, 1, 9))


def test_a_draft_finalizes_one_hour_after_period_end_by_default():
    assert DEFAULT_GRACE_PERIOD_MS == MILLISECONDS_PER_HOUR
    assert finalization_due_ms(utc_ms(2025, 2, 1)) == utc_ms(2025, 2, 1, 1)


@pytest.mark.parametrize(("grace_hours", "allowed"), [(0, True), (24, True), (72, True), (73, False), (-1, False)])
def test_the_grace_period_is_configurable_up_to_72_hours(grace_hours, allowed):
    grace_ms = grace_hours * MILLISECONDS_PER_HOUR
    if allowed:
        assert finalization_due_ms(0, grace_ms) == grace_ms
    else:
        with pytest.raises(GracePeriodOutOfRange):
            finalization_due_ms(0, grace_ms)


def test_usage_buckets_start_on_the_minute():
    assert minute_bucket_start_ms(utc_ms(2025, 1, 1, 12, 34) + 59_999) == utc_ms(2025, 1, 1, 12, 34)


CURRENT = BillingPeriod(start_ms=utc_ms(2025, 1, 1), end_ms=utc_ms(2025, 2, 1))


def test_cancel_at_period_end_bills_the_whole_period_as_the_final_invoice():
    plan = cancel_at_period_end(CURRENT)
    assert plan.period == CURRENT
    assert plan.billing_reason == BillingReason.SUBSCRIPTION_CANCEL


def test_cancel_now_with_invoice_now_bills_from_period_start_to_the_cancellation():
    plan = cancel_immediately(CURRENT, utc_ms(2025, 1, 20), invoice_now=True)
    assert plan.period == BillingPeriod(start_ms=CURRENT.start_ms, end_ms=utc_ms(2025, 1, 20))


def test_cancel_now_without_invoice_now_bills_nothing():
    assert cancel_immediately(CURRENT, utc_ms(2025, 1, 20), invoice_now=False).period is None


@given(
    anchor_ms=st.integers(min_value=utc_ms(2000, 1, 1), max_value=utc_ms(2040, 1, 1)),
    offset_ms=st.integers(min_value=-(10**11), max_value=10**11),
    interval=st.sampled_from([MONTH, YEAR]),
    interval_count=st.integers(min_value=1, max_value=3),
)
def test_every_instant_lies_in_exactly_one_period_and_periods_tile_time(anchor_ms, offset_ms, interval, interval_count):
    instant_ms = anchor_ms + offset_ms
    period = anchored_period_containing(anchor_ms, interval, interval_count, instant_ms)
    assert period.contains(instant_ms)
    following = next_period(period, anchor_ms, interval, interval_count)
    assert following.start_ms == period.end_ms
    assert following.end_ms > following.start_ms

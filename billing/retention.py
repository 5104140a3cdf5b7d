"""When the worker's usage state may be forgotten: THE purge rules, the one place they live.

The worker keeps two kinds of usage record (billing/usage.py): a seen record per deduplication key,
and a minute bucket per customer, meter and event-time minute. Both would grow forever. Each is
needed only as long as a fact still to come can read it:

- A seen record decides whether a later event with its key is a duplicate: while that event can
  have been received at most the dedupe window after it (usage.within_dedupe_window), and a cancel
  within 24 hours of it (usage.within_cancel_window, shorter).
- A minute bucket takes late events while its minute is within 35 days of its customer's now
  (meter_events.is_timely; a test clock's time for a customer on one), a cancel of such an event
  for 24 hours after its receipt, and the fold of a canceled reading's window (at most a day wide)
  reads its neighbours.

Both rules run on `received_at`, which producers stamp. Which receipt can a fact still to come
carry? The receipt rule (meter_events.is_received_within_bound) keeps every received_at within the
bound B of its record's broker append time, and append times move forward with the log. So once a
fact received at R is folded, every fact appended after it was received at R - 2B or later: its
append time is at least R's (at least R - B), its receipt at most B before that. `receipt_floor_ms`
says so, less a margin for brokers whose clocks disagree and (with the bound off, B = 0, producers
trusted) for receipts that reach the log out of order.

The worker judges by the floor as of its durable offset (PartitionState.durable_latest_received_ms):
a fact re-read after a crash was appended after every durable one, so a purge never removes a record
that a re-read fact reads. Purging changes no result (tests/integration/streams/test_purge.py): a
purged seen record would have made nothing a duplicate, a purged bucket would have taken nothing.
One thing reads differently: a cancel of an event forgotten long ago is refused as
`meter_event_not_found` rather than `meter_event_cancel_window_passed`.
"""

from __future__ import annotations

from billing.meter_events import MAX_EVENT_AGE_MS
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_MINUTE
from billing.usage import CANCEL_WINDOW_MS

RECEIPT_ORDER_MARGIN_MS = MILLISECONDS_PER_HOUR  # broker clocks apart, receipts out of order (bound off)
WIDEST_EVENT_TIME_WINDOW_MS = MILLISECONDS_PER_DAY  # a day-windowed meter's fold reads a day of buckets


def receipt_floor_ms(latest_received_ms: int, receipt_bound_ms: int) -> int:
    """The earliest receipt a fact appended after the one received at `latest_received_ms` can carry."""
    return latest_received_ms - 2 * receipt_bound_ms - RECEIPT_ORDER_MARGIN_MS


def seen_expired(received_ms: int, floor_ms: int, dedupe_window_ms: int) -> bool:
    """Whether a seen record whose every occurrence was received at or before `received_ms` can make
    no fact still to come a duplicate, nor be canceled (cancels come within 24 h < the dedupe window)."""
    return received_ms + max(dedupe_window_ms, CANCEL_WINDOW_MS) < floor_ms


def bucket_retention_ms(grace_period_ms: int) -> int:
    """How long past its minute a bucket is kept on its customer's clock: the 35-day lateness limit,
    the cancel window of an event received at that limit, the widest window a cancel folds again,
    the minute itself, and the grace period (what closes a period's invoice) for good measure."""
    return (MAX_EVENT_AGE_MS + CANCEL_WINDOW_MS + WIDEST_EVENT_TIME_WINDOW_MS + MILLISECONDS_PER_MINUTE
            + grace_period_ms)


def buckets_past_lateness(latest_minute_ms: int, customer_now_ms: int, grace_period_ms: int) -> bool:
    """Whether buckets of minutes up to `latest_minute_ms` can take no event still to come, and are
    out of reach of the window a cancel of one folds again: their minutes are past the retention on
    their customers' clock (`customer_now_ms`: the receipt floor on the wall clock, a test clock's
    time as of the durable offset). Such buckets are then kept one cancel window more (`armed`)."""
    return latest_minute_ms + bucket_retention_ms(grace_period_ms) < customer_now_ms


def armed_buckets_expired(armed_received_ms: int, floor_ms: int) -> bool:
    """Whether buckets found past lateness when the latest receipt folded was `armed_received_ms`
    can be forgotten: no cancel can still reach an event folded before then (a cancel comes within
    24 hours of its event's receipt, on the wall clock). Only then: a test clock may pass 35 days in
    a minute, while the cancel of an event it took a minute ago may still come."""
    return armed_received_ms + CANCEL_WINDOW_MS < floor_ms

"""The usage fold: meter events -> deduplicated, cancellable, event-time minute buckets.

This is THE definition of usage. The stream workers call it for every accepted meter event and
every cancellation, and the analysts' replay calls it over the raw log, so both compute usage
exactly the same way. It does no I/O: the ledger reads and writes two mappings that the caller
provides (plain dicts for a replay, write-back caches over changelogged tables in the workers).

    ledger = UsageLedger(dedupe_window_ms=35 * 86_400_000)
    outcome = ledger.apply_event(offset, accepted, event_name, aggregator)   # per accepted event
    outcome = ledger.apply_cancel(offset, cancel, aggregators_by_meter_id)   # per MeterEventCanceled
    ledger.bucket(customer_id, meter_id, bucket_start_ms)                    # one minute bucket
    ledger.usage(customer_id, meter_id, start_ms, end_ms, aggregator)        # [start, end) folded

Rules:
- Dedupe on (customer, event name, identifier) for `dedupe_window_ms` after the first receipt: a
  later event with the same key is a duplicate and counts nothing.
- A cancellation removes an event's value if it arrives within 24 hours of the event's receipt
  (Stripe), once, from its bucket and from the open periods that counted it (`remove_reading`).
  Raw sum and count meters subtract it. The minute buckets of the other meters (hour/day-windowed,
  `last`) keep their readings, so a cancel folds the others again: the window's next reading
  received last, or the next latest reading, takes the canceled one's place.
- Exactly once under replays: every record carries the last log offset it applied, and `offset`
  (the fact's position in its customer's log) is passed in. A fact at or below a record's offset
  has already been applied to that record and changes nothing. So feeding the same log prefix
  twice (a worker crashed and re-reads) gives the same state as feeding it once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from billing.facts import MeterAggregation, MeterEventCanceled, PeriodUsage, PeriodUsageUpdated, UsageBucketUpdated
from billing.meter_events import MeterEventAccepted
from billing.meters import MeterAggregator, MeterReading, MeterUsage
from billing.money import EXACT_CONTEXT
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_MINUTE, minute_bucket_start_ms
from billing.usage_windows import counted_reading

CANCEL_WINDOW_MS = MILLISECONDS_PER_DAY  # Stripe: cancel only events received in the last 24 hours
DEFAULT_DEDUPE_WINDOW_MS = 35 * MILLISECONDS_PER_DAY

def within_dedupe_window(first_received_at_ms: int, received_at_ms: int, dedupe_window_ms: int) -> bool:
    """THE dedupe rule, the one place it lives: an event whose key (customer, event name,
    identifier) was first received at most `dedupe_window_ms` before it is a duplicate of that
    first one. UsageLedger and the replay's compact ledger (billing/replay_fold.py) both ask it."""
    return received_at_ms - first_received_at_ms <= dedupe_window_ms


def within_cancel_window(received_at_ms: int, cancel_received_at_ms: int) -> bool:
    """THE cancel rule (Stripe): a cancellation takes an event out only if it was received at most
    24 hours after the event."""
    return cancel_received_at_ms - received_at_ms <= CANCEL_WINDOW_MS


SeenKey = tuple[str, str]  # (event_name, identifier): also finds events of cancels without a customer
BucketKey = tuple[str, str, int]  # (customer_id, meter_id, bucket_start_ms)


# SeenEvent, UsageBucket and EventOutcome are built once per meter event: NamedTuples, which cost
# a third of a frozen dataclass to construct (see billing/meters.py).


class SeenEvent(NamedTuple):
    """The first accepted occurrence of one (customer, event name, identifier)."""

    offset: int
    meter_id: str
    reading: MeterReading
    canceled_offset: int | None = None  # offset of the cancellation that removed it

    @property
    def bucket_start_ms(self) -> int:
        return minute_bucket_start_ms(self.reading.event_time_ms)


class UsageBucket(NamedTuple):
    """One customer's usage of one meter in one event-time minute, and the last offset applied."""

    usage: MeterUsage
    applied_offset: int
    # The minute's readings not canceled, where a cancel folds the others again (meters that
    # cannot subtract: hour/day-windowed, `last`); () for raw sum and count meters
    readings: tuple[MeterReading, ...] = ()


class EventOutcome(NamedTuple):
    """What one accepted event did.

    `counts`: this offset is the event's first occurrence (True also when the fact is replayed),
    so per-period totals guarded by their own offsets must add it. `duplicate`: an earlier event
    had the key. `bucket`: the bucket after the change, None when the bucket already had it.
    """

    counts: bool
    duplicate: bool
    bucket_key: BucketKey | None
    bucket: UsageBucket | None


@dataclass(frozen=True, slots=True)
class CanceledEvent:
    """One event a cancellation removed (or re-applies on replay)."""

    customer_id: str
    seen: SeenEvent
    bucket_key: BucketKey
    bucket: UsageBucket | None  # None when the bucket already had the removal


# The dead-letter reason of a cancel without customer that one partition could not match: the
# projector turns the misses of every partition into one `meter_event_not_found` dead letter.
CANCEL_NOT_IN_PARTITION = "meter_event_not_in_partition"
CANCEL_NOT_FOUND = "meter_event_not_found"


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    canceled: tuple[CanceledEvent, ...] = ()
    refused_code: str | None = None  # set when the cancel cannot apply to the event it found
    refused_message: str = ""
    not_here: bool = False  # a cancel without customer found no such event in this partition's log


def subtract_reading(usage: MeterUsage, reading: MeterReading) -> MeterUsage:
    """`usage` without one reading it counted, for aggregates that can subtract (can_subtract)."""
    return usage._replace(value_sum=EXACT_CONTEXT.subtract(usage.value_sum, reading.value),
                          event_count=usage.event_count - 1)


def can_subtract(aggregator: MeterAggregator) -> bool:
    """Whether a reading can be taken out of a usage state by subtraction (raw sum and count)."""
    return aggregator.event_time_window is None and aggregator.aggregation in (
        MeterAggregation.SUM,
        MeterAggregation.COUNT,
    )


ReadingsBetween = Callable[[int, int], Iterable[MeterReading]]  # [start, end) -> the readings kept there


def remove_reading(aggregator: MeterAggregator, usage: MeterUsage, reading: MeterReading, start_ms: int,
                   end_ms: int, readings_between: ReadingsBetween) -> MeterUsage:
    """`usage` of the readings in [start_ms, end_ms) without canceled `reading`: subtracted, or
    the part it decided folded again from the readings left (`readings_between`, the ledger's
    UsageLedger.readings of this customer and meter)."""
    if can_subtract(aggregator):
        return subtract_reading(usage, reading)
    initial = aggregator.initialize()
    if aggregator.event_time_window is not None:  # its window, folded again
        window_start_ms = aggregator.window_start_ms(reading.event_time_ms)
        window_end_ms = window_start_ms + aggregator.window_size_ms
        others = readings_between(max(start_ms, window_start_ms), min(end_ms, window_end_ms))
        return aggregator.merge(aggregator.without_window(usage, window_start_ms), aggregator.add_all(initial, others))
    usage = subtract_reading(usage, reading)  # `last`: a new latest only if it was the latest, from those before it
    if usage.latest != reading:
        return usage
    minute_end_ms = minute_bucket_start_ms(reading.event_time_ms) + MILLISECONDS_PER_MINUTE
    others = readings_between(start_ms, min(end_ms, minute_end_ms))
    return usage._replace(latest=aggregator.add_all(initial, others).latest)


_DUPLICATE = EventOutcome(counts=False, duplicate=True, bucket_key=None, bucket=None)


class UsageLedger:
    """Deduplicated minute buckets of every customer on one log (see the module docstring)."""

    def __init__(
        self,
        seen: MutableMapping[SeenKey, Mapping[str, SeenEvent]] | None = None,
        buckets: MutableMapping[BucketKey, UsageBucket] | None = None,
        dedupe_window_ms: int = DEFAULT_DEDUPE_WINDOW_MS,
    ) -> None:
        self.seen = {} if seen is None else seen
        self.buckets = {} if buckets is None else buckets
        self.dedupe_window_ms = dedupe_window_ms

    # --- reads ---------------------------------------------------------------------------------

    def bucket(self, customer_id: str, meter_id: str, bucket_start_ms: int) -> UsageBucket | None:
        return self.buckets.get((customer_id, meter_id, bucket_start_ms))

    def usage(
        self, customer_id: str, meter_id: str, start_ms: int, end_ms: int, aggregator: MeterAggregator
    ) -> MeterUsage:
        """The meter's usage of events with event time in [start_ms, end_ms) (minute-aligned bounds)."""
        total = aggregator.initialize()
        for bucket_start_ms in range(minute_bucket_start_ms(start_ms), end_ms, MILLISECONDS_PER_MINUTE):
            bucket = self.buckets.get((customer_id, meter_id, bucket_start_ms))
            if bucket is not None:
                total = aggregator.merge(total, bucket.usage)
        return total

    # --- writes --------------------------------------------------------------------------------

    def _earlier(self, offset: int, accepted: MeterEventAccepted, event_name: str) -> tuple[Any, SeenEvent | None, bool]:
        """(the seen record of the event's key, its first occurrence if it is this one's, whether
        this event is a duplicate of an earlier one)."""
        reading = accepted.reading
        by_customer = self.seen.get((event_name, reading.identifier))
        first = None if by_customer is None else by_customer.get(accepted.customer_id)
        if first is not None and first.offset != offset:
            duplicate = within_dedupe_window(first.reading.received_at_ms, reading.received_at_ms,
                                             self.dedupe_window_ms)
            if duplicate or offset < first.offset:
                return by_customer, first, True
            first = None  # outside the dedupe window: a new event with a reused identifier
        return by_customer, first, False

    def is_duplicate(self, offset: int, accepted: MeterEventAccepted, event_name: str) -> bool:
        """Whether apply_event would count nothing of this event (an earlier one had its key)."""
        return self._earlier(offset, accepted, event_name)[2]

    def apply_event(
        self, offset: int, accepted: MeterEventAccepted, event_name: str, aggregator: MeterAggregator
    ) -> EventOutcome:
        """Fold one accepted meter event at log position `offset` into its minute bucket."""
        reading, customer_id = accepted.reading, accepted.customer_id
        seen_key = (event_name, reading.identifier)
        by_customer, first, duplicate = self._earlier(offset, accepted, event_name)
        if duplicate:
            return _DUPLICATE
        if first is None:
            first = SeenEvent(offset, accepted.meter_id, reading)
            self.seen[seen_key] = {customer_id: first} if by_customer is None else {**by_customer, customer_id: first}
        event_time_ms = first.reading.event_time_ms
        bucket_key = (customer_id, accepted.meter_id, event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE)
        current = self.buckets.get(bucket_key)
        if current is None:
            usage, readings = aggregator.add(aggregator.initialize(), reading), ()
        elif current.applied_offset >= offset:
            return EventOutcome(True, False, bucket_key, None)
        else:
            usage, readings = aggregator.add(current.usage, reading), current.readings
        if not can_subtract(aggregator):
            readings = (*readings, reading)
        bucket = self.buckets[bucket_key] = UsageBucket(usage, offset, readings)
        return EventOutcome(True, False, bucket_key, bucket)

    def readings(self, customer_id: str, meter_id: str, start_ms: int, end_ms: int) -> list[MeterReading]:
        """The readings kept (meters that cannot subtract) with event time in [start_ms, end_ms)."""
        readings: list[MeterReading] = []
        for bucket_start_ms in range(minute_bucket_start_ms(start_ms), end_ms, MILLISECONDS_PER_MINUTE):
            bucket = self.buckets.get((customer_id, meter_id, bucket_start_ms))
            if bucket is not None:
                readings.extend(r for r in bucket.readings if start_ms <= r.event_time_ms < end_ms)
        return readings

    def _can_cancel(self, customer_id: str, first: SeenEvent, aggregator: MeterAggregator) -> bool:
        """Whether the event can be taken out: always by subtraction; by folding again only if its
        bucket kept it (a bucket a worker stored before buckets kept their readings did not)."""
        if can_subtract(aggregator):
            return True
        bucket = self.buckets.get((customer_id, first.meter_id, first.bucket_start_ms))
        return bucket is not None and first.reading in bucket.readings

    def apply_cancel(
        self, offset: int, cancel: MeterEventCanceled, aggregators_by_meter_id: Mapping[str, MeterAggregator]
    ) -> CancelOutcome:
        """Remove the event that `cancel` names, if it is here, cancellable and received <= 24 h before.

        With `cancel.customer_id` None, every customer here with that event name and identifier is
        a match (normally one); nothing matching is `not_here` (the event may live on another
        partition's log: only every partition's miss together says it does not exist).
        """
        seen_key = (cancel.event_name, cancel.identifier)
        by_customer = dict(self.seen.get(seen_key) or {})
        if cancel.customer_id is not None:
            by_customer = {k: v for k, v in by_customer.items() if k == cancel.customer_id}
        refuse = cancel.customer_id is not None
        if not by_customer:
            if refuse:
                return CancelOutcome(refused_code=CANCEL_NOT_FOUND,
                                     refused_message=f"no event {cancel.identifier!r} for this customer")
            return CancelOutcome(not_here=True)
        canceled = []
        refusal: CancelOutcome | None = None  # why a matching event stayed (without customer: if none went)
        updated = dict(self.seen.get(seen_key) or {})
        for customer_id, first in sorted(by_customer.items()):
            if first.canceled_offset is not None and first.canceled_offset != offset:
                continue  # already canceled by an earlier cancellation
            if first.canceled_offset is None:
                if not within_cancel_window(first.reading.received_at_ms, cancel.received_at_ms):
                    refusal = CancelOutcome(refused_code="meter_event_cancel_window_passed",
                                            refused_message="events can be canceled only within 24 hours")
                    if refuse:
                        return refusal
                    continue
                aggregator = aggregators_by_meter_id.get(first.meter_id)
                if aggregator is None or not self._can_cancel(customer_id, first, aggregator):
                    refusal = CancelOutcome(refused_code="meter_event_cancel_unsupported",
                                            refused_message="the event's bucket was stored before it kept its events")
                    if refuse:
                        return refusal
                    continue
                first = first._replace(canceled_offset=offset)
                updated[customer_id] = first
            bucket_key = (customer_id, first.meter_id, first.bucket_start_ms)
            current = self.buckets.get(bucket_key)
            bucket = None
            aggregator = aggregators_by_meter_id[first.meter_id]
            if current is not None and current.applied_offset < offset:
                if can_subtract(aggregator):
                    bucket = UsageBucket(subtract_reading(current.usage, first.reading), offset)
                else:  # the minute's other readings, folded again
                    readings = list(current.readings)
                    readings.remove(first.reading)
                    bucket = UsageBucket(aggregator.add_all(aggregator.initialize(), readings), offset, tuple(readings))
                self.buckets[bucket_key] = bucket
            canceled.append(CanceledEvent(customer_id=customer_id, seen=first, bucket_key=bucket_key, bucket=bucket))
        self.seen[seen_key] = updated
        if not canceled and refusal is not None:
            return refusal
        return CancelOutcome(canceled=tuple(canceled))


def bucket_value(aggregator: MeterAggregator, bucket: UsageBucket) -> tuple[Decimal, int]:
    """A bucket's aggregated value and counted events (what UsageBucketUpdated carries)."""
    return aggregator.result(bucket.usage), aggregator.event_count(bucket.usage)


def bucket_fact(customer_id: str, meter_id: str, bucket_start_ms: int, aggregator: MeterAggregator,
                bucket: UsageBucket, now_ms: int, period_usage: tuple[PeriodUsage, ...] = ()) -> UsageBucketUpdated:
    """What a bucket's UsageBucketUpdated carries: its aggregated value, counted events, the
    reading the value comes from where readers need it to merge buckets (billing/usage_windows.py),
    and `period_usage` (period_usage_of) when the batch changed it."""
    usage = bucket.usage
    value, event_count = bucket_value(aggregator, bucket)
    counted = counted_reading(aggregator, usage)
    return UsageBucketUpdated(
        customer_id=customer_id, meter_id=meter_id, bucket_start_ms=bucket_start_ms, value=value,
        event_count=event_count,
        updated_at_ms=usage.latest.received_at_ms if usage.latest else now_ms,
        counted_event_time_ms=None if counted is None else counted.event_time_ms,
        counted_received_at_ms=None if counted is None else counted.received_at_ms,
        counted_identifier=None if counted is None else counted.identifier,
        period_usage=period_usage)


def period_usage_of(period_usage: Mapping[tuple[str, int, str], MeterUsage],
                    split_period_usage: Collection[tuple[str, int, str]], meter_id: str,
                    aggregator: MeterAggregator) -> tuple[PeriodUsage, ...]:
    """The usage of `meter_id` in the periods of `split_period_usage` (a customer state's keys of
    periods whose minute buckets do not tell their usage: billing.customer.mark_split_minutes),
    from its `period_usage` (folded by exact event time; none yet is zero), as the facts carry it."""
    published = []
    for key in split_period_usage:
        if key[2] == meter_id:
            usage = period_usage.get(key)
            if usage is None:
                usage = aggregator.initialize()
            published.append(PeriodUsage(subscription_id=key[0], period_start_ms=key[1],
                                         value=aggregator.result(usage), event_count=aggregator.event_count(usage)))
    published.sort(key=lambda usage: (usage.subscription_id, usage.period_start_ms))
    return tuple(published)


def period_usage_fact(customer_id: str, meter_id: str, usage: PeriodUsage, updated_at_ms: int) -> PeriodUsageUpdated:
    """A PeriodUsage as a fact of its own, for a batch that has no bucket of the meter to carry it."""
    return PeriodUsageUpdated(
        customer_id=customer_id, subscription_id=usage.subscription_id, period_start_ms=usage.period_start_ms,
        meter_id=meter_id, value=usage.value, event_count=usage.event_count, updated_at_ms=updated_at_ms)

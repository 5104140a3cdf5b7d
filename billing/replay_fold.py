"""The analysts' replay fold: usage of one partition of customer-facts, folded in one pass, no I/O.

replay/usage.py reads the log and feeds each partition's facts here in log order. Meter events
are validated with billing.meter_events (the customer's now is the arrival time, or its test
clock's frozen time), then deduplicated, cancelled and bucketed by the rules of
billing.usage.UsageLedger, the one definition of usage. Events of hour/day-windowed and `last`
meters go through UsageLedger itself; events of raw sum and count meters (nearly all) go through
ReplayLedger, the same rules kept in plain tuples and lists for one pass over a log (building
UsageLedger's records per event cost more than reading and decoding it), turned into the same
MeterUsage values at the end. Property tests (tests/unit/billing/test_replay_fold.py) hold both,
and the fast path for the common event (PartitionFold._fold_plain_event), to UsageLedger's rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter
from typing import NamedTuple

from billing.catalog import Catalog
from billing.facts import (
    CustomerCreated,
    CustomerDeleted,
    MeterEventCanceled,
    MeterEventRecorded,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
)
from billing.meter_events import (
    MAX_EVENT_NAME_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    MAX_VALUE_INTEGER_DIGITS,
    customer_now_ms,
    is_timely,
    validate_meter_event,
)
from billing.meters import MeterAggregator, MeterReading, MeterUsage
from billing.money import EXACT_CONTEXT
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_MINUTE
from billing.usage import (
    DEFAULT_DEDUPE_WINDOW_MS,
    BucketKey,
    UsageLedger,
    can_subtract,
    within_cancel_window,
    within_dedupe_window,
)

GROUP_SIZES_MS = {"minute": MILLISECONDS_PER_MINUTE, "hour": MILLISECONDS_PER_HOUR, "day": MILLISECONDS_PER_DAY}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One customer's usage of one meter in one group (a minute, hour or UTC day)."""

    customer_id: str
    meter_id: str
    period_start_ms: int
    value: Decimal
    event_count: int




class _EveryCustomer:
    """Without the log's history: every customer counts as existing, but those deleted in the range read."""

    def __init__(self, deleted: set[str]) -> None:
        self.deleted = deleted

    def __contains__(self, customer_id: object) -> bool:
        return customer_id not in self.deleted


_EMPTY_SUM = MeterUsage().value_sum  # the sum a bucket starts from (MeterAggregator.initialize)
_NOT_CREATED = object()  # PartitionFold.customers.get's answer for a customer never created (None: no test clock)

# One accepted event of a raw meter as ReplayLedger keeps it, a plain tuple (one is built per event;
# a NamedTuple costs 3x more): (customer_id, identifier, event_time_ms, received_at_ms, value, canceled).
# The value is an int when the event's value is plain digits (nearly always), else a Decimal.
ReplayRecord = tuple[str, str, int, int, int | Decimal, bool]
_identifier_of = itemgetter(1)
# What FirstOccurrences keeps per identifier: the record of the one customer who sent it (the
# usual), or customer id -> record when several customers sent the same event name and identifier.
SeenEntry = ReplayRecord | dict[str, ReplayRecord]
# A ReplayLedger bucket, a list changed in place: [sum of the int values, sum of the Decimal values
# (from 0), event count, latest record in event time].
ReplayBucket = list


class FirstOccurrences:
    """The first occurrence of each identifier of one event name (UsageLedger.seen, for replay).

    A new identifier (nearly every event) needs only `identifiers`, a set, and `unindexed`, a list:
    its record goes to the index only when an event that is not new or a cancellation looks
    something up. A dict of 300,000 identifiers costs twice a set's insert: it keeps no hashes
    beside its keys, so each insert reads keys already there, which are out of cache.
    """

    __slots__ = ("identifiers", "unindexed", "_index")

    def __init__(self) -> None:
        self.identifiers: set[str] = set()  # every identifier folded so far
        self.unindexed: list[ReplayRecord] = []  # records of new identifiers not yet in _index
        self._index: dict[str, SeenEntry] = {}

    def get(self, identifier: str) -> SeenEntry | None:
        """The entry of `identifier`; None when it is new."""
        if identifier not in self.identifiers:
            return None
        self._index_unindexed()
        return self._index[identifier]

    def put(self, identifier: str, entry: SeenEntry) -> None:
        """Set the entry of `identifier` (of a new one: its one record)."""
        if identifier in self.identifiers:
            self._index_unindexed()
            self._index[identifier] = entry
        else:
            self.identifiers.add(identifier)
            self.unindexed.append(entry)

    def _index_unindexed(self) -> None:
        if self.unindexed:
            self._index.update(zip(map(_identifier_of, self.unindexed), self.unindexed))
            self.unindexed.clear()  # in place: PartitionFold holds its append


class ReplayLedger:
    """UsageLedger's rules (billing/usage.py) for raw sum and count meters, over one pass of one log, in replay's
    own compact state: plain tuples, sets and lists changed in place instead of UsageLedger's
    immutable records, which cost more to build per event than reading and decoding the event.

    The same rules, asked of the same functions (billing/usage.py within_dedupe_window and
    within_cancel_window, billing/meter_events.py is_timely): an event counts once per (customer,
    event name, identifier) within the dedupe window after its first receipt; a cancellation
    received within 24 hours of the event removes its value, once; a minute bucket keeps the exact sum, the count and the
    reading latest in event time (ties: later received, then greater identifier). Facts come once
    each and in log order, so UsageLedger's offset guards (against re-reads) would never fire and
    no offsets are kept. Plain digit values are summed as ints (Decimal arithmetic costs several
    times more), the others as Decimals from 0; `usage_buckets` adds the two parts, which is
    UsageLedger's sum to the last digit and exponent (exact sums do not depend on grouping, and
    their exponent is the least of their terms' and 0's), and gives each bucket as the MeterUsage
    UsageLedger holds.
    """

    def __init__(self, dedupe_window_ms: int = DEFAULT_DEDUPE_WINDOW_MS) -> None:
        self.dedupe_window_ms = dedupe_window_ms
        self.seen: dict[str, FirstOccurrences] = {}  # by event name
        self.buckets: dict[BucketKey, ReplayBucket] = {}

    def seen_of(self, event_name: str) -> FirstOccurrences:
        seen = self.seen.get(event_name)
        if seen is None:
            seen = self.seen[event_name] = FirstOccurrences()
        return seen

    def bucket(self, customer_id: str, meter_id: str, bucket_start_ms: int, record: ReplayRecord) -> ReplayBucket:
        """A minute's bucket; a new one is empty, with `record` (about to be added) as its latest."""
        bucket_key = (customer_id, meter_id, bucket_start_ms)
        bucket = self.buckets.get(bucket_key)
        if bucket is None:
            bucket = self.buckets[bucket_key] = [0, _EMPTY_SUM, 0, record]
        return bucket

    def add(self, event_name: str, meter_id: str, record: ReplayRecord) -> None:
        """Fold one accepted event (UsageLedger.apply_event)."""
        customer_id, identifier, event_time_ms, received_at_ms, value, _ = record
        seen = self.seen_of(event_name)
        earlier = seen.get(identifier)
        if earlier is not None:
            first = _first_occurrence(earlier, customer_id)
            if first is not None and within_dedupe_window(first[3], received_at_ms, self.dedupe_window_ms):
                return  # a duplicate counts nothing
        # new for this customer, or an identifier reused after the dedupe window: a new event
        seen.put(identifier, record if earlier is None else _with_first_occurrence(earlier, record))
        bucket = self.bucket(customer_id, meter_id, event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE, record)
        if type(value) is int:
            bucket[0] += value
        else:
            bucket[1] = EXACT_CONTEXT.add(bucket[1], value)
        bucket[2] += 1
        latest = bucket[3]
        if (event_time_ms, received_at_ms, identifier) > (latest[2], latest[3], latest[1]):
            bucket[3] = record

    def cancel(self, meter_id: str, cancel: MeterEventCanceled) -> None:
        """Fold a cancellation of an event of a sum or count meter (UsageLedger.apply_cancel)."""
        seen = self.seen_of(cancel.event_name)
        earlier = seen.get(cancel.identifier)
        for record in _occurrences(earlier):
            customer_id, identifier, event_time_ms, received_at_ms, value, canceled = record
            if (canceled or (cancel.customer_id is not None and cancel.customer_id != customer_id)
                    or not within_cancel_window(received_at_ms, cancel.received_at_ms)):
                continue
            earlier = _with_first_occurrence(earlier, (customer_id, identifier, event_time_ms, received_at_ms,
                                                       value, True))
            seen.put(identifier, earlier)
            bucket = self.buckets[(customer_id, meter_id, event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE)]
            if type(value) is int:
                bucket[0] -= value
            else:
                bucket[1] = EXACT_CONTEXT.subtract(bucket[1], value)
            bucket[2] -= 1

    def usage_buckets(self) -> Iterator[tuple[BucketKey, MeterUsage]]:
        """Every minute bucket, as UsageLedger's bucket.usage."""
        for bucket_key, (int_sum, decimal_sum, event_count, latest) in self.buckets.items():
            _, identifier, event_time_ms, received_at_ms, value, _ = latest
            yield bucket_key, MeterUsage(EXACT_CONTEXT.add(decimal_sum, int_sum), event_count,
                                         MeterReading(event_time_ms, received_at_ms, identifier, Decimal(value)))


def _occurrences(earlier: SeenEntry | None) -> tuple[ReplayRecord, ...]:
    if earlier is None:
        return ()
    return tuple(earlier.values()) if type(earlier) is dict else (earlier,)


def _first_occurrence(earlier: SeenEntry, customer_id: str) -> ReplayRecord | None:
    if type(earlier) is dict:
        return earlier.get(customer_id)
    return earlier if earlier[0] == customer_id else None


def _with_first_occurrence(earlier: SeenEntry, record: ReplayRecord) -> SeenEntry:
    """A seen entry with `record` as its customer's first occurrence (replacing any)."""
    customer_id = record[0]
    if type(earlier) is dict:
        earlier[customer_id] = record
        return earlier
    return record if earlier[0] == customer_id else {earlier[0]: earlier, customer_id: record}


class _PlainMeter(NamedTuple):
    """What PartitionFold.apply's fast path needs of one active raw meter's event name."""

    meter_id: str
    customer_payload_key: str
    value_payload_key: str
    # the event name's FirstOccurrences: its identifiers, their add and the unindexed records' append
    identifiers: set[str]
    add_identifier: Callable[[str], None]
    add_unindexed: Callable[[ReplayRecord], None]
    # customer -> [customer id, minute start, minute end, bucket]: a known customer on the wall
    # clock and the bucket of its last event's minute (a customer's events come mostly in
    # event-time order: the next is likely in the same minute, found without building a key)
    accounts: dict[str, list]


class PartitionFold:
    """One partition of customer-facts folded for usage, as the stream worker folds it. Facts come
    once each and in log order (as scan reads them)."""

    def __init__(self, catalog: Catalog, dedupe_window_ms: int = DEFAULT_DEDUPE_WINDOW_MS,
                 every_customer_exists: bool = False) -> None:
        self.catalog = catalog
        self.ledger = ReplayLedger(dedupe_window_ms)  # events of raw sum and count meters
        # of the meters that cannot subtract (hour/day-windowed, `last`): their buckets keep readings
        self.general_ledger = UsageLedger(dedupe_window_ms=dedupe_window_ms)
        self.customers: dict[str, str | None] = {}  # created customer -> its test clock id (deleted: gone)
        self.deleted_customers: set[str] = set()
        self._known_customers = _EveryCustomer(self.deleted_customers) if every_customer_exists else self.customers
        # customers.get(customer_id, self._clock_if_not_created) is None: a known customer on the wall clock
        self._clock_if_not_created = None if every_customer_exists else _NOT_CREATED
        self.clocks: dict[str, int] = {}  # test clock -> frozen time
        self.aggregators = {meter_id: catalog.aggregator(meter_id) for meter_id in catalog.meters}
        self.meter_events = 0
        self.rejected: Counter[str] = Counter()
        # The event names whose events may take apply's fast path: of active raw sum and count
        # meters (by the meter id's rules, as catalog.aggregator reads them).
        self._plain_meters: dict[str, _PlainMeter] = {}
        for event_name, meter in catalog.meters_by_event_name.items():
            if (meter.meter_id not in catalog.meter_status_changes  # (never deactivated: see validate_meter_event)
                    and can_subtract(self.aggregators[meter.meter_id])
                    and len(event_name) <= MAX_EVENT_NAME_LENGTH):
                seen = self.ledger.seen_of(event_name)
                self._plain_meters[event_name] = _PlainMeter(
                    meter.meter_id, meter.customer_payload_key, meter.value_payload_key,
                    seen.identifiers, seen.identifiers.add, seen.unindexed.append, {})

    def apply(self, offset: int, fact: object) -> None:
        """Fold the fact at `offset` (facts that do not bear on usage change nothing).

        The common fact is folded right here: a meter event that validate_meter_event surely
        accepts (an active raw meter, a known customer on the wall clock, a plain digit value, an
        event time in [arrival - 35 days, arrival + 5 minutes]) with a new identifier, added as
        ReplayLedger.add would add it. Nearly every replayed fact is one, and the fold has about a
        microsecond for it to keep near the speed of reading the log, so the general path's calls,
        re-checks and intermediate objects are skipped. Anything else takes _apply_other.
        """
        plain_meter = self._plain_meters.get(fact.event_name) if type(fact) is MeterEventRecorded else None
        if plain_meter is None:
            self._apply_other(offset, fact)
            return
        meter_id, customer_key, value_key, identifiers, add_identifier, add_unindexed, accounts = plain_meter
        payload, identifier = fact.payload, fact.identifier
        customer_id = payload.get(customer_key)
        account = accounts.get(customer_id) or self._open_account(accounts, customer_id)
        value_text = payload.get(value_key)
        event_time_ms, received_at_ms = fact.event_time_ms, fact.received_at_ms
        if not (account is not None
                # is_surely_valid_value, inlined
                and type(value_text) is str and len(value_text) <= MAX_VALUE_INTEGER_DIGITS
                and value_text.isascii() and value_text.isdigit()
                and len(identifier) <= MAX_IDENTIFIER_LENGTH
                and is_timely(event_time_ms, received_at_ms)
                and identifier not in identifiers):
            self._apply_other(offset, fact)
            return
        self.meter_events += 1
        value = int(value_text)
        # account[0]: the account's copy of the customer id, not this event's (which is freed)
        record = (account[0], identifier, event_time_ms, received_at_ms, value, False)
        add_identifier(identifier)
        add_unindexed(record)
        if account[1] <= event_time_ms < account[2]:
            bucket = account[3]
        else:
            bucket_start_ms = event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE
            bucket = self.ledger.bucket(account[0], meter_id, bucket_start_ms, record)
            account[1:] = bucket_start_ms, bucket_start_ms + MILLISECONDS_PER_MINUTE, bucket
        bucket[0] += value
        bucket[2] += 1
        latest = bucket[3]
        if event_time_ms >= latest[2] and (event_time_ms > latest[2] or received_at_ms > latest[3]
                                           or (received_at_ms == latest[3] and identifier > latest[1])):
            bucket[3] = record

    def apply_directory(self, fact: object) -> None:
        """Fold a fact that says who exists or what time a test clock shows."""
        fact_class = type(fact)
        if fact_class is CustomerCreated:
            if self.customers.setdefault(fact.customer_id, fact.test_clock_id) is not None:
                # on a test clock (a customer taken to exist may have an account): its events
                # take the general path, judged by the clock
                for plain_meter in self._plain_meters.values():
                    plain_meter.accounts.pop(fact.customer_id, None)
        elif fact_class is CustomerDeleted:  # its later events are refused, as the engine refuses them
            self.customers.pop(fact.customer_id, None)
            self.deleted_customers.add(fact.customer_id)
            for plain_meter in self._plain_meters.values():
                plain_meter.accounts.pop(fact.customer_id, None)
        elif fact_class is TestClockCreated or fact_class is TestClockAdvanced:
            self.clocks[fact.test_clock_id] = max(self.clocks.get(fact.test_clock_id, fact.frozen_time_ms),
                                                  fact.frozen_time_ms)
        elif fact_class is TestClockDeleted:
            self.clocks.pop(fact.test_clock_id, None)

    def usage_buckets(self) -> Iterator[tuple[BucketKey, MeterUsage]]:
        """Every minute bucket's usage, as UsageLedger's buckets hold it."""
        yield from self.ledger.usage_buckets()
        for bucket_key, bucket in self.general_ledger.buckets.items():
            yield bucket_key, bucket.usage

    def _apply_other(self, offset: int, fact: object) -> None:
        fact_class = type(fact)
        if fact_class is MeterEventRecorded:
            self.meter_events += 1
            self._fold_event(offset, fact)
        elif fact_class is MeterEventCanceled:
            self._fold_cancel(offset, fact)
        else:
            self.apply_directory(fact)

    def _fold_event(self, offset: int, event: MeterEventRecorded) -> None:
        catalog = self.catalog
        meter = catalog.meters_by_event_name.get(event.event_name)
        frozen_ms = None
        if meter is not None:
            clock = self.customers.get(event.payload.get(meter.customer_payload_key, ""))
            if clock is not None:
                frozen_ms = self.clocks.get(clock, 0)
        verdict = validate_meter_event(event, catalog.meters_by_event_name, catalog.meter_inactive_at,
                                       self._known_customers, customer_now_ms(event.received_at_ms, frozen_ms))
        meter_id = getattr(verdict, "meter_id", None)
        if meter_id is None:
            self.rejected[str(verdict.code)] += 1
            return
        aggregator = self.aggregators[meter_id]
        if not can_subtract(aggregator):
            self.general_ledger.apply_event(offset, verdict, event.event_name, aggregator)
            return
        reading = verdict.reading
        self.ledger.add(event.event_name, meter_id, (verdict.customer_id, reading.identifier, reading.event_time_ms,
                                                     reading.received_at_ms, reading.value, False))

    def _fold_cancel(self, offset: int, cancel: MeterEventCanceled) -> None:
        meter = self.catalog.meters_by_event_name.get(cancel.event_name)
        if meter is None:  # (no event has an event name without a meter)
            return
        if can_subtract(self.aggregators[meter.meter_id]):
            self.ledger.cancel(meter.meter_id, cancel)
        else:
            self.general_ledger.apply_cancel(offset, cancel, self.aggregators)

    def _open_account(self, accounts: dict[str, list], customer_id: str | None) -> list | None:
        """A new account when `customer_id` is a known customer on the wall clock, else None."""
        if not customer_id or self.customers.get(customer_id, self._clock_if_not_created) is not None \
                or customer_id in self.deleted_customers:
            return None
        account = accounts[customer_id] = [customer_id, 0, 0, None]
        return account


def group_rows(buckets: Iterable[tuple[BucketKey, MeterUsage]], catalog: Catalog, start_ms: int, end_ms: int,
               group_by: str, customer_ids: Collection[str] = (), meter_ids: Collection[str] = ()
               ) -> tuple[UsageRow, ...]:
    """Minute buckets (key, usage) with start in [start_ms, end_ms), merged per (customer, meter,
    group), sorted."""
    size_ms = GROUP_SIZES_MS[group_by]
    groups: dict[tuple[str, str, int], MeterUsage] = {}
    aggregators: dict[str, MeterAggregator] = {}
    for (customer_id, meter_id, bucket_start_ms), usage in buckets:
        if not start_ms <= bucket_start_ms < end_ms:
            continue
        if (customer_ids and customer_id not in customer_ids) or (meter_ids and meter_id not in meter_ids):
            continue
        aggregator = aggregators.get(meter_id) or aggregators.setdefault(meter_id, catalog.aggregator(meter_id))
        key = (customer_id, meter_id, bucket_start_ms - bucket_start_ms % size_ms)
        current = groups.get(key)
        groups[key] = usage if current is None else aggregator.merge(current, usage)
    rows = []
    for (customer_id, meter_id, period_start_ms), usage in sorted(groups.items()):
        aggregator = aggregators[meter_id]
        rows.append(UsageRow(customer_id, meter_id, period_start_ms, aggregator.result(usage),
                             aggregator.event_count(usage)))
    return tuple(rows)

"""Exact replay of the meter-event log for analysts: usage of any window, as the engine computes it.

    result = replay_usage(settings, start_ms, end_ms, group_by="hour")
    for row in result.rows: print(row.customer_id, row.meter_id, row.period_start_ms, row.value)

How (DESIGN.md, Reads): an event's time is at most 5 minutes after its arrival, and the Kafka record
timestamp is the arrival time, so every event of [start, end) arrived after start - 5 minutes:
seek each partition of customer-facts there by arrival time (offsets_for_times) and read to
end + the lateness limit (35 days) or the log end, whichever comes first. Each partition is folded
on its own, in log order, exactly as the stream worker folds it (billing/partition.py): meter events
validated with billing.meter_events (the customer's now is the arrival time, or its test clock's
frozen time), then deduplicated, cancelled and bucketed by the rules of billing.usage.UsageLedger,
the one definition of usage. Events of hour/day-windowed and `last` meters go through UsageLedger
itself; events of raw sum and count meters (nearly all) go through ReplayLedger, the same rules
kept in plain tuples and lists for one pass over a log (building UsageLedger's records per event
cost more than reading and decoding it), turned into the same MeterUsage values at the end.
Property tests hold both, and the fast path for the common event (PartitionFold._fold_plain_event),
to the rows of UsageLedger. Buckets whose minute lies in [start, end) are then grouped.

What the engine knows from before the seek point (which customers exist, on which test clock) is
read from the start of each partition, decoding only those facts (picked by schema fingerprint).
Limits, stated: events are validated against the catalog as it is now (the engine used the
catalog of the moment); an identifier first used more than 5 minutes before the window and
reused for an event inside it would be deduplicated by the engine but counted here.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

from billing.catalog import Catalog
from billing.facts import (
    CustomerCreated,
    MeterEventCanceled,
    MeterEventRecorded,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
)
from billing.meter_events import (
    MAX_EVENT_AGE_MS,
    MAX_EVENT_LEAD_MS,
    MAX_EVENT_NAME_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    MAX_VALUE_INTEGER_DIGITS,
    customer_now_ms,
    validate_meter_event,
)
from billing.meters import MeterAggregator, MeterReading, MeterUsage
from billing.money import EXACT_CONTEXT
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_MINUTE
from billing.usage import (
    CANCEL_WINDOW_MS,
    DEFAULT_DEDUPE_WINDOW_MS,
    BucketKey,
    SeenKey,
    UsageLedger,
    can_subtract,
)
from drawdown.settings import Settings

GROUP_SIZES_MS = {"minute": MILLISECONDS_PER_MINUTE, "hour": MILLISECONDS_PER_HOUR, "day": MILLISECONDS_PER_DAY}
SEEK_BACK_MS = MAX_EVENT_LEAD_MS  # an event's time is at most this much after its arrival
LATENESS_LIMIT_MS = MAX_EVENT_AGE_MS  # an event may arrive up to this much after its time
CONSUME_BATCH_RECORDS = 10_000
# Facts the fold needs from before the seek point: who exists, and test clocks' frozen times.
_DIRECTORY_FACTS = (CustomerCreated, TestClockCreated, TestClockAdvanced, TestClockDeleted)

Progress = Callable[[int, int], None]  # (records read, records to read)


class ReplayWindowError(ValueError):
    """The window is empty or not minute-aligned (usage is kept per event-time minute)."""

    code = "replay_window_invalid"


class ReplayTopicMissing(LookupError):
    """The meter-event topic is not there: wrong prefix or broker."""

    code = "replay_topic_missing"


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One customer's usage of one meter in one group (a minute, hour or UTC day)."""

    customer_id: str
    meter_id: str
    period_start_ms: int
    value: Decimal
    event_count: int


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Read [first_offset, stop_offset) of one partition; fold meter events from fold_offset on."""

    partition: int
    first_offset: int
    fold_offset: int
    stop_offset: int

    @property
    def record_count(self) -> int:
        return max(0, self.stop_offset - self.first_offset)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    start_ms: int
    end_ms: int
    group_by: str
    rows: tuple[UsageRow, ...]
    records_read: int
    meter_events: int
    rejected: Mapping[str, int]  # reason code -> events the engine would reject
    seconds: float


class _EveryCustomer:
    def __contains__(self, customer_id: object) -> bool:
        return True


_EMPTY_SUM = MeterUsage().value_sum  # the sum a bucket starts from (MeterAggregator.initialize)
_LEAST_LATENESS_MS = -MAX_EVENT_LEAD_MS  # arrival - event time: an event may be 5 minutes ahead
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

    The same rules: an event counts once per (customer, event name, identifier) within the dedupe
    window after its first receipt; a cancellation received within 24 hours of the event removes
    its value, once; a minute bucket keeps the exact sum, the count and the
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
            if first is not None and received_at_ms - first[3] <= self.dedupe_window_ms:
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
                    or cancel.received_at_ms - received_at_ms > CANCEL_WINDOW_MS):
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
        self.customers: dict[str, str | None] = {}  # created customer -> its test clock id
        self._known_customers = _EveryCustomer() if every_customer_exists else self.customers
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
                and _LEAST_LATENESS_MS <= received_at_ms - event_time_ms <= MAX_EVENT_AGE_MS
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
        if not customer_id or self.customers.get(customer_id, self._clock_if_not_created) is not None:
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


def check_window(start_ms: int, end_ms: int) -> None:
    if end_ms <= start_ms:
        raise ReplayWindowError(f"the window's end ({end_ms}) must be after its start ({start_ms})")
    if start_ms % MILLISECONDS_PER_MINUTE or end_ms % MILLISECONDS_PER_MINUTE:
        raise ReplayWindowError("start and end must be whole minutes: usage is kept per event-time minute")


def partition_of(customer_id: str, partition_count: int) -> int:
    """The partition a customer's facts are in (murmur2, as streams.topics.PRODUCER_PARTITIONER)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partition_count


def plan_ranges(consumer, topic: str, partitions: Iterable[int], start_ms: int, end_ms: int,
                lateness_ms: int = LATENESS_LIMIT_MS, with_history: bool = True,
                timeout_s: float = 30.0) -> list[PartitionRange]:
    """Per partition: fold from the first record that arrived at or after start - 5 minutes, stop
    before the first that arrived after end + lateness (or at the log end as of now)."""
    from confluent_kafka import TopicPartition

    partitions = sorted(partitions)
    seek_at = consumer.offsets_for_times([TopicPartition(topic, p, start_ms - SEEK_BACK_MS) for p in partitions],
                                         timeout=timeout_s)
    stop_at = consumer.offsets_for_times([TopicPartition(topic, p, end_ms + lateness_ms + 1) for p in partitions],
                                         timeout=timeout_s)
    ranges = []
    for partition, seek, stop in zip(partitions, seek_at, stop_at, strict=True):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        stop_offset = high if stop.offset < 0 else min(stop.offset, high)
        fold_offset = stop_offset if seek.offset < 0 else max(seek.offset, low)
        if fold_offset >= stop_offset:
            continue  # nothing arrived in the range: no usage here, and no history needed
        first_offset = low if with_history else fold_offset
        ranges.append(PartitionRange(partition, first_offset, fold_offset, stop_offset))
    return ranges


def directory_fingerprints() -> frozenset[bytes]:
    """Single-object headers (magic + fingerprint) of the facts read from before the seek point."""
    from schemas.schema_files import load_catalogue
    from schemas.codec import SINGLE_OBJECT_MAGIC

    return frozenset(SINGLE_OBJECT_MAGIC + fingerprint for fingerprint, schema in load_catalogue().by_fingerprint.items()
                     if schema.fact_class in _DIRECTORY_FACTS)


def scan(settings: Settings, ranges: list[PartitionRange], folds: Mapping[int, PartitionFold], *,
         customer_keys: Collection[bytes] = (), codec=None, progress: Progress | None = None,
         timeout_s: float = 60.0) -> int:
    """Read every range and fold it; returns the records read. `customer_keys` (when given) skips
    records of other customers without decoding them (records with an empty key are kept: time
    facts and cancellations without a customer)."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.errors import UndecodableFact

    topic = settings.topic("customer-facts")
    wanted = [r for r in ranges if r.record_count > 0]
    total = sum(r.record_count for r in wanted)
    if not wanted:
        return 0
    decode = codec.decode
    history_headers = directory_fingerprints()
    fold_from = {r.partition: r.fold_offset for r in wanted}
    stop = {r.partition: r.stop_offset for r in wanted}
    remaining = {r.partition for r in wanted}
    consumer = Consumer({
        "bootstrap.servers": settings.effective_kafka_bootstrap_servers,
        "group.id": f"drawdown-replay-{uuid.uuid4().hex[:8]}",  # assign() only: never joins a group
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "fetch.max.bytes": 64 * 1024 * 1024,  # long sequential reads: large fetches
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    })
    read = 0
    current_partition = last_offset = fold_offset = fold = apply = None
    # The fold keeps a record per event (dedupe) and builds no reference cycles: the cyclic garbage
    # collector would only rescan that growing heap again and again (measured: about half the
    # replay's time), so it is paused for the scan.
    collecting = gc.isenabled()
    gc.disable()
    try:
        consumer.assign([TopicPartition(topic, r.partition, r.first_offset) for r in wanted])
        idle_since_s = time.monotonic()
        while remaining:
            # Never ask for more than is left: consume() waits its whole timeout for a full batch.
            batch = consumer.consume(num_messages=max(1, min(CONSUME_BATCH_RECORDS, total - read)), timeout=0.5)
            if not batch:
                # Offsets can skip (transaction markers): the position tells when a partition is done.
                for position in consumer.position([TopicPartition(topic, p) for p in remaining]):
                    if position.offset >= stop[position.partition]:
                        remaining.discard(position.partition)
                if remaining and time.monotonic() - idle_since_s > timeout_s:
                    raise TimeoutError(f"replay: no records for {timeout_s} s; partitions {sorted(remaining)} unfinished")
                continue
            idle_since_s = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if partition != current_partition:  # a batch comes in runs of one partition's records
                    current_partition = partition
                    last_offset, fold_offset, fold = stop[partition] - 1, fold_from[partition], folds[partition]
                    apply = fold.apply
                if offset >= last_offset:
                    remaining.discard(partition)
                    if offset > last_offset:
                        continue
                read += 1
                if customer_keys:
                    key = message.key()
                    if key and key not in customer_keys:
                        continue
                value = message.value()
                before_window = offset < fold_offset
                if before_window and value[:10] not in history_headers and value[:1] != b"\x00":
                    continue  # not a directory fact: nothing to learn from before the window
                try:
                    fact = decode(value)
                except UndecodableFact:
                    continue  # the engine dead-letters it: it counts nothing
                if before_window:
                    fold.apply_directory(fact)
                else:
                    apply(offset, fact)
            if progress is not None:
                progress(read, total)
    finally:
        if collecting:
            gc.enable()
        consumer.close()
    return read


def replay_usage(
    settings: Settings,
    start_ms: int,
    end_ms: int,
    *,
    customer_ids: Collection[str] = (),
    meter_ids: Collection[str] = (),
    group_by: str = "minute",
    catalog: Catalog | None = None,
    codec=None,
    progress: Progress | None = None,
    with_history: bool = True,
    lateness_ms: int = LATENESS_LIMIT_MS,
    processes: int | None = None,
) -> ReplayResult:
    """Usage per (customer, meter, group) of events with event time in [start_ms, end_ms), exactly
    as the engine counts it (see the module docstring).

    `with_history=False` skips reading the partitions from their start for who exists: faster on
    long logs, and then every customer counts as existing and on the wall clock (exact unless the
    window holds events of unknown customers or of customers on test clocks).

    `processes` (default: one per core, at most one per partition): partitions are folded
    independently (a customer's facts are all in one), so they are split across forked
    processes, each reading and folding its own, and their rows (disjoint) are merged.
    """
    from confluent_kafka import Consumer

    from producers.catalog_reader import read_catalog
    from schemas.codec import FactCodec

    check_window(start_ms, end_ms)
    if group_by not in GROUP_SIZES_MS:
        raise ReplayWindowError(f"group_by must be one of {', '.join(GROUP_SIZES_MS)}, not {group_by!r}")
    started_s = time.monotonic()
    codec = codec or FactCodec(settings.schema_registry_url or None)
    catalog = catalog if catalog is not None else read_catalog(settings, codec=codec)
    topic = settings.topic("customer-facts")
    planner = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                        "group.id": f"drawdown-replay-plan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        metadata = planner.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise ReplayTopicMissing(f"topic {topic} does not exist (is DRAWDOWN_TOPIC_PREFIX right?)")
        partition_count = len(metadata.partitions)
        partitions = ({partition_of(c, partition_count) for c in customer_ids} if customer_ids
                      else set(range(partition_count)))
        ranges = plan_ranges(planner, topic, partitions, start_ms, end_ms, lateness_ms, with_history)
    finally:
        planner.close()
    processes = max(1, min(processes or os.cpu_count() or 1, len(ranges)))
    job = _ReplayJob(settings, catalog, start_ms, end_ms, group_by, tuple(customer_ids), tuple(meter_ids),
                     with_history)
    if processes == 1:
        part = job.run(ranges, progress, codec)
    else:
        part = _run_in_processes(job, _split(ranges, processes), progress)
    return ReplayResult(start_ms=start_ms, end_ms=end_ms, group_by=group_by, rows=part.rows, records_read=part.read,
                        meter_events=part.meter_events, rejected=dict(part.rejected),
                        seconds=time.monotonic() - started_s)


@dataclass(frozen=True, slots=True)
class _PartialResult:
    rows: tuple[UsageRow, ...]
    read: int
    meter_events: int
    rejected: Mapping[str, int]


@dataclass(frozen=True)
class _ReplayJob:
    """Scan and fold some partition ranges, then group their buckets (in this or a child process)."""

    settings: Settings
    catalog: Catalog
    start_ms: int
    end_ms: int
    group_by: str
    customer_ids: tuple[str, ...]
    meter_ids: tuple[str, ...]
    with_history: bool

    def run(self, ranges: list[PartitionRange], progress: Progress | None = None, codec=None) -> _PartialResult:
        # scan() pauses the cyclic garbage collector while the folds grow; it stays paused until
        # they are dropped (on return from _fold_and_group): back on with the folds alive, its next
        # passes traverse their whole heap, which has no cycles, while the rows are grouped
        # (measured after 300,000 events: 0.3 to 0.9 s, the grouping itself 0.01 s).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._fold_and_group(ranges, progress, codec)
        finally:
            if collecting:
                gc.enable()

    def _fold_and_group(self, ranges: list[PartitionRange], progress: Progress | None, codec) -> _PartialResult:
        if codec is None:
            from schemas.codec import FactCodec

            codec = FactCodec(self.settings.schema_registry_url or None)
        folds = {r.partition: PartitionFold(self.catalog, self.settings.dedupe_window_seconds * 1000,
                                            every_customer_exists=not self.with_history) for r in ranges}
        read = scan(self.settings, ranges, folds, customer_keys={c.encode() for c in self.customer_ids},
                    codec=codec, progress=progress)
        rows = group_rows((bucket for fold in folds.values() for bucket in fold.usage_buckets()), self.catalog,
                          self.start_ms, self.end_ms, self.group_by, set(self.customer_ids), set(self.meter_ids))
        rejected: Counter[str] = Counter()
        for fold in folds.values():
            rejected.update(fold.rejected)
        return _PartialResult(rows, read, sum(fold.meter_events for fold in folds.values()), dict(rejected))


def _split(ranges: list[PartitionRange], parts: int) -> list[list[PartitionRange]]:
    """Ranges in `parts` groups of about equal record counts (largest first, to the lightest group)."""
    groups: list[list[PartitionRange]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for partition_range in sorted(ranges, key=lambda r: r.record_count, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(partition_range)
        loads[lightest] += partition_range.record_count
    return [group for group in groups if group]


def _child(job: _ReplayJob, ranges: list[PartitionRange], slot: int, counts, results) -> None:
    def report(done: int, total: int) -> None:
        counts[slot] = done

    try:
        results.put((slot, job.run(ranges, report)))
    except BaseException as error:  # noqa: BLE001 - handed to the parent, which raises it
        results.put((slot, error))


def _read_only(items: dict) -> Mapping:
    return MappingProxyType(items)


def _run_in_processes(job: _ReplayJob, groups: list[list[PartitionRange]],
                      progress: Progress | None) -> _PartialResult:
    """Each group of ranges in a child process; rows merged and sorted, counts summed, the first
    failure raised. Children come from a fork server (started once, with this module imported, and
    no Kafka client): a plain fork of a process with live librdkafka threads can crash the child."""
    import copyreg
    import multiprocessing
    import queue

    copyreg.pickle(MappingProxyType, lambda proxy: (_read_only, (dict(proxy),)))  # the catalog's maps
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["replay.usage"])
    counts = context.Array("q", len(groups), lock=False)
    results = context.Queue()
    total = sum(r.record_count for group in groups for r in group)
    children = [context.Process(target=_child, args=(job, group, slot, counts, results), daemon=True)
                for slot, group in enumerate(groups)]
    for child in children:
        child.start()
    parts: dict[int, _PartialResult] = {}
    try:
        while len(parts) < len(children):
            try:
                slot, part = results.get(timeout=0.25)
            except queue.Empty:
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"replay: a scanning process died (exit code {dead[0].exitcode})") from None
            else:
                if isinstance(part, BaseException):
                    raise part
                parts[slot] = part
            if progress is not None:
                progress(sum(counts), total)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    rejected: Counter[str] = Counter()
    for part in parts.values():
        rejected.update(part.rejected)
    rows = sorted((row for part in parts.values() for row in part.rows),
                  key=lambda row: (row.customer_id, row.meter_id, row.period_start_ms))
    return _PartialResult(tuple(rows),
                          sum(part.read for part in parts.values()),
                          sum(part.meter_events for part in parts.values()), dict(rejected))

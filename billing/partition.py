"""The partition fold: one partition of drawdown.customer-facts, folded fact by fact, no I/O.

The stream worker (streams/worker.py) feeds it decoded facts in offset order, its state in
changelogged tables behind write-back caches; tests feed it facts with state in dicts. The money is
computed by the rules next to it (usage.py, customer.py); this module decides which state a fact
touches, what "now" is, and what is due when time passes, and holds the exactly-once guards.

Exactly once: every record (customer state, usage bucket, seen event, this partition's record)
carries the last offset it applied and skips facts at or below it, so re-processing a batch after
a crash changes nothing that was already written, and re-emits exactly the facts that were lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import NamedTuple

from billing.alerts import AlertWatch, adopt_meter_alerts, change_status, define_alert
from billing.bounds import AMOUNT_OUT_OF_RANGE, safe_quantity
from billing.catalog import Catalog
from billing.customer import (
    INVOICE_LIFECYCLE_FACTS,
    CustomerState,
    FoldConfig,
    Rejected,
    add_usage,
    advance_time,
    check_customer_amounts,
    copy_state,
    evolve,
    live_balance_facts,
    next_due_ms,
    open_period_usage_span,
    remove_usage,
    usage_within,
)
from billing.errors import BillingError
from billing.facts import (
    AlertStatus,
    BillingAlertCreated,
    BillingAlertCrossed,
    BillingAlertStatusChanged,
    CreditBalanceTransaction,
    CreditGrantCreated,
    CreditGrantExpired,
    CreditGrantUpdated,
    CreditGrantVoided,
    CustomerCreated,
    CustomerDeleted,
    CustomerUpdated,
    DeadLetter,
    InvoiceFinalized,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
    InvoiceVoidRequested,
    LiveBalanceChanged,
    LowBalanceAlert,
    MeterEventCanceled,
    MeterEventRecorded,
    SubscriptionCanceled,
    SubscriptionCancelScheduled,
    SubscriptionCreated,
    SubscriptionUpdated,
    InvoiceUpdated,
    InvoiceItemUpdated,
    SubscriptionItemsChanged,
    SubscriptionItemUpdated,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
    TimeTicked,
    UsageBucketUpdated,
    PeriodUsageUpdated,
)
from billing.meters import MeterAggregator, MeterReading, add_plain
from billing.meter_events import (
    MAX_EVENT_NAME_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    MAX_VALUE_INTEGER_DIGITS,
    MeterEventRejected,
    customer_now_ms,
    is_timely,
    validate_meter_event,
)
from billing.periods import MILLISECONDS_PER_MINUTE
from billing.usage import (CANCEL_NOT_IN_PARTITION, BucketKey, SeenEvent, UsageBucket, UsageLedger, bucket_fact,
                           can_subtract, period_usage_fact, period_usage_of)

CUSTOMER_FACTS = (CustomerCreated, CustomerUpdated, CustomerDeleted, SubscriptionCreated, SubscriptionUpdated,
                  SubscriptionItemsChanged, SubscriptionItemUpdated, SubscriptionCancelScheduled,
                  SubscriptionCanceled, CreditGrantCreated, CreditGrantUpdated, CreditGrantExpired,
                  CreditGrantVoided, InvoiceVoidRequested, BillingAlertCreated, BillingAlertStatusChanged,
                  InvoiceUpdated, InvoiceItemUpdated, *INVOICE_LIFECYCLE_FACTS)

_new_tuple = tuple.__new__
CACHED_USAGE_KEYS = 10_000  # customers whose period-usage keys the fast path keeps (see _usage_keys)

# Why a fact that the billing rules do not refuse still cannot be taken (besides AMOUNT_OUT_OF_RANGE):
FOLD_FAILED = "fold_failed"  # the fold raised: a bug or an input nobody foresaw
UNENCODABLE_OUTPUT = "unencodable_output"  # a fact it derives does not fit its schema

# Where each derived fact goes (short topic names, see streams/topics.py).
OUTPUT_TOPIC = {
    InvoiceFinalized: "invoices",
    InvoiceVoided: "invoices",
    InvoicePaid: "invoices",
    InvoiceMarkedUncollectible: "invoices",
    CreditBalanceTransaction: "credit-balance-transactions",
    UsageBucketUpdated: "usage-buckets",
    PeriodUsageUpdated: "usage-buckets",
    LiveBalanceChanged: "live-balances",
    LowBalanceAlert: "live-balances",
    BillingAlertCrossed: "live-balances",
    DeadLetter: "dead-letters",
}


@dataclass(slots=True)
class PartitionState:
    """What one partition knows about time: the last tick and every test clock's frozen time."""

    applied_offset: int = -1
    now_ms: int = 0
    clocks: dict[str, int] = field(default_factory=dict)
    # The last source offset whose whole batch (outputs and every state record of both tables) was
    # acknowledged: the worker resumes reading at durable_offset + 1, whatever Faust committed. It
    # lags applied_offset by a batch (a record written in batch N can only vouch for batch N - 1).
    durable_offset: int = -1
    # Time as it stood at durable_offset. Facts re-read after a restart must be judged by the time
    # they were first judged by (a meter event's "now" is its test clock's time): with the clocks of
    # a later batch, an event the first pass accepted could be rejected as too old, its dedupe record
    # (lost with that batch) not rebuilt, and a later retry of it counted as new.
    durable_now_ms: int | None = None
    durable_clocks: dict[str, int] | None = None
    # Usage alerts without a customer filter (they come to every partition), as template watches by
    # alert id: each customer of the meter adopts a copy (billing.alerts.adopt_meter_alerts).
    meter_alerts: dict[str, AlertWatch] = field(default_factory=dict)
    # The latest received_at of a meter event counted here, and as of durable_offset: what the
    # purge of usage state judges by (billing/retention.py, receipt_floor_ms).
    latest_received_ms: int = 0
    durable_latest_received_ms: int = 0

    def mark_durable(self, offset: int, now_ms: int, clocks: dict[str, int], latest_received_ms: int = 0) -> None:
        """Every fact up to `offset` is durable; `now_ms`, `clocks` and `latest_received_ms` are as of `offset`."""
        if offset >= self.durable_offset:
            self.durable_offset, self.durable_now_ms, self.durable_clocks = offset, now_ms, dict(clocks)
            self.durable_latest_received_ms = max(self.durable_latest_received_ms, latest_received_ms)

    def resumed(self) -> PartitionState:
        """This state as a worker resumes it, at durable_offset + 1: time goes back to what it was
        there (time facts re-read move it forward again); the offsets applied stay (each record
        guards its own)."""
        if self.durable_offset < 0:
            now_ms, clocks = 0, {}
        elif self.durable_now_ms is None:  # written before time was recorded with the offset
            now_ms, clocks = self.now_ms, self.clocks
        else:
            now_ms, clocks = self.durable_now_ms, self.durable_clocks or {}
        return PartitionState(applied_offset=self.applied_offset, now_ms=now_ms, clocks=dict(clocks),
                              durable_offset=self.durable_offset, durable_now_ms=self.durable_now_ms,
                              durable_clocks=self.durable_clocks, meter_alerts=dict(self.meter_alerts),
                              latest_received_ms=self.durable_latest_received_ms,
                              durable_latest_received_ms=self.durable_latest_received_ms)


class _PlainMeter(NamedTuple):
    """What the fast path of PartitionProcessor._meter_event needs of an active raw sum or count
    meter's event name (readings are summed, counted and the latest kept; the others' buckets keep
    their readings too, for cancels: billing/usage.py)."""

    meter_id: str
    customer_payload_key: str
    value_payload_key: str
    aggregator: MeterAggregator
    safe_quantity: Decimal | None  # period quantities up to it rate surely in range (billing/bounds.py)


class _KnownCustomers:
    def __init__(self, customers: MutableMapping[str, CustomerState]) -> None:
        self._customers = customers

    def __contains__(self, customer_id: object) -> bool:
        state = self._customers.get(customer_id)  # type: ignore[arg-type]
        return state is not None and state.exists


class PartitionProcessor:
    """Folds one partition's facts into its customers, usage ledger and time record.

    No poison pill: a fact that cannot be folded (the fold raises, an amount would leave a 64-bit
    integer, a fact it derives cannot be encoded) becomes a dead letter and the partition goes on.
    What it would change is changed on a copy of the customer (or checked before anything is
    changed, for meter events), so the customer stays as it was before that fact."""

    def __init__(self, *, topic: str, partition: int, customers: MutableMapping[str, CustomerState],
                 ledger: UsageLedger, partition_state: PartitionState, catalog: Catalog, config: FoldConfig,
                 existing_customers: Iterable[CustomerState] = (),
                 check_output: Callable[[object], object] | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.customers = customers
        self.ledger = ledger
        self.state = partition_state
        self.catalog = catalog
        self.config = config
        self.check_output = check_output  # raises on a derived fact that cannot be emitted (the codec's encode)
        self._safe_quantities: dict[str, Decimal | None] = {}  # meter id -> its safe quantity (see _follow_catalog)
        # The due-time index: customer -> when time next changes it; test-clock members per clock.
        self.due_ms: dict[str, int] = {}
        self.clock_members: dict[str, set[str]] = {}
        self.on_clock: set[str] = set()
        self.live_pending: set[str] = set()
        self._touched_buckets: dict[BucketKey, UsageBucket] = {}
        # (customer, meter) whose open periods' usage changed this batch -> the bucket whose
        # UsageBucketUpdated carries it (that of its last event)
        self._touched_period_usage: dict[tuple[str, str], BucketKey] = {}
        self._touched_customers: set[str] = set()
        self._known_customers = _KnownCustomers(customers)
        self._aggregators: dict[str, MeterAggregator] = {}
        self._plain_meters: dict[str, _PlainMeter] = {}  # event name -> its meter, for the fast path
        self._aggregators_of: Catalog | None = None  # the catalog both were taken from
        # customer -> meter -> (start, end, keys): the period-usage keys of an event time in
        # [start, end), from open_period_usage_span; dropped whenever the customer's state changes
        # by anything but usage (_store) and when the catalog moves on.
        self._usage_keys: dict[str, dict[str, tuple[int, int, list]]] = {}
        self.fast_path = True  # off only to test that the fast path changes nothing
        self._meter_alert_meters = _meters_watched(partition_state.meter_alerts)  # their events take the general path
        for existing in existing_customers:
            self._index(existing)

    # --- the index ----------------------------------------------------------------------------

    def _index(self, state: CustomerState) -> None:
        due = next_due_ms(state, self.config)
        clock = state.test_clock_id
        if clock is not None:
            self.clock_members.setdefault(clock, set()).add(state.customer_id)
            self.on_clock.add(state.customer_id)
        if due is None:
            self.due_ms.pop(state.customer_id, None)
        else:
            self.due_ms[state.customer_id] = due
        if state.live_pending:
            self.live_pending.add(state.customer_id)

    def now_of(self, state: CustomerState) -> int:
        """billing's customer_now_ms for a customer of this partition (its clock's time, 0 until known)."""
        clock = state.test_clock_id
        return customer_now_ms(self.state.now_ms, None if clock is None else self.state.clocks.get(clock, 0))

    # --- one fact ------------------------------------------------------------------------------

    def process(self, offset: int, fact: object, original_bytes: bytes, key: str | bytes | None = None,
                error: Exception | None = None) -> list:
        """Fold the fact at `offset` (or dead-letter `error`, the codec's failure) -> facts to emit.
        `key`: the record's key (the customer id), for dead letters only."""
        if type(fact) is MeterEventRecorded and error is None:  # nearly every fact: dispatched first
            return self.meter_event(offset, fact, original_bytes)
        fresh = offset > self.state.applied_offset
        if type(key) is bytes:
            key = key.decode("utf-8", "replace")
        try:
            out = self._dispatch(offset, fact, original_bytes, key, error, fresh)
        except Exception as failure:  # noqa: BLE001 - no fact may stop the partition
            out = [self.dead_letter(offset, original_bytes, FOLD_FAILED, _describe(failure), key or None,
                                     self.state.now_ms)] if fresh else []
        self.state.applied_offset = max(self.state.applied_offset, offset)
        return out

    def _dispatch(self, offset: int, fact: object, original_bytes: bytes, key: str | None,
                  error: Exception | None, fresh: bool) -> list:
        out: list = []
        if error is not None:
            if fresh:
                out.append(self.dead_letter(offset, original_bytes, getattr(error, "reason_code", "undecodable_fact"),
                                             str(error), key or None, self.state.now_ms))
        elif isinstance(fact, MeterEventRecorded):
            out.extend(self._meter_event(offset, fact, original_bytes, fresh))
        # Time facts apply on re-reads too (time resumes as of the durable offset, see
        # PartitionState.resumed): taking the later time, or forgetting a clock, is idempotent.
        elif isinstance(fact, TimeTicked):
            self.state.now_ms = max(self.state.now_ms, fact.now_ms)
            now_ms = self.state.now_ms
            due = [c for c, due_ms in self.due_ms.items() if due_ms <= now_ms and c not in self.on_clock]
            out.extend(self._time_passed(offset, due, original_bytes))
            out.extend(self._flush_live(offset, self.state.now_ms, clock=None))
        elif isinstance(fact, (TestClockCreated, TestClockAdvanced)):
            current = self.state.clocks.get(fact.test_clock_id, fact.frozen_time_ms)
            self.state.clocks[fact.test_clock_id] = max(current, fact.frozen_time_ms)
            members = self.clock_members.get(fact.test_clock_id, set())
            out.extend(self._time_passed(offset, [c for c in members if c in self.due_ms], original_bytes))
            out.extend(self._flush_live(offset, self.state.clocks[fact.test_clock_id], clock=fact.test_clock_id))
        elif isinstance(fact, TestClockDeleted):
            self.state.clocks.pop(fact.test_clock_id, None)
        elif isinstance(fact, MeterEventCanceled):
            out.extend(self._cancel(offset, fact, original_bytes, fresh))
        elif isinstance(fact, (BillingAlertCreated, BillingAlertStatusChanged)) and not fact.customer_id:
            out.extend(self._meter_alert(offset, fact, original_bytes, fresh))
        elif isinstance(fact, CUSTOMER_FACTS):
            out.extend(self._customer_fact(offset, fact, original_bytes, fresh))
        elif fresh:
            out.append(self.dead_letter(offset, original_bytes, "unexpected_fact",
                                         f"{type(fact).__name__} does not belong on customer-facts",
                                         key or None, self.state.now_ms))
        return out

    def meter_event(self, offset: int, event: MeterEventRecorded, original_bytes: bytes) -> list:
        """process() of a decoded MeterEventRecorded (nearly every fact: the worker calls it directly)."""
        fresh = offset > self.state.applied_offset
        if fresh:
            self.state.applied_offset = offset
        try:
            return self._meter_event(offset, event, original_bytes, fresh)
        except Exception as failure:  # noqa: BLE001 - no fact may stop the partition
            return [self.dead_letter(offset, original_bytes, FOLD_FAILED, _describe(failure),
                                      event.customer_id or None, event.received_at_ms)] if fresh else []

    def finish_batch(self) -> list:
        """Facts owed at the end of a batch: the latest value of each touched usage bucket, and
        live balances of touched customers (throttled)."""
        out: list = []
        # A period's usage rides on one bucket's record: one record per touched customer and meter,
        # and whoever sees the bucket in the projection sees its period's usage too.
        touched_buckets, carried = self._touched_buckets, {}
        for (customer_id, meter_id), bucket_key in self._touched_period_usage.items():
            state = self.customers.get(customer_id)
            if state is None or not state.split_period_usage:
                continue
            period_usage = period_usage_of(state.period_usage, state.split_period_usage, meter_id,
                                           self._aggregator(meter_id))
            if not period_usage:
                continue
            if bucket_key not in touched_buckets:  # re-read: the bucket had the event, the period had not
                bucket = self.ledger.buckets.get(bucket_key)
                if bucket is None:
                    out.extend(period_usage_fact(customer_id, meter_id, usage, self.state.now_ms)
                               for usage in period_usage)
                    continue
                touched_buckets[bucket_key] = bucket
            carried[bucket_key] = period_usage
        self._touched_period_usage.clear()
        for bucket_key, bucket in touched_buckets.items():
            customer_id, meter_id, bucket_start_ms = bucket_key
            out.append(bucket_fact(customer_id, meter_id, bucket_start_ms, self._aggregator(meter_id), bucket,
                                   self.state.now_ms, carried.get(bucket_key, ())))
        touched_buckets.clear()
        latest_received_ms = self.state.latest_received_ms
        for customer_id in sorted(self._touched_customers):
            state = self.customers[customer_id]
            if state.last_received_ms > latest_received_ms:
                latest_received_ms = state.last_received_ms
            if state.live_pending:
                facts = self._live_balance_facts(state)
                if facts:
                    self.customers[customer_id] = state
                    out.extend(facts)
                if state.live_pending:
                    self.live_pending.add(customer_id)
                else:
                    self.live_pending.discard(customer_id)
        self._touched_customers.clear()
        self.state.latest_received_ms = latest_received_ms
        if len(self._usage_keys) > CACHED_USAGE_KEYS:  # a cache: bounded like the records' caches
            self._usage_keys.clear()
        return out

    # --- routing --------------------------------------------------------------------------------

    def _arrival_ms(self, state: CustomerState) -> int:
        # The wall clock as this log tells it: the latest tick or the latest event receipt.
        return max(self.state.now_ms, state.last_received_ms)

    def _time_passed(self, offset: int, customer_ids: Iterable[str], original_bytes: bytes) -> list:
        out: list = []
        for customer_id in sorted(customer_ids):
            state = self.customers[customer_id]
            now_ms = self.now_of(state)
            if self.due_ms.get(customer_id, now_ms + 1) > now_ms or state.already_applied(offset):
                continue
            trial = copy_state(state)
            try:
                emitted = advance_time(trial, now_ms, self.catalog, self.config)
                if trial.large_amounts:  # an invoice may have taken the large usage away
                    trial.large_amounts = check_customer_amounts(trial, self.catalog, now_ms).large
                refusal = self._unencodable(emitted)
            except Exception as failure:  # noqa: BLE001 - no customer may stop the partition
                refusal = (FOLD_FAILED, _describe(failure))
            if refusal is not None:
                # Left as it was, and out of the due index until a fact changes it: not retried at every tick.
                self.due_ms.pop(customer_id, None)
                out.append(self.dead_letter(offset, original_bytes, *refusal, customer_id, now_ms))
                continue
            out.extend(self._emit(offset, emitted, trial))
            trial.applied_offset = offset
            self._store(trial)
        return out

    def _live_balance_facts(self, state: CustomerState) -> list:
        """live_balance_facts of `state`; one that fails is skipped until the next change (amounts
        were checked as facts came in: a failure here is a bug, and it must not stop the partition)."""
        try:
            if self.state.meter_alerts and state.billing_alerts:  # the statuses of the alerts it adopted
                adopt_meter_alerts(state.billing_alerts, self.state.meter_alerts, None, -1)
            return live_balance_facts(state, self.catalog, self.now_of(state), self.config,
                                      self._arrival_ms(state))
        except Exception as failure:  # noqa: BLE001
            state.live_pending = False
            return [self.dead_letter(self.state.applied_offset, b"", FOLD_FAILED,
                                      f"live balance: {_describe(failure)}", state.customer_id, self.state.now_ms)]

    def _unencodable(self, facts: Iterable[object]) -> tuple[str, str] | None:
        """(reason code, message) when a derived fact cannot be emitted, else None."""
        if self.check_output is None:
            return None
        for fact in facts:
            if isinstance(fact, Rejected):
                continue
            try:
                self.check_output(fact)
            except Exception as failure:  # noqa: BLE001 - whatever the codec refuses
                return UNENCODABLE_OUTPUT, f"{type(fact).__name__}: {_describe(failure)}"
        return None

    def _usage_out_of_range(self, state: CustomerState, meter_id: str, reading: MeterReading,
                            aggregator: MeterAggregator) -> str | None:
        """Why counting `reading` would form an amount beyond a 64-bit integer, or None (then the
        caller counts it, and `state.large_amounts` is up to date). Exact only when the period
        quantity passes the meter's safe quantity, or the customer is large (billing/bounds.py)."""
        limit = self._safe_quantities.get(meter_id)
        if not state.large_amounts and (
                limit is None or usage_within(state, meter_id, reading, aggregator, self.catalog, limit)):
            return None
        trial = copy_state(state)
        add_usage(trial, meter_id, reading, aggregator, self.catalog)
        check = check_customer_amounts(trial, self.catalog, self.now_of(state))
        if check.out_of_range is None:
            state.large_amounts = check.large
        return check.out_of_range

    def _flush_live(self, offset: int, now_ms: int, clock: str | None) -> list:
        out: list = []
        for customer_id in sorted(self.live_pending):
            state = self.customers.get(customer_id)
            if state is None or state.test_clock_id != clock:
                continue
            facts = self._live_balance_facts(state)
            if facts:
                out.extend(facts)
                self._store(state)
            if not state.live_pending:
                self.live_pending.discard(customer_id)
        return out

    def _meter_event(self, offset: int, event: MeterEventRecorded, original_bytes: bytes, fresh: bool) -> list:
        """The common event folded right here: one that validate_meter_event surely accepts (an
        active raw meter, a known customer (not deleted) on the wall clock without billing alerts, a plain digit value, an event time in
        [arrival - 35 days, arrival + 5 minutes]) with an identifier never seen, counted as
        UsageLedger.apply_event and add_usage would count it. Nearly every fact is one, and the
        general path's checks, calls and intermediate objects were half the worker's time per event
        (tests/unit/billing/test_partition.py holds the two paths to the same results). Anything
        else, and every re-read fact, takes _meter_event_general."""
        if self.catalog is not self._aggregators_of:
            self._follow_catalog()
        plain = self._plain_meters.get(event.event_name) if self.fast_path else None
        if plain is None:
            return self._meter_event_general(offset, event, original_bytes, fresh)
        payload, identifier = event.payload, event.identifier
        customer_id = payload.get(plain.customer_payload_key)
        state = self.customers.get(customer_id) if type(customer_id) is str and customer_id else None
        value_text = payload.get(plain.value_payload_key)
        event_time_ms, received_at_ms = event.event_time_ms, event.received_at_ms
        ledger = self.ledger
        seen_key = (event.event_name, identifier)
        if not (state is not None and state.created is not None and state.created.test_clock_id is None
                and not state.large_amounts and not state.billing_alerts and state.deleted_at_ms is None
                and plain.meter_id not in self._meter_alert_meters
                # is_surely_valid_value, inlined
                and type(value_text) is str and len(value_text) <= MAX_VALUE_INTEGER_DIGITS
                and value_text.isascii() and value_text.isdigit()
                and len(identifier) <= MAX_IDENTIFIER_LENGTH
                and is_timely(event_time_ms, received_at_ms)
                and ledger.seen.get(seen_key) is None):
            return self._meter_event_general(offset, event, original_bytes, fresh)
        meter_id = plain.meter_id
        # tuple.__new__: a NamedTuple's own __new__ is a Python function (every field given, in order)
        value = Decimal(value_text)
        reading = _new_tuple(MeterReading, (event_time_ms, received_at_ms, identifier, value))
        counts = offset > state.applied_offset
        if counts:  # the period-usage keys it counts toward, and whether it surely rates in range
            spans = self._usage_keys.get(customer_id)
            span = None if spans is None else spans.get(meter_id)
            if span is None or not span[0] <= event_time_ms < span[1]:
                found = open_period_usage_span(state, meter_id, event_time_ms, self.catalog)
                if found is None:  # outside an open period: its keys are a calendar's work
                    return self._meter_event_general(offset, event, original_bytes, fresh)
                keys, start_ms, end_ms = found
                span = self._usage_keys.setdefault(customer_id, {})[meter_id] = (start_ms, end_ms, keys)
            else:
                keys = span[2]
            if event_time_ms - span[0] < MILLISECONDS_PER_MINUTE or span[1] - event_time_ms <= MILLISECONDS_PER_MINUTE:
                # a period's first or last minute may be split with another period: add_usage marks it
                return self._meter_event_general(offset, event, original_bytes, fresh)
            period_usage = state.period_usage
            limit = plain.safe_quantity
            if limit is not None:  # usage_within for a meter without window, spelled out (values >= 0 here)
                for key in keys:
                    usage = period_usage.get(key)
                    if value > limit or usage is not None and (
                            abs(usage.value_sum + value) > limit or usage.event_count >= limit):
                        return self._meter_event_general(offset, event, original_bytes, fresh)
        ledger.seen[seen_key] = {customer_id: _new_tuple(SeenEvent, (offset, meter_id, reading, None))}
        bucket_key = (customer_id, meter_id, event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE)
        current = ledger.buckets.get(bucket_key)
        if current is None or current.applied_offset < offset:  # (add_plain: the aggregator's add)
            usage = add_plain(None if current is None else current.usage, reading)
            self._touched_buckets[bucket_key] = ledger.buckets[bucket_key] = _new_tuple(UsageBucket, (usage, offset, ()))
        if counts:  # add_usage with the keys in hand, spelled out
            for key in keys:
                period_usage[key] = add_plain(period_usage.get(key), reading)
            if keys:
                self._touched_period_usage[(customer_id, meter_id)] = bucket_key
            state.live_pending = True
            state.applied_offset = offset
            if received_at_ms > state.last_received_ms:
                state.last_received_ms = received_at_ms
            if customer_id not in self._touched_customers:  # (changed in place: written once per batch)
                self.customers[customer_id] = state  # usage moves no due time: no re-index
                self._touched_customers.add(customer_id)
        return []

    def _meter_event_general(self, offset: int, event: MeterEventRecorded, original_bytes: bytes,
                             fresh: bool) -> list:
        catalog = self.catalog
        meter = catalog.meters_by_event_name.get(event.event_name)
        state = None
        now_ms = event.received_at_ms  # the customer's now: the wall clock, or its test clock
        if meter is not None:
            state = self.customers.get(event.payload.get(meter.customer_payload_key, ""))
            if state is not None and state.created is not None and state.created.test_clock_id is not None:
                now_ms = customer_now_ms(now_ms, self.state.clocks.get(state.created.test_clock_id, 0))
        verdict = validate_meter_event(event, catalog.meters_by_event_name, catalog.meter_inactive_at,
                                       self._known_customers, now_ms)
        if type(verdict) is MeterEventRejected:
            if not fresh:
                return []
            return [self.dead_letter(offset, original_bytes, str(verdict.code), verdict.message,
                                      event.customer_id or None, event.received_at_ms)]
        aggregator = self._aggregator(verdict.meter_id)
        if offset > state.applied_offset and not self.ledger.is_duplicate(offset, verdict, event.event_name):
            # Judged before anything changes: a reading refused here is counted nowhere.
            refusal = self._usage_out_of_range(state, verdict.meter_id, verdict.reading, aggregator)
            if refusal is not None:
                return [self.dead_letter(offset, original_bytes, AMOUNT_OUT_OF_RANGE, refusal, state.customer_id,
                                          event.received_at_ms)] if fresh else []
        outcome = self.ledger.apply_event(offset, verdict, event.event_name, aggregator)
        if outcome.bucket is not None:
            self._touched_buckets[outcome.bucket_key] = outcome.bucket
        if outcome.counts and offset > state.applied_offset:
            if self.state.meter_alerts:
                adopt_meter_alerts(state.billing_alerts, self.state.meter_alerts, verdict.meter_id, offset)
            add_usage(state, verdict.meter_id, verdict.reading, aggregator, catalog)
            self._touched_period_usage[(state.customer_id, verdict.meter_id)] = outcome.bucket_key
            state.applied_offset = offset
            if event.received_at_ms > state.last_received_ms:
                state.last_received_ms = event.received_at_ms
            self.customers[state.customer_id] = state  # usage moves no due time: no re-index
            self._touched_customers.add(state.customer_id)
        return []

    def _aggregator(self, meter_id: str) -> MeterAggregator:
        if self.catalog is not self._aggregators_of:
            self._follow_catalog()
        aggregator = self._aggregators.get(meter_id)
        if aggregator is None:
            aggregator = self._aggregators[meter_id] = self.catalog.aggregator(meter_id)
        return aggregator

    def _follow_catalog(self) -> None:
        """The catalog moved on: meters and prices may have changed."""
        catalog = self.catalog
        self._aggregators, self._aggregators_of, self._usage_keys = {}, catalog, {}
        self._plain_meters = {}
        unit_amounts: dict[str, list[Decimal]] = {}
        for price in catalog.prices.values():
            if price.meter_id is not None:
                unit_amounts.setdefault(price.meter_id, []).append(price.unit_amount_decimal)
        self._safe_quantities = {meter_id: safe_quantity(amounts) for meter_id, amounts in unit_amounts.items()}
        for event_name, meter in catalog.meters_by_event_name.items():
            aggregator = self._aggregator(meter.meter_id)
            # (a meter ever deactivated takes the general path: its status depends on each event's receipt)
            if (meter.meter_id not in catalog.meter_status_changes and can_subtract(aggregator)
                    and len(event_name) <= MAX_EVENT_NAME_LENGTH):
                self._plain_meters[event_name] = _PlainMeter(meter.meter_id, meter.customer_payload_key,
                                                             meter.value_payload_key, aggregator,
                                                             self._safe_quantities.get(meter.meter_id))

    def _cancel(self, offset: int, cancel: MeterEventCanceled, original_bytes: bytes, fresh: bool) -> list:
        aggregators = {meter_id: self.catalog.aggregator(meter_id) for meter_id in self.catalog.meters}
        outcome = self.ledger.apply_cancel(offset, cancel, aggregators)
        if outcome.not_here:  # one partition's word; the projector tells "not found" once all have said it
            return [self.dead_letter(offset, original_bytes, CANCEL_NOT_IN_PARTITION,
                                     f"no event {cancel.identifier!r} of {cancel.event_name!r} in this partition",
                                     None, cancel.received_at_ms)] if fresh else []
        if outcome.refused_code is not None:
            if not fresh:
                return []
            return [self.dead_letter(offset, original_bytes, outcome.refused_code, outcome.refused_message,
                                      cancel.customer_id, cancel.received_at_ms)]
        for canceled in outcome.canceled:
            if canceled.bucket is not None:
                self._touched_buckets[canceled.bucket_key] = canceled.bucket
            state = self.customers.get(canceled.customer_id)
            if state is not None and not state.already_applied(offset):
                remove_usage(state, canceled.seen.meter_id, canceled.seen.reading, aggregators[canceled.seen.meter_id],
                             self.catalog, partial(self.ledger.readings, canceled.customer_id, canceled.seen.meter_id),
                             canceled.seen.offset)
                self._touched_period_usage[(canceled.customer_id, canceled.seen.meter_id)] = canceled.bucket_key
                state.applied_offset = offset
                self._store(state)
        return []

    def _meter_alert(self, offset: int, fact: BillingAlertCreated | BillingAlertStatusChanged, original_bytes: bytes,
                     fresh: bool) -> list:
        """A usage alert without a customer filter, or its status: this partition's template of it.
        Applied on re-reads too (a create is kept once, a status set again is the same)."""
        try:
            if isinstance(fact, BillingAlertCreated):
                define_alert(self.state.meter_alerts, fact, offset)
            else:
                change_status(self.state.meter_alerts, fact)
        except BillingError as refused:
            return [self.dead_letter(offset, original_bytes, refused.code, str(refused), None,
                                     self.state.now_ms)] if fresh else []
        self._meter_alert_meters = _meters_watched(self.state.meter_alerts)
        return []

    def _customer_fact(self, offset: int, fact: object, original_bytes: bytes, fresh: bool) -> list:
        customer_id = fact.customer_id  # type: ignore[attr-defined]
        state = self.customers.get(customer_id) or CustomerState(customer_id=customer_id)
        if state.already_applied(offset):
            return []
        now_ms = self.now_of(state) if state.created or not isinstance(fact, CustomerCreated) else (
            self.state.clocks.get(fact.test_clock_id, 0) if fact.test_clock_id else self.state.now_ms)
        # Folded on a copy: a fact refused here leaves the customer as it was (and raises to process()).
        state, emitted = evolve(copy_state(state), fact, self.catalog, now_ms, self.config)
        check = check_customer_amounts(state, self.catalog, now_ms)
        refusal = (AMOUNT_OUT_OF_RANGE, check.out_of_range) if check.out_of_range else self._unencodable(emitted)
        if refusal is not None:
            return [self.dead_letter(offset, original_bytes, *refusal, customer_id, self.state.now_ms)] if fresh else []
        state.large_amounts = check.large
        out = []
        for item in emitted:
            if isinstance(item, Rejected):
                out.append(self.dead_letter(offset, original_bytes, item.code, item.message, customer_id,
                                             self.state.now_ms))
            else:
                out.append(item)
        state.applied_offset = offset
        self._store(state)
        return out

    # --- helpers --------------------------------------------------------------------------------

    def _emit(self, offset: int, facts: list, state: CustomerState) -> list:
        return list(facts)

    def _store(self, state: CustomerState) -> None:
        self._usage_keys.pop(state.customer_id, None)  # its subscriptions may have changed
        self.customers[state.customer_id] = state
        self._touched_customers.add(state.customer_id)
        self._index(state)

    def dead_letter(self, offset: int, original_bytes: bytes, reason_code: str, message: str,
                     customer_id: str | None, at_ms: int) -> DeadLetter:
        return DeadLetter(original_bytes=original_bytes, topic=self.topic, partition=self.partition, offset=offset,
                          reason_code=reason_code, message=message[:500], customer_id=customer_id,
                          dead_lettered_at_ms=at_ms)


def _describe(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {failure}"


def output_topic(fact: object) -> str:
    """The short name of the topic a derived fact goes to."""
    return OUTPUT_TOPIC[type(fact)]


def output_key(fact: object) -> str:
    return getattr(fact, "customer_id", None) or ""


def _meters_watched(meter_alerts: Mapping[str, AlertWatch]) -> set[str]:
    """The meters with a usage alert without a customer filter not archived."""
    return {watch.meter_id for watch in meter_alerts.values()
            if watch.meter_id is not None and watch.status != AlertStatus.ARCHIVED}

"""One partition of drawdown.customer-facts, folded fact by fact: routing only, no Kafka I/O.

The worker feeds it decoded facts in offset order (state in changelogged tables behind
write-back caches); the fault test's brute-force reference feeds it the same log read back from
Kafka (state in dicts). The money is computed by billing/ (usage.py, customer.py); this module
decides which state a fact touches, what "now" is, and what is due when time passes.

Exactly once: every record (customer state, usage bucket, seen event, this partition's record)
carries the last offset it applied and skips facts at or below it, so re-processing a batch after
a crash changes nothing that was already written, and re-emits exactly the facts that were lost.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

from billing.catalog import Catalog
from billing.customer import (
    CustomerState,
    FoldConfig,
    Rejected,
    add_usage,
    advance_time,
    evolve,
    live_balance_facts,
    next_due_ms,
    remove_usage,
)
from billing.facts import (
    CreditBalanceTransaction,
    CreditGrantCreated,
    CreditGrantExpired,
    CreditGrantUpdated,
    CreditGrantVoided,
    CustomerCreated,
    DeadLetter,
    InvoiceFinalized,
    InvoiceVoided,
    InvoiceVoidRequested,
    LiveBalanceChanged,
    LowBalanceAlert,
    MeterEventCanceled,
    MeterEventRecorded,
    SubscriptionCanceled,
    SubscriptionCancelScheduled,
    SubscriptionCreated,
    SubscriptionItemsChanged,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
    TimeTicked,
    UsageBucketUpdated,
)
from billing.meters import MeterAggregator
from billing.meter_events import MeterEventRejected, customer_now_ms, validate_meter_event
from billing.usage import BucketKey, UsageBucket, UsageLedger, bucket_value

CUSTOMER_FACTS = (CustomerCreated, SubscriptionCreated, SubscriptionItemsChanged, SubscriptionCancelScheduled,
                  SubscriptionCanceled, CreditGrantCreated, CreditGrantUpdated, CreditGrantExpired,
                  CreditGrantVoided, InvoiceVoidRequested)

# Where each derived fact goes (short topic names, see streams/topics.py).
OUTPUT_TOPIC = {
    InvoiceFinalized: "invoices",
    InvoiceVoided: "invoices",
    CreditBalanceTransaction: "credit-balance-transactions",
    UsageBucketUpdated: "usage-buckets",
    LiveBalanceChanged: "live-balances",
    LowBalanceAlert: "live-balances",
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


class _KnownCustomers:
    def __init__(self, customers: MutableMapping[str, CustomerState]) -> None:
        self._customers = customers

    def __contains__(self, customer_id: object) -> bool:
        state = self._customers.get(customer_id)  # type: ignore[arg-type]
        return state is not None and state.created is not None


class PartitionProcessor:
    """Folds one partition's facts into its customers, usage ledger and time record."""

    def __init__(self, *, topic: str, partition: int, customers: MutableMapping[str, CustomerState],
                 ledger: UsageLedger, partition_state: PartitionState, catalog: Catalog, config: FoldConfig,
                 existing_customers: Iterable[CustomerState] = ()) -> None:
        self.topic = topic
        self.partition = partition
        self.customers = customers
        self.ledger = ledger
        self.state = partition_state
        self.catalog = catalog
        self.config = config
        # The due-time index: customer -> when time next changes it; test-clock members per clock.
        self.due_ms: dict[str, int] = {}
        self.clock_members: dict[str, set[str]] = {}
        self.on_clock: set[str] = set()
        self.live_pending: set[str] = set()
        self._touched_buckets: dict[BucketKey, UsageBucket] = {}
        self._touched_customers: set[str] = set()
        self._known_customers = _KnownCustomers(customers)
        self._aggregators: dict[str, MeterAggregator] = {}
        self._aggregators_of: Catalog | None = None  # the catalog _aggregators were taken from
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

    def customer_now_ms(self, state: CustomerState) -> int:
        clock = state.test_clock_id
        if clock is None:
            return self.state.now_ms
        return self.state.clocks.get(clock, 0)

    # --- one fact ------------------------------------------------------------------------------

    def process(self, offset: int, fact: object, original_bytes: bytes, key: str | None = None,
                error: Exception | None = None) -> list:
        """Fold the fact at `offset` (or dead-letter `error`, the codec's failure) -> facts to emit."""
        fresh = offset > self.state.applied_offset
        out: list = []
        if error is not None:
            if fresh:
                out.append(self._dead_letter(offset, original_bytes, getattr(error, "reason_code", "undecodable_fact"),
                                             str(error), key or None, self.state.now_ms))
        elif isinstance(fact, MeterEventRecorded):
            out.extend(self._meter_event(offset, fact, original_bytes, fresh))
        elif isinstance(fact, TimeTicked):
            if fresh:
                self.state.now_ms = max(self.state.now_ms, fact.now_ms)
            now_ms = self.state.now_ms
            due = [c for c, due_ms in self.due_ms.items() if due_ms <= now_ms and c not in self.on_clock]
            out.extend(self._time_passed(offset, due))
            out.extend(self._flush_live(offset, self.state.now_ms, clock=None))
        elif isinstance(fact, (TestClockCreated, TestClockAdvanced)):
            if fresh:
                current = self.state.clocks.get(fact.test_clock_id, fact.frozen_time_ms)
                self.state.clocks[fact.test_clock_id] = max(current, fact.frozen_time_ms)
            members = self.clock_members.get(fact.test_clock_id, set())
            out.extend(self._time_passed(offset, [c for c in members if c in self.due_ms]))
            out.extend(self._flush_live(offset, self.state.clocks[fact.test_clock_id], clock=fact.test_clock_id))
        elif isinstance(fact, TestClockDeleted):
            if fresh:
                self.state.clocks.pop(fact.test_clock_id, None)
        elif isinstance(fact, MeterEventCanceled):
            out.extend(self._cancel(offset, fact, original_bytes, fresh))
        elif isinstance(fact, CUSTOMER_FACTS):
            out.extend(self._customer_fact(offset, fact, original_bytes, fresh))
        elif fresh:
            out.append(self._dead_letter(offset, original_bytes, "unexpected_fact",
                                         f"{type(fact).__name__} does not belong on customer-facts",
                                         key or None, self.state.now_ms))
        self.state.applied_offset = max(self.state.applied_offset, offset)
        return out

    def finish_batch(self) -> list:
        """Facts owed at the end of a batch: the latest value of each touched usage bucket, and
        live balances of touched customers (throttled)."""
        out: list = []
        for (customer_id, meter_id, bucket_start_ms), bucket in self._touched_buckets.items():
            value, count = bucket_value(self._aggregator(meter_id), bucket)
            out.append(UsageBucketUpdated(customer_id=customer_id, meter_id=meter_id, bucket_start_ms=bucket_start_ms,
                                          value=value, event_count=count,
                                          updated_at_ms=bucket.usage.latest.received_at_ms
                                          if bucket.usage.latest else self.state.now_ms))
        self._touched_buckets.clear()
        for customer_id in sorted(self._touched_customers):
            state = self.customers[customer_id]
            if state.live_pending:
                facts = live_balance_facts(state, self.catalog, self.customer_now_ms(state), self.config,
                                           self._arrival_ms(state))
                if facts:
                    self.customers[customer_id] = state
                    out.extend(facts)
                if state.live_pending:
                    self.live_pending.add(customer_id)
                else:
                    self.live_pending.discard(customer_id)
        self._touched_customers.clear()
        return out

    # --- routing --------------------------------------------------------------------------------

    def _arrival_ms(self, state: CustomerState) -> int:
        # The wall clock as this log tells it: the latest tick or the latest event receipt.
        return max(self.state.now_ms, state.last_received_ms)

    def _time_passed(self, offset: int, customer_ids: Iterable[str]) -> list:
        out: list = []
        for customer_id in sorted(customer_ids):
            state = self.customers[customer_id]
            now_ms = self.customer_now_ms(state)
            if self.due_ms.get(customer_id, now_ms + 1) > now_ms or state.already_applied(offset):
                continue
            out.extend(self._emit(offset, advance_time(state, now_ms, self.catalog, self.config), state))
            state.applied_offset = offset
            self._store(state)
        return out

    def _flush_live(self, offset: int, now_ms: int, clock: str | None) -> list:
        out: list = []
        for customer_id in sorted(self.live_pending):
            state = self.customers.get(customer_id)
            if state is None or state.test_clock_id != clock:
                continue
            facts = live_balance_facts(state, self.catalog, self.customer_now_ms(state), self.config,
                                       self._arrival_ms(state))
            if facts:
                out.extend(facts)
                self._store(state)
            if not state.live_pending:
                self.live_pending.discard(customer_id)
        return out

    def _meter_event(self, offset: int, event: MeterEventRecorded, original_bytes: bytes, fresh: bool) -> list:
        catalog = self.catalog
        meter = catalog.meters_by_event_name.get(event.event_name)
        state = None
        now_ms = event.received_at_ms  # the customer's now: the wall clock, or its test clock
        if meter is not None:
            state = self.customers.get(event.payload.get(meter.customer_payload_key, ""))
            if state is not None and state.created is not None and state.created.test_clock_id is not None:
                now_ms = customer_now_ms(now_ms, self.state.clocks.get(state.created.test_clock_id, 0))
        verdict = validate_meter_event(event, catalog.meters_by_event_name, catalog.inactive_meter_ids,
                                       self._known_customers, now_ms)
        if type(verdict) is MeterEventRejected:
            if not fresh:
                return []
            return [self._dead_letter(offset, original_bytes, str(verdict.code), verdict.message,
                                      event.customer_id or None, event.received_at_ms)]
        aggregator = self._aggregator(verdict.meter_id)
        outcome = self.ledger.apply_event(offset, verdict, event.event_name, aggregator)
        if outcome.bucket is not None:
            self._touched_buckets[outcome.bucket_key] = outcome.bucket
        if outcome.counts and offset > state.applied_offset:
            add_usage(state, verdict.meter_id, verdict.reading, aggregator, catalog)
            state.applied_offset = offset
            if event.received_at_ms > state.last_received_ms:
                state.last_received_ms = event.received_at_ms
            self.customers[state.customer_id] = state  # usage moves no due time: no re-index
            self._touched_customers.add(state.customer_id)
        return []

    def _aggregator(self, meter_id: str) -> MeterAggregator:
        catalog = self.catalog
        if catalog is not self._aggregators_of:  # the catalog moved on: meters may have changed
            self._aggregators, self._aggregators_of = {}, catalog
        aggregator = self._aggregators.get(meter_id)
        if aggregator is None:
            aggregator = self._aggregators[meter_id] = catalog.aggregator(meter_id)
        return aggregator

    def _cancel(self, offset: int, cancel: MeterEventCanceled, original_bytes: bytes, fresh: bool) -> list:
        aggregators = {meter_id: self.catalog.aggregator(meter_id) for meter_id in self.catalog.meters}
        outcome = self.ledger.apply_cancel(offset, cancel, aggregators)
        if outcome.refused_code is not None:
            if not fresh:
                return []
            return [self._dead_letter(offset, original_bytes, outcome.refused_code, outcome.refused_message,
                                      cancel.customer_id, cancel.received_at_ms)]
        for canceled in outcome.canceled:
            if canceled.bucket is not None:
                self._touched_buckets[canceled.bucket_key] = canceled.bucket
            state = self.customers.get(canceled.customer_id)
            if state is not None and not state.already_applied(offset):
                remove_usage(state, canceled.seen.meter_id, canceled.seen.reading, aggregators[canceled.seen.meter_id],
                             self.catalog)
                state.applied_offset = offset
                self._store(state)
        return []

    def _customer_fact(self, offset: int, fact: object, original_bytes: bytes, fresh: bool) -> list:
        customer_id = fact.customer_id  # type: ignore[attr-defined]
        state = self.customers.get(customer_id) or CustomerState(customer_id=customer_id)
        if state.already_applied(offset):
            return []
        now_ms = self.customer_now_ms(state) if state.created or not isinstance(fact, CustomerCreated) else (
            self.state.clocks.get(fact.test_clock_id, 0) if fact.test_clock_id else self.state.now_ms)
        state, emitted = evolve(state, fact, self.catalog, now_ms, self.config)
        out = []
        for item in emitted:
            if isinstance(item, Rejected):
                out.append(self._dead_letter(offset, original_bytes, item.code, item.message, customer_id,
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
        self.customers[state.customer_id] = state
        self._touched_customers.add(state.customer_id)
        self._index(state)

    def _dead_letter(self, offset: int, original_bytes: bytes, reason_code: str, message: str,
                     customer_id: str | None, at_ms: int) -> DeadLetter:
        return DeadLetter(original_bytes=original_bytes, topic=self.topic, partition=self.partition, offset=offset,
                          reason_code=reason_code, message=message[:500], customer_id=customer_id,
                          dead_lettered_at_ms=at_ms)


def output_topic(fact: object) -> str:
    """The short name of the topic a derived fact goes to."""
    return OUTPUT_TOPIC[type(fact)]


def output_key(fact: object) -> str:
    return getattr(fact, "customer_id", None) or ""

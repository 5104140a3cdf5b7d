"""The producer SDK: meter events (and the other input facts) to Kafka, fast and without loss.

    from producers import FactProducer

    with FactProducer(settings) as producer:      # reads the meter catalog once, for validation
        producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_123", "value": "250"})
        producer.send_meter_events("llm_tokens", payloads)   # many at once: several times faster
    # leaving the block flushes; a record the broker did not acknowledge raises DeliveryFailed

Each fact is Avro-encoded with the project's codec and keyed by its customer id (for a meter event,
taken from the payload under its meter's customer_payload_key), so it lands in the partition the
engine's worker for that customer reads. Meter events are checked with the engine's own rules
before they are sent, so a bad event fails at once with Stripe's error code (MeterEventInvalid).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from billing.catalog import Catalog
from billing.customer import INVOICE_LIFECYCLE_FACTS
from billing.facts import (
    CreditGrantCreated,
    CreditGrantExpired,
    CreditGrantUpdated,
    CreditGrantVoided,
    CustomerCreated,
    InvoiceVoidRequested,
    MeterAggregation,
    MeterDeactivated,
    MeterDefined,
    MeterDisplayNameChanged,
    MeterEventCanceled,
    MeterEventRecorded,
    MeterReactivated,
    PriceCreated,
    ProductCreated,
    SubscriptionCancelScheduled,
    SubscriptionCanceled,
    SubscriptionCreated,
    SubscriptionItemsChanged,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
    TimeTicked,
)
from billing.meter_events import (
    MAX_EVENT_NAME_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    MAX_VALUE_INTEGER_DIGITS,
    MeterEventRejected,
    is_surely_valid_value,
    is_timely,
    validate_meter_event,
)
from drawdown.settings import Settings
from producers.catalog_reader import read_catalog
from producers.errors import DeliveryFailed, MeterEventInvalid, NotAnInputFact, ProducerQueueFull, UnknownTopic
from streams.topics import PRODUCER_PARTITIONER

DEFAULT_CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"

# Every option that matters for correctness or throughput, set explicitly.
PRODUCER_CONFIG: dict[str, Any] = {
    # Retries can neither duplicate nor reorder a record within its partition (the broker
    # deduplicates by producer id and sequence number).
    "enable.idempotence": True,
    # A record is acknowledged only once every in-sync replica has it: accepted usage is never lost.
    "acks": "all",
    # Wait up to 20 ms to fill a batch: at high volume far fewer, larger requests; a meter event
    # arriving 20 ms later changes nothing for billing.
    "linger.ms": 20,
    # Large batches (up to 10,000 records or 1 MB per partition) amortise the per-request cost.
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    # Meter events repeat event names, payload keys and customer ids: lz4 shrinks them severalfold
    # for very little CPU, and the CPU (Python encoding) is the bottleneck, not the network.
    "compression.type": "lz4",
    # Room for bursts (about 2 s at full speed); beyond it produce() pushes back (BufferError).
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    # How long librdkafka keeps retrying a record before reporting it as failed (5 minutes).
    "message.timeout.ms": 300_000,
    # murmur2, as Faust, aiokafka and Java: a customer's facts land in the partition its worker owns.
    "partitioner": PRODUCER_PARTITIONER,
}

# Serve delivery reports every this many records, so reports and queue room keep flowing.
POLL_EVERY_RECORDS = 1_000
# A failed delivery is kept for flush() up to this many (the count is always exact).
MAX_KEPT_FAILURES = 10_000

_CATALOG_KEY_FIELD: dict[type, str] = {
    MeterDefined: "meter_id",
    MeterDisplayNameChanged: "meter_id",
    MeterDeactivated: "meter_id",
    MeterReactivated: "meter_id",
    ProductCreated: "product_id",
    PriceCreated: "price_id",
}
_CUSTOMER_FACTS = (
    CustomerCreated, SubscriptionCreated, SubscriptionItemsChanged, SubscriptionCancelScheduled,
    SubscriptionCanceled, CreditGrantCreated, CreditGrantUpdated, CreditGrantExpired, CreditGrantVoided,
    InvoiceVoidRequested, MeterEventRecorded, MeterEventCanceled, *INVOICE_LIFECYCLE_FACTS,
)
# Passing time is a fact for every customer: written to every partition (FACTS.md).
_TIME_FACTS = (TimeTicked, TestClockCreated, TestClockAdvanced, TestClockDeleted)


def all_surely_valid_values(values: Sequence[object]) -> bool:
    """all(map(is_surely_valid_value, values)) in a few C loops rather than a Python call per value:
    every value exactly a str of 1 to MAX_VALUE_INTEGER_DIGITS characters, together only ASCII
    digits (isdigit is true of a non-empty string exactly when each character is a digit)."""
    if not values:
        return True
    try:
        joined = "".join(values)  # TypeError unless every value is a str (None included)
    except TypeError:
        return False
    if not (joined.isascii() and joined.encode().isdigit()):  # bytes.isdigit: the cheap ASCII-only test
        return False
    lengths = set(map(len, values))
    return min(lengths) >= 1 and max(lengths) <= MAX_VALUE_INTEGER_DIGITS and set(map(type, values)) == {str}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _EveryCustomer:
    """The customer set when the client does not know the customers: the engine checks them."""

    def __contains__(self, customer_id: object) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The broker's answer for one record. `error` is None when it was acknowledged."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    error: str | None
    retriable: bool = False

    @property
    def delivered(self) -> bool:
        return self.error is None

    def fact(self, codec: Any = None) -> object:
        """The fact this record carries (decoded on demand: reports are on the hot path), with
        `codec` or the process's default codec."""
        if codec is None:
            from schemas.codec import decode

            return decode(self.value)
        return codec.decode(self.value)


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What happened to the records sent since the previous flush."""

    delivered_count: int
    failed_count: int
    undelivered_count: int  # still queued when the flush timed out
    failures: tuple[DeliveryReport, ...]  # the first MAX_KEPT_FAILURES failed records

    @property
    def ok(self) -> bool:
        return self.failed_count == 0 and self.undelivered_count == 0


class FactProducer:
    """A Kafka producer of drawdown's input facts (meter events first of all).

    - `send_meter_event` / `send_meter_events` (a batch: the fast way) / `cancel_meter_event` /
      `send(fact)` encode, key and enqueue; they return at once. `flush()` waits for the broker and returns a FlushResult; the context manager
      flushes on exit and raises DeliveryFailed if a record was not acknowledged.
    - `on_delivery(report)` is called for every record (from send/poll/flush); without it only
      failures are reported by librdkafka, which is measurably faster.
    - Meter events are validated with billing.meter_events against `catalog` (read from the catalog
      topic when not given) and `known_customer_ids` (None: not checked here, the engine checks).
      `validate=False` skips validation (a bad event is then dead-lettered by the engine).
    - When the local queue is full, sending waits (serving delivery reports) for up to
      `queue_full_timeout_s`, then raises ProducerQueueFull.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        validate: bool = True,
        known_customer_ids: Container[str] | None = None,
        on_delivery: Callable[[DeliveryReport], None] | None = None,
        codec: Any = None,
        config: Mapping[str, Any] | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
        queue_full_timeout_s: float = 60.0,
    ) -> None:
        from confluent_kafka import Producer

        from schemas.codec import FactCodec

        self._settings = settings
        self._codec = codec or FactCodec(settings.schema_registry_url or None)
        self._validate = validate
        if catalog is None and validate:
            catalog = read_catalog(settings, codec=self._codec)
        self._catalog = catalog or Catalog()
        self._meters_by_event_name = self._catalog.meters_by_event_name
        self._known_customer_ids = _EveryCustomer() if known_customer_ids is None else known_customer_ids
        self._every_customer = known_customer_ids is None
        self._user_on_delivery = on_delivery
        self._now_ms = now_ms
        self._queue_full_timeout_s = queue_full_timeout_s
        self._customer_topic = settings.topic("customer-facts")
        self._catalog_topic = settings.topic("catalog")
        self._partition_counts: dict[str, int] = {}
        # Identifiers made here: a random per-producer prefix plus a counter is unique and cheap.
        self._identifier_prefix = f"ev_{os.urandom(8).hex()}_"
        self._identifier_counter = 0
        self._sent_count = 0  # records handed to librdkafka since the last flush
        self._failed_count = 0
        self._failures: list[DeliveryReport] = []
        self._unpolled_count = 0
        producer_config = {
            **settings.kafka_client_config(),
            **PRODUCER_CONFIG,
            # Success reports cost a Python call per record: ask for them only if someone listens.
            "delivery.report.only.error": on_delivery is None,
            "on_delivery": self._on_delivery,
            **(config or {}),
        }
        self._producer = Producer(producer_config)

    # --- sending ---------------------------------------------------------------------------------

    def send_meter_event(
        self,
        event_name: str,
        payload: Mapping[str, str],
        *,
        identifier: str | None = None,
        event_time_ms: int | None = None,
    ) -> MeterEventRecorded:
        """Validate, encode and enqueue one meter event; returns the fact as sent.

        `payload` maps strings to strings, as Stripe's API does: the customer id under the meter's
        customer_payload_key and the value (a decimal string) under its value_payload_key.
        `identifier` defaults to a fresh unique one; `event_time_ms` (when the usage happened)
        defaults to now. Raises MeterEventInvalid (with Stripe's code) and sends nothing if the
        engine would reject the event. Many events at once: send_meter_events is several times faster.
        """
        received_at_ms = self._now_ms()
        meter = self._meters_by_event_name.get(event_name)
        customer_id = payload.get(meter.customer_payload_key if meter is not None else DEFAULT_CUSTOMER_PAYLOAD_KEY, "")
        if identifier is None:
            self._identifier_counter += 1
            identifier = f"{self._identifier_prefix}{self._identifier_counter}"
        if event_time_ms is None:
            event_time_ms = received_at_ms
        event = MeterEventRecorded(customer_id=customer_id, event_name=event_name, identifier=identifier,
                                   payload=dict(payload), event_time_ms=event_time_ms, received_at_ms=received_at_ms)
        if self._validate and not (
                self._meter_surely_accepts(meter, event_name)
                and self._surely_valid(meter, customer_id, payload, event_time_ms, received_at_ms)
                and len(identifier) <= MAX_IDENTIFIER_LENGTH):
            self._check(event, received_at_ms)
        (value,) = self._codec.encode_meter_events(event_name, (customer_id,), (identifier,), (event.payload,),
                                                   received_at_ms, (event_time_ms,))
        self._produce(self._customer_topic, value, customer_id.encode(), received_at_ms)
        return event

    def send_meter_events(
        self,
        event_name: str,
        payloads: Sequence[Mapping[str, str]],
        *,
        identifiers: Sequence[str] | None = None,
        event_times_ms: Sequence[int] | None = None,
    ) -> list[str]:
        """Validate, encode and enqueue a batch of meter events of one event name; returns their
        identifiers, in order. The fast way to send many events (the per-batch work is done once).

        Each payload is as for send_meter_event; `identifiers` and `event_times_ms` (one per
        payload) default to fresh unique identifiers and the arrival time. The whole batch arrives
        at one now_ms(). All or none: if the engine would reject any event, raises MeterEventInvalid
        for the first one (its position is in the message, the fact in `.event`) and sends nothing.
        (Only backpressure can split a batch: on ProducerQueueFull the events before the one that
        did not fit are queued, and sent_since_flush counts them.)
        """
        received_at_ms = self._now_ms()
        count = len(payloads)
        if identifiers is None:
            first = self._identifier_counter + 1
            self._identifier_counter += count
            prefix = self._identifier_prefix
            identifiers = [f"{prefix}{number}" for number in range(first, first + count)]
            generated = True
        elif len(identifiers) != count:
            raise ValueError(f"{len(identifiers)} identifiers for {count} payloads")
        else:
            generated = False
        if event_times_ms is not None and len(event_times_ms) != count:
            raise ValueError(f"{len(event_times_ms)} event times for {count} payloads")
        meter = self._meters_by_event_name.get(event_name)
        customer_key = meter.customer_payload_key if meter is not None else DEFAULT_CUSTOMER_PAYLOAD_KEY
        customer_ids = [payload.get(customer_key, "") for payload in payloads]
        if self._validate:
            self._check_batch(event_name, meter, customer_ids, identifiers, generated, payloads, event_times_ms,
                              received_at_ms)
        values = self._codec.encode_meter_events(event_name, customer_ids, identifiers, payloads, received_at_ms,
                                                 event_times_ms)
        self._produce_all(self._customer_topic, values, [customer_id.encode() for customer_id in customer_ids],
                          received_at_ms)
        return identifiers if generated else list(identifiers)

    def cancel_meter_event(self, event_name: str, identifier: str, *, customer_id: str | None = None) -> MeterEventCanceled:
        """Cancel a meter event by its identifier (Stripe's meter event adjustment). Without a
        customer id the cancellation goes to every partition, so the owning worker sees it."""
        fact = MeterEventCanceled(event_name=event_name, identifier=identifier, customer_id=customer_id,
                                  received_at_ms=self._now_ms())
        self.send(fact)
        return fact

    def send(self, fact: object) -> None:
        """Encode and enqueue any input fact, routed as FACTS.md says: customer facts keyed by
        customer id, catalog facts keyed by their id, time facts (and cancellations without a
        customer) to every partition of customer-facts. Meter events are validated first."""
        fact_class = type(fact)
        timestamp_ms = self._now_ms()
        if fact_class is MeterEventRecorded:
            timestamp_ms = fact.received_at_ms  # its arrival, which the engine also judges it by
            if self._validate:
                self._check(fact, timestamp_ms)
        value = self._codec.encode(fact)
        if fact_class in _CATALOG_KEY_FIELD:
            self._produce(self._catalog_topic, value, getattr(fact, _CATALOG_KEY_FIELD[fact_class]).encode(), timestamp_ms)
        elif fact_class in _TIME_FACTS or (fact_class is MeterEventCanceled and fact.customer_id is None):
            for partition in range(self._partition_count(self._customer_topic)):
                self._produce(self._customer_topic, value, b"", timestamp_ms, partition)
        elif fact_class in _CUSTOMER_FACTS:
            self._produce(self._customer_topic, value, fact.customer_id.encode(), timestamp_ms)
        else:
            raise NotAnInputFact(f"{fact_class.__name__} is derived by the engine; producers do not write it")

    def send_all(self, facts: Iterable[object]) -> None:
        """send() of each fact, in order."""
        for fact in facts:
            self.send(fact)

    # --- delivery --------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve pending delivery reports; returns how many were served."""
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> FlushResult:
        """Wait (at most `timeout_s`) until every record sent so far is acknowledged or failed, and
        report what happened to the records sent since the previous flush."""
        undelivered_count = self._producer.flush(timeout_s)
        self._unpolled_count = 0
        result = FlushResult(
            delivered_count=self._sent_count - self._failed_count - undelivered_count,
            failed_count=self._failed_count,
            undelivered_count=undelivered_count,
            failures=tuple(self._failures),
        )
        self._sent_count = undelivered_count  # still in flight: they belong to the next flush
        self._failed_count = 0
        self._failures = []
        return result

    def __len__(self) -> int:
        """Records (and protocol requests) waiting in the local queue or in flight."""
        return len(self._producer)

    @property
    def sent_since_flush(self) -> int:
        """Records handed to Kafka since the previous flush (those still in flight included)."""
        return self._sent_count

    def close(self, timeout_s: float = 60.0) -> FlushResult:
        """Flush before the producer is dropped (librdkafka needs no other shutdown)."""
        return self.flush(timeout_s)

    def __enter__(self) -> FactProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        result = self.close()
        if exc is None and not result.ok:
            raise DeliveryFailed(result)

    # --- internals -------------------------------------------------------------------------------

    def _check(self, event: MeterEventRecorded, now_ms: int, position: str = "") -> None:
        verdict = validate_meter_event(event, self._meters_by_event_name, self._catalog.meter_inactive_at,
                                       self._known_customer_ids, now_ms)
        if type(verdict) is MeterEventRejected:
            raise MeterEventInvalid(str(verdict.code), position + verdict.message, event)

    # The fast path of validation: a cheap test that is True only for events validate_meter_event
    # surely accepts (known active meter, customer present and known, a plain digit value, a
    # timestamp in the window). Anything else, however unlikely, is judged by validate_meter_event
    # itself, so the SDK rejects exactly what the engine rejects, with the same code.

    def _meter_surely_accepts(self, meter: MeterDefined | None, event_name: str) -> bool:
        return (meter is not None and len(event_name) <= MAX_EVENT_NAME_LENGTH
                and meter.meter_id not in self._catalog.meter_status_changes)

    def _surely_valid(self, meter: MeterDefined, customer_id: str, payload: Mapping[str, str], event_time_ms: int,
                      now_ms: int) -> bool:
        value_text = payload.get(meter.value_payload_key)
        return (bool(customer_id) and (self._every_customer or customer_id in self._known_customer_ids)
                and (is_surely_valid_value(value_text)
                     or (value_text is None and meter.aggregation == MeterAggregation.COUNT))
                and type(event_time_ms) is int
                and is_timely(event_time_ms, now_ms))

    def _check_batch(self, event_name: str, meter: MeterDefined | None, customer_ids: list[str],
                     identifiers: Sequence[str], identifiers_generated: bool, payloads: Sequence[Mapping[str, str]],
                     event_times_ms: Sequence[int] | None, now_ms: int) -> None:
        """Raise MeterEventInvalid for the first event of the batch the engine would reject."""
        meter_ok = self._meter_surely_accepts(meter, event_name)
        if meter_ok and event_times_ms is None and identifiers_generated:
            # The common batch, with the per-event test inlined: every event is stamped now and
            # has a generated identifier (well under MAX_IDENTIFIER_LENGTH), so only the customer
            # and the value can be in doubt.
            value_key = meter.value_payload_key
            every_customer, known = self._every_customer, self._known_customer_ids
            # The whole batch at once, in C loops: a customer in each event (known, when the client
            # knows the customers) and only plain digit values. Anything else: event by event.
            if (all(customer_ids) and (every_customer or all(map(known.__contains__, customer_ids)))
                    and all_surely_valid_values([payload.get(value_key) for payload in payloads])):
                return
            value_optional = meter.aggregation == MeterAggregation.COUNT
            for index, payload in enumerate(payloads):
                customer_id = customer_ids[index]
                value_text = payload.get(value_key)
                if not (customer_id and (every_customer or customer_id in known)
                        and (is_surely_valid_value(value_text) or (value_text is None and value_optional))):
                    self._check_one(event_name, customer_ids, identifiers, payloads, event_times_ms, now_ms, index)
            return
        for index, payload in enumerate(payloads):
            event_time_ms = now_ms if event_times_ms is None else event_times_ms[index]
            if not (meter_ok and self._surely_valid(meter, customer_ids[index], payload, event_time_ms, now_ms)
                    and (identifiers_generated or len(identifiers[index]) <= MAX_IDENTIFIER_LENGTH)):
                self._check_one(event_name, customer_ids, identifiers, payloads, event_times_ms, now_ms, index)

    def _check_one(self, event_name: str, customer_ids: list[str], identifiers: Sequence[str],
                   payloads: Sequence[Mapping[str, str]], event_times_ms: Sequence[int] | None, now_ms: int,
                   index: int) -> None:
        event = MeterEventRecorded(
            customer_id=customer_ids[index], event_name=event_name, identifier=identifiers[index],
            payload=dict(payloads[index]), received_at_ms=now_ms,
            event_time_ms=now_ms if event_times_ms is None else event_times_ms[index])
        self._check(event, now_ms, position=f"event {index} of the batch (nothing sent): ")

    def _produce(self, topic: str, value: bytes, key: bytes, timestamp_ms: int, partition: int = -1) -> None:
        # The record timestamp is the arrival time (received_at): replay seeks by it (offsets_for_times).
        # With the receipt bound on, the broker replaces it by its append time (LogAppendTime).
        try:
            self._producer.produce(topic, value, key, partition=partition, timestamp=timestamp_ms)
        except BufferError:
            self._produce_when_room(topic, value, key, timestamp_ms, partition)
        self._sent_count += 1
        self._unpolled_count += 1
        if self._unpolled_count >= POLL_EVERY_RECORDS:
            self._unpolled_count = 0
            self._producer.poll(0)

    def _produce_all(self, topic: str, values: list[bytes], keys: list[bytes], timestamp_ms: int) -> None:
        """_produce of each record, with the bookkeeping per chunk rather than per record."""
        produce, poll = self._producer.produce, self._producer.poll
        count = len(values)
        index = 0
        try:
            for start in range(0, count, POLL_EVERY_RECORDS):
                end = min(start + POLL_EVERY_RECORDS, count)
                for index in range(start, end):
                    try:
                        produce(topic, values[index], keys[index], timestamp=timestamp_ms)
                    except BufferError:
                        self._produce_when_room(topic, values[index], keys[index], timestamp_ms)
                index = end
                poll(0)  # serve failure reports (and the user's callback) as records flow
        except BaseException:
            self._sent_count += index  # the records before the failing one are queued
            raise
        self._sent_count += count
        self._unpolled_count = 0

    def _produce_when_room(self, topic: str, value: bytes, key: bytes, timestamp_ms: int, partition: int = -1) -> None:
        """Backpressure: the local queue is full, so serve delivery reports (the broker's acks free
        room) and retry, for up to queue_full_timeout_s; then raise ProducerQueueFull."""
        give_up_at_s = time.monotonic() + self._queue_full_timeout_s
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, partition=partition, timestamp=timestamp_ms)
                return
            except BufferError:
                if time.monotonic() > give_up_at_s:
                    raise ProducerQueueFull(f"local queue full for {self._queue_full_timeout_s} s "
                                            f"({len(self._producer)} records waiting)") from None

    def _partition_count(self, topic: str, timeout_s: float = 10.0) -> int:
        if topic not in self._partition_counts:
            # A topic created a moment ago may not be in the broker's metadata yet: ask again.
            give_up_at_s = time.monotonic() + timeout_s
            while True:
                metadata = self._producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
                if metadata is not None and metadata.error is None and metadata.partitions:
                    break
                if time.monotonic() > give_up_at_s:
                    raise UnknownTopic(f"topic {topic} does not exist (create it: streams.topics.ensure_topics)")
                time.sleep(0.2)
            self._partition_counts[topic] = len(metadata.partitions)
        return self._partition_counts[topic]

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is None:
            if self._user_on_delivery is not None:
                self._user_on_delivery(DeliveryReport(message.topic(), message.partition(), message.offset(),
                                                      message.key(), message.value(), None))
            return
        report = DeliveryReport(message.topic(), message.partition(), message.offset(), message.key(),
                                message.value(), f"{error.name()}: {error.str()}", bool(error.retriable()))
        self._failed_count += 1
        if len(self._failures) < MAX_KEPT_FAILURES:
            self._failures.append(report)
        if self._user_on_delivery is not None:
            self._user_on_delivery(report)

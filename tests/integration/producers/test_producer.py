"""The producer SDK against a real broker: routing, delivery reports, validation, backpressure, flush."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from aiokafka.partitioner import murmur2

from billing.facts import (
    CustomerCreated,
    MeterAggregation,
    MeterDefined,
    MeterEventCanceled,
    TimeTicked,
    UsageBucketUpdated,
)
from billing.meter_events import MAX_EVENT_AGE_MS
from producers import DeliveryFailed, FactProducer, MeterEventInvalid, NotAnInputFact, ProducerQueueFull
from producers.catalog_reader import read_catalog


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def test_meter_event_lands_keyed_by_payload_customer_in_the_murmur2_partition_with_arrival_timestamp(
        producer_settings, catalog, codec, records):
    customer_id = unique("cus")
    a_minute_ago_ms = int(time.time() * 1000) - 60_000
    with FactProducer(producer_settings, catalog=catalog) as producer:
        sent = producer.send_meter_event("llm_tokens", {"stripe_customer_id": customer_id, "value": "250"},
                                         event_time_ms=a_minute_ago_ms)

    (record,) = [r for r in records("customer-facts") if r.key() == customer_id.encode()]
    assert codec.decode(record.value()) == sent
    assert sent.customer_id == customer_id
    assert record.partition() == (murmur2(customer_id.encode()) & 0x7FFFFFFF) % producer_settings.partitions
    assert record.timestamp()[1] == sent.received_at_ms
    assert sent.event_time_ms == a_minute_ago_ms


def test_identifiers_are_generated_unique_when_absent_and_kept_when_given(producer_settings, catalog):
    customer_id = unique("cus")
    with FactProducer(producer_settings, catalog=catalog) as producer:
        generated = [producer.send_meter_event("llm_tokens", {"stripe_customer_id": customer_id, "value": "1"})
                     for _ in range(100)]
        given = producer.send_meter_event("llm_tokens", {"stripe_customer_id": customer_id, "value": "1"},
                                          identifier="my-id-1")
    assert len({event.identifier for event in generated}) == 100
    assert all(event.identifier for event in generated)
    assert given.identifier == "my-id-1"


@pytest.mark.parametrize(("event_name", "payload", "age_ms", "code"), [
    ("no_such_event", {"stripe_customer_id": "cus_1", "value": "1"}, 0, "no_meter"),
    ("llm_tokens", {"value": "1"}, 0, "meter_event_no_customer_defined"),
    ("llm_tokens", {"stripe_customer_id": "cus_1"}, 0, "meter_event_value_not_found"),
    ("llm_tokens", {"stripe_customer_id": "cus_1", "value": "ten"}, 0, "meter_event_invalid_value"),
    ("llm_tokens", {"stripe_customer_id": "cus_1", "value": "1"}, MAX_EVENT_AGE_MS + 60_000, "timestamp_too_far_in_past"),
    ("llm_tokens", {"stripe_customer_id": "cus_1", "value": "1"}, -10 * 60_000, "timestamp_in_future"),
])
def test_invalid_meter_event_fails_fast_with_the_stripe_code_and_sends_nothing(
        producer_settings, catalog, event_name, payload, age_ms, code):
    with FactProducer(producer_settings, catalog=catalog) as producer:
        with pytest.raises(MeterEventInvalid) as raised:
            producer.send_meter_event(event_name, payload, event_time_ms=int(time.time() * 1000) - age_ms)
        assert producer.sent_since_flush == 0
        result = producer.flush(10)
    assert raised.value.code == code
    assert result.delivered_count == 0


def test_unknown_customer_is_rejected_when_the_client_knows_the_customers(producer_settings, catalog):
    with FactProducer(producer_settings, catalog=catalog, known_customer_ids={"cus_known"}) as producer:
        producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_known", "value": "1"})
        with pytest.raises(MeterEventInvalid, match="meter_event_customer_not_found"):
            producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_stranger", "value": "1"})


def test_every_record_gets_a_delivery_report_with_its_offset(producer_settings, catalog, codec):
    reports = []
    customer_id = unique("cus")
    with FactProducer(producer_settings, catalog=catalog, on_delivery=reports.append) as producer:
        sent = [producer.send_meter_event("llm_tokens", {"stripe_customer_id": customer_id, "value": str(i)})
                for i in range(50)]
        result = producer.flush(30)
    assert result.ok and result.delivered_count == 50
    assert [report.fact(codec) for report in reports] == sent
    assert all(report.delivered and report.offset >= 0 for report in reports)
    offsets = [report.offset for report in reports]
    assert offsets == sorted(offsets) and len(set(offsets)) == 50  # one customer: one partition, in order


def test_flush_reports_every_record_the_broker_did_not_take(settings, catalog):
    nowhere = settings.model_copy(update={"topic_prefix": unique("no-such-topics")})
    reports = []
    producer = FactProducer(nowhere, catalog=catalog, on_delivery=reports.append,
                            config={"message.timeout.ms": 1500})
    for i in range(5):
        producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_1", "value": str(i)})
    result = producer.flush(30)
    assert not result.ok
    assert (result.delivered_count, result.failed_count, result.undelivered_count) == (0, 5, 0)
    assert len(result.failures) == 5 and all(failure.error for failure in result.failures)
    assert [report.delivered for report in reports] == [False] * 5


def test_leaving_the_block_flushes_and_raises_when_a_record_failed(settings, catalog):
    nowhere = settings.model_copy(update={"topic_prefix": unique("no-such-topics")})
    with pytest.raises(DeliveryFailed) as raised:
        with FactProducer(nowhere, catalog=catalog, config={"message.timeout.ms": 1500}) as producer:
            producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_1", "value": "1"})
    assert raised.value.result.failed_count == 1


def test_a_full_local_queue_pushes_back_and_every_event_is_still_delivered(producer_settings, catalog, records, codec):
    customer_id = unique("cus")
    with FactProducer(producer_settings, catalog=catalog,
                      config={"queue.buffering.max.messages": 50, "linger.ms": 5}) as producer:
        for i in range(3000):
            producer.send_meter_event("llm_tokens", {"stripe_customer_id": customer_id, "value": "1"},
                                      identifier=f"{customer_id}-{i}")
        result = producer.flush(60)
    assert result.ok and result.delivered_count == 3000
    identifiers = [codec.decode(r.value()).identifier for r in records("customer-facts") if r.key() == customer_id.encode()]
    assert identifiers == [f"{customer_id}-{i}" for i in range(3000)]


def test_a_queue_that_stays_full_raises_after_the_timeout(settings, catalog):
    nowhere = settings.model_copy(update={"topic_prefix": unique("no-such-topics")})
    producer = FactProducer(nowhere, catalog=catalog, queue_full_timeout_s=0.5,
                            config={"queue.buffering.max.messages": 10, "message.timeout.ms": 60_000})
    started_s = time.monotonic()
    with pytest.raises(ProducerQueueFull):
        for i in range(100):
            producer.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_1", "value": "1"})
    assert time.monotonic() - started_s < 10
    producer.flush(0)


def test_time_facts_and_customerless_cancellations_go_to_every_partition(producer_settings, catalog, records, codec):
    tick = TimeTicked(now_ms=int(time.time() * 1000) + 123)
    cancel_identifier = unique("ev")
    with FactProducer(producer_settings, catalog=catalog) as producer:
        producer.send(tick)
        producer.cancel_meter_event("llm_tokens", cancel_identifier)
    all_records = records("customer-facts")
    tick_partitions = {r.partition() for r in all_records if codec.decode(r.value()) == tick}
    cancel_partitions = {r.partition() for r in all_records
                         if isinstance(fact := codec.decode(r.value()), MeterEventCanceled)
                         and fact.identifier == cancel_identifier}
    assert tick_partitions == cancel_partitions == set(range(producer_settings.partitions))


def test_catalog_facts_written_by_the_sdk_are_read_back_for_validation(producer_settings):
    meter = MeterDefined(meter_id=unique("mtr"), display_name="Images", event_name=unique("images"),
                         aggregation=MeterAggregation.COUNT, created_at_ms=1)
    customer = CustomerCreated(customer_id=unique("cus"), created_at_ms=1)
    with FactProducer(producer_settings, validate=False) as producer:
        producer.send(meter)
        producer.send(customer)
    assert read_catalog(producer_settings).meters[meter.meter_id] == meter
    with FactProducer(producer_settings) as producer:  # reads the catalog topic itself
        event = producer.send_meter_event(meter.event_name, {"stripe_customer_id": customer.customer_id})
    assert event.customer_id == customer.customer_id


def test_derived_facts_are_refused(producer_settings, catalog):
    with FactProducer(producer_settings, catalog=catalog) as producer:
        with pytest.raises(NotAnInputFact):
            producer.send(UsageBucketUpdated(customer_id="cus_1", meter_id="m", bucket_start_ms=0,
                                             value=Decimal(1), event_count=1, updated_at_ms=0))


def test_a_batch_lands_event_by_event_keyed_by_customer_in_its_partition_with_the_arrival_timestamp(
        producer_settings, catalog, codec, records):
    customers = [unique("cus") for _ in range(3)]
    payloads = [{"stripe_customer_id": customers[i % 3], "value": str(i + 1)} for i in range(30)]
    arrivals_ms = []

    def clock() -> int:
        arrivals_ms.append(int(time.time() * 1000))
        return arrivals_ms[-1]

    with FactProducer(producer_settings, catalog=catalog, now_ms=clock) as producer:
        identifiers = producer.send_meter_events("llm_tokens", payloads)

    (arrived_ms,) = arrivals_ms
    expected = {identifier: (payload["stripe_customer_id"], payload) for identifier, payload in zip(identifiers, payloads)}
    landed = [r for r in records("customer-facts") if r.key() in {c.encode() for c in customers}]
    assert len(landed) == 30
    for record in landed:
        fact = codec.decode(record.value())
        customer_id, payload = expected[fact.identifier]
        assert (fact.customer_id, fact.event_name, fact.payload) == (customer_id, "llm_tokens", payload)
        assert fact.event_time_ms == fact.received_at_ms == record.timestamp()[1] == arrived_ms
        assert record.key() == customer_id.encode()
        assert record.partition() == (murmur2(record.key()) & 0x7FFFFFFF) % producer_settings.partitions


def test_a_batch_larger_than_the_local_queue_pushes_back_and_is_delivered_in_order(
        producer_settings, catalog, records, codec):
    customer_id = unique("cus")
    identifiers = [f"{customer_id}-{i}" for i in range(3000)]
    with FactProducer(producer_settings, catalog=catalog,
                      config={"queue.buffering.max.messages": 50, "linger.ms": 5}) as producer:
        producer.send_meter_events("llm_tokens", [{"stripe_customer_id": customer_id, "value": "1"}] * 3000,
                                   identifiers=identifiers)
        result = producer.flush(60)
    assert result.ok and result.delivered_count == 3000
    landed = [codec.decode(r.value()).identifier for r in records("customer-facts") if r.key() == customer_id.encode()]
    assert landed == identifiers


def test_a_batch_to_a_queue_that_stays_full_raises_and_counts_only_what_was_queued(settings, catalog):
    nowhere = settings.model_copy(update={"topic_prefix": unique("no-such-topics")})
    producer = FactProducer(nowhere, catalog=catalog, queue_full_timeout_s=0.5,
                            config={"queue.buffering.max.messages": 10, "message.timeout.ms": 60_000})
    with pytest.raises(ProducerQueueFull):
        producer.send_meter_events("llm_tokens", [{"stripe_customer_id": "cus_1", "value": "1"}] * 100)
    assert producer.sent_since_flush == 10  # exactly the records that fit in the queue
    producer.flush(0)


def test_a_batch_the_broker_did_not_take_is_reported_record_by_record(settings, catalog):
    nowhere = settings.model_copy(update={"topic_prefix": unique("no-such-topics")})
    with pytest.raises(DeliveryFailed) as raised:
        with FactProducer(nowhere, catalog=catalog, config={"message.timeout.ms": 1500}) as producer:
            producer.send_meter_events("llm_tokens", [{"stripe_customer_id": "cus_1", "value": str(i)} for i in range(5)])
    result = raised.value.result
    assert (result.delivered_count, result.failed_count, result.undelivered_count) == (0, 5, 0)

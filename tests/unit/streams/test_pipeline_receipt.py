"""The worker's decode applies the receipt rule (billing.meter_events.is_received_within_bound) to
meter events and cancels by each record's timestamp (the broker's append time): a refused fact
becomes an item with no fact and a ReceivedAtOutOfBound error, which the fold dead-letters."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

from billing.facts import CustomerCreated, MeterAggregation, MeterDefined, MeterEventCanceled, MeterEventRecorded
from billing.meter_events import ReceivedAtOutOfBound
from billing.customer import FoldConfig
from billing.partition import PartitionProcessor, PartitionState
from billing.usage import UsageLedger
from producers.catalog_reader import fold_catalog
from schemas.codec import FactCodec
from streams.pipeline import BatchPipeline

APPENDED_MS = 1_780_000_000_000
HOUR_MS = 3_600_000
METER = MeterDefined(meter_id="mtr_t", display_name="T", event_name="tokens", aggregation=MeterAggregation.SUM,
                     created_at_ms=0)


class Message:
    """What _decode reads of a confluent-kafka message."""

    def __init__(self, offset: int, value: bytes, key: bytes, appended_at_ms: int) -> None:
        self._offset, self._value, self._key, self._timestamp = offset, value, key, appended_at_ms

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_LOG_APPEND_TIME, self._timestamp


def pipeline(bound_ms: int) -> BatchPipeline:
    decoder = BatchPipeline.__new__(BatchPipeline)  # only what _decode uses: no Kafka, no Faust
    decoder.codec = FactCodec(None)
    decoder.catalog_follower = SimpleNamespace(catalog=fold_catalog([METER]))
    decoder.receipt_bound_ms = bound_ms
    return decoder


def event(received_at_ms: int, identifier: str = "ev") -> MeterEventRecorded:
    return MeterEventRecorded(customer_id="cus_a", event_name="tokens", identifier=identifier,
                              payload={"stripe_customer_id": "cus_a", "value": "3"},
                              event_time_ms=received_at_ms, received_at_ms=received_at_ms)


def messages(facts: list) -> list[Message]:
    codec = FactCodec(None)
    return [Message(offset, codec.encode(fact), b"cus_a", APPENDED_MS) for offset, fact in enumerate(facts)]


def test_meter_events_and_cancels_beyond_the_bound_of_their_append_time_carry_the_refusal():
    cancel = MeterEventCanceled(event_name="tokens", identifier="ev", customer_id="cus_a",
                                received_at_ms=APPENDED_MS + HOUR_MS + 1)
    customer = CustomerCreated(customer_id="cus_a", created_at_ms=APPENDED_MS - 2 * HOUR_MS)  # no received_at
    facts = [event(APPENDED_MS - HOUR_MS), event(APPENDED_MS - HOUR_MS - 1), event(APPENDED_MS + HOUR_MS), cancel,
             customer]
    items, names_unknown = pipeline(HOUR_MS)._decode(messages(facts))
    assert not names_unknown
    assert [(offset, fact, type(error)) for offset, _, _, fact, error in items] == [
        (0, facts[0], type(None)),
        (1, None, ReceivedAtOutOfBound),
        (2, facts[2], type(None)),
        (3, None, ReceivedAtOutOfBound),
        (4, customer, type(None)),
    ]
    assert items[1][4].reason_code == "received_at_out_of_bound"
    assert items[1][1] and items[1][2] == b"cus_a"  # the original bytes and key, for the dead letter


def test_a_bound_of_zero_trusts_every_received_at():
    facts = [event(APPENDED_MS - 400 * 86_400_000), event(APPENDED_MS + 400 * 86_400_000, "ev2")]
    items, _ = pipeline(0)._decode(messages(facts))
    assert [fact for _, _, _, fact, _ in items] == facts


def test_the_fold_dead_letters_a_refused_item_with_its_reason_code():
    (item,) = pipeline(HOUR_MS)._decode(messages([event(APPENDED_MS - 2 * HOUR_MS)]))[0]
    processor = PartitionProcessor(topic="t.customer-facts", partition=0, customers={}, ledger=UsageLedger(),
                                   partition_state=PartitionState(), catalog=fold_catalog([METER]),
                                   config=FoldConfig(grace_period_ms=HOUR_MS))
    offset, value, key, fact, error = item
    (dead,) = processor.process(offset, fact, value, key, error)
    assert (dead.reason_code, dead.customer_id, dead.original_bytes) == ("received_at_out_of_bound", "cus_a", value)

"""encode_meter_events writes meter events from plain values: the bytes must be encode(fact)'s, always."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.facts import MeterEventRecorded
from schemas.codec import FactCodec
from schemas.errors import UnencodableFact

SINGLE_OBJECT_CODEC = FactCodec()

LONGS = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
# Short and long (past the 1 KiB prefix table), ASCII and not.
TEXTS = st.one_of(st.text(max_size=20), st.text(min_size=60, max_size=70), st.text(min_size=1020, max_size=1100))
EVENTS = st.lists(
    st.tuples(TEXTS, TEXTS, st.dictionaries(TEXTS, TEXTS, max_size=70), LONGS),  # customer, id, payload, time
    max_size=4,
)


def facts(event_name, events, received_at_ms):
    return [MeterEventRecorded(customer_id=customer_id, event_name=event_name, identifier=identifier, payload=payload,
                               event_time_ms=event_time_ms, received_at_ms=received_at_ms)
            for customer_id, identifier, payload, event_time_ms in events]


@settings(max_examples=300, deadline=None)
@given(event_name=TEXTS, events=EVENTS, received_at_ms=LONGS)
def test_meter_events_from_plain_values_are_byte_for_byte_encode_of_the_facts(event_name, events, received_at_ms):
    customer_ids, identifiers, payloads, event_times_ms = (list(column) for column in zip(*events)) if events \
        else ([], [], [], [])

    values = SINGLE_OBJECT_CODEC.encode_meter_events(event_name, customer_ids, identifiers, payloads, received_at_ms,
                                                     event_times_ms)

    assert values == [SINGLE_OBJECT_CODEC.encode(fact) for fact in facts(event_name, events, received_at_ms)]


@settings(max_examples=50, deadline=None)
@given(events=st.lists(st.tuples(TEXTS, TEXTS, st.dictionaries(TEXTS, TEXTS, max_size=3)), min_size=1, max_size=3),
       received_at_ms=LONGS)
def test_without_event_times_every_event_happened_at_its_arrival(events, received_at_ms):
    customer_ids, identifiers, payloads = (list(column) for column in zip(*events))

    values = SINGLE_OBJECT_CODEC.encode_meter_events("tokens", customer_ids, identifiers, payloads, received_at_ms)

    expected = facts("tokens", [(*event, received_at_ms) for event in events], received_at_ms)
    assert values == SINGLE_OBJECT_CODEC.encode_many(expected)


def test_registry_framing_is_encode_of_the_fact_too(registry_codec):
    payload = {"stripe_customer_id": "cus_ü", "value": "12"}
    (value,) = registry_codec.encode_meter_events("tokens", ["cus_ü"], ["evt_1"], [payload], 1_763_900_000_001,
                                                  [1_763_900_000_000])
    assert value[:1] == b"\x00"
    assert value == registry_codec.encode(facts("tokens", [("cus_ü", "evt_1", payload, 1_763_900_000_000)],
                                                1_763_900_000_001)[0])


@pytest.mark.parametrize(("customer_ids", "payloads", "received_at_ms"), [
    (["cus_1"], [{"value": 3}], 1),
    ([7], [{}], 1),
    (["cus_1"], [{}], 1 << 63),
], ids=["int_payload_value", "int_customer", "long_overflow"])
def test_values_that_are_not_avro_strings_or_longs_fail_as_encode_does(customer_ids, payloads, received_at_ms):
    with pytest.raises(UnencodableFact):
        SINGLE_OBJECT_CODEC.encode_meter_events("tokens", customer_ids, ["evt_1"], payloads, received_at_ms)


def test_the_hand_written_layout_is_the_current_schema_so_the_fast_path_is_taken():
    # If MeterEventRecorded's schema changes, encode_meter_events stays correct (it falls back to
    # encode) but the producer loses its speed: update _METER_EVENT_LAYOUT and the encoder with it.
    assert SINGLE_OBJECT_CODEC._meter_event_layout_known

"""Client-side validation needs no broker: a bad event fails before anything is queued."""

from __future__ import annotations

import pytest

from billing.facts import MeterAggregation, MeterDefined
from drawdown.settings import Settings
from producers import FactProducer, MeterEventInvalid, fold_catalog

NOW_MS = 1_763_900_000_000
# No broker listens there: librdkafka's connection errors would flood stderr (emergencies only).
QUIET = {"log_level": 0}


@pytest.fixture
def producer() -> FactProducer:
    unreachable = Settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="unit")
    meter = MeterDefined(meter_id="m1", display_name="Tokens", event_name="tokens", aggregation=MeterAggregation.SUM,
                         customer_payload_key="account", created_at_ms=1)
    return FactProducer(unreachable, catalog=fold_catalog([meter]), now_ms=lambda: NOW_MS, config=QUIET)


def test_the_customer_comes_from_the_meters_customer_payload_key(producer):
    event = producer.send_meter_event("tokens", {"account": "cus_9", "value": "3"})
    assert (event.customer_id, event.event_time_ms, event.received_at_ms) == ("cus_9", NOW_MS, NOW_MS)
    assert producer.sent_since_flush == 1


def test_an_event_without_the_meters_customer_key_is_refused_before_queueing(producer):
    with pytest.raises(MeterEventInvalid) as raised:
        producer.send_meter_event("tokens", {"stripe_customer_id": "cus_9", "value": "3"})
    assert raised.value.code == "meter_event_no_customer_defined"
    assert producer.sent_since_flush == 0


def test_validation_can_be_turned_off_for_the_engine_to_dead_letter():
    lenient = FactProducer(Settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="unit"), validate=False,
                           config=QUIET)
    event = lenient.send_meter_event("unknown", {"value": "x"})
    assert event.customer_id == "" and lenient.sent_since_flush == 1

"""Delivery failures are reported record by record, so the caller learns which events failed, with
no per-record callback object: one producer-wide on_delivery (failures only unless the caller
listens). No broker listens here, so every record times out in the local queue."""

from __future__ import annotations

from billing.facts import MeterAggregation, MeterDefined
from drawdown.settings import Settings
from producers import DeliveryReport, FactProducer, fold_catalog

NOW_MS = 1_763_900_000_000
METER = MeterDefined(meter_id="m_sum", display_name="Tokens", event_name="tokens", aggregation=MeterAggregation.SUM,
                     created_at_ms=1)
# No broker: records fail after message.timeout.ms; log_level 0 keeps connection errors off stderr.
FAIL_FAST = {"log_level": 0, "message.timeout.ms": 200}


def unreachable_producer(**options) -> FactProducer:
    return FactProducer(Settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="unit"),
                        catalog=fold_catalog([METER]), now_ms=lambda: NOW_MS, config=FAIL_FAST, **options)


def payloads(count: int) -> list[dict[str, str]]:
    return [{"stripe_customer_id": f"cus_{index % 3}", "value": str(index + 1)} for index in range(count)]


def test_flush_names_every_failed_event_of_a_batch_without_a_callback():
    sdk = unreachable_producer()
    identifiers = sdk.send_meter_events("tokens", payloads(7))
    identifiers += sdk.send_meter_events("tokens", payloads(2), identifiers=["mine_1", "mine_2"])
    result = sdk.flush(10)
    assert (result.delivered_count, result.failed_count, result.undelivered_count) == (0, 9, 0)
    assert not result.ok and all(failure.error for failure in result.failures)
    assert sorted(failure.fact().identifier for failure in result.failures) == sorted(identifiers)
    assert {failure.key for failure in result.failures} == {b"cus_0", b"cus_1", b"cus_2"}
    assert sdk.flush(1).ok and sdk.sent_since_flush == 0  # reported once, then forgotten


def test_a_callback_hears_of_every_failed_event_once():
    reports: list[DeliveryReport] = []
    sdk = unreachable_producer(on_delivery=reports.append)
    identifiers = sdk.send_meter_events("tokens", payloads(5))
    single = sdk.send_meter_event("tokens", {"stripe_customer_id": "cus_9", "value": "3"})
    result = sdk.flush(10)
    assert result.failed_count == 6 and len(reports) == 6
    assert sorted(report.fact().identifier for report in reports) == sorted([*identifiers, single.identifier])
    assert not any(report.delivered for report in reports)

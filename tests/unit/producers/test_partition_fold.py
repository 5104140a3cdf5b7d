"""Replay's per-partition fold without Kafka: who exists and test clocks decide validation, the
usage ledger decides dedupe and cancellation, grouping merges minutes."""

from __future__ import annotations

from decimal import Decimal

from billing.facts import (
    CustomerCreated,
    MeterAggregation,
    MeterDefined,
    MeterEventCanceled,
    MeterEventRecorded,
    TestClockAdvanced,
    TestClockCreated,
)
from producers.catalog import fold_catalog
from producers.replay import PartitionFold, group_rows

DAY_MS = 86_400_000
NOW_MS = 1_763_856_000_000  # a whole day
CATALOG = fold_catalog([MeterDefined(meter_id="mtr_tokens", display_name="Tokens", event_name="tokens",
                                     aggregation=MeterAggregation.SUM, created_at_ms=0)])


def event(customer_id: str, identifier: str, value: str, event_time_ms: int, received_at_ms: int = NOW_MS):
    return MeterEventRecorded(customer_id=customer_id, event_name="tokens", identifier=identifier,
                              payload={"stripe_customer_id": customer_id, "value": value},
                              event_time_ms=event_time_ms, received_at_ms=received_at_ms)


def fold(facts) -> PartitionFold:
    partition = PartitionFold(CATALOG)
    for offset, fact in enumerate(facts):
        partition.apply(offset, fact)
    return partition


def rows(partition: PartitionFold, group_by: str = "minute"):
    return [(r.customer_id, r.period_start_ms, r.value, r.event_count)
            for r in group_rows([partition.ledger], CATALOG, NOW_MS - 200 * DAY_MS, NOW_MS + DAY_MS, group_by)]


def test_duplicates_count_once_and_a_cancellation_removes_the_event():
    partition = fold([CustomerCreated(customer_id="cus_a", created_at_ms=0),
                      event("cus_a", "e1", "10", NOW_MS), event("cus_a", "e1", "99", NOW_MS),
                      event("cus_a", "e2", "5", NOW_MS + 1),
                      MeterEventCanceled(event_name="tokens", identifier="e2", received_at_ms=NOW_MS + 2)])
    assert rows(partition) == [("cus_a", NOW_MS, Decimal(10), 1)]


def test_events_of_customers_not_created_before_them_are_rejected_as_the_engine_does():
    partition = fold([event("cus_a", "e1", "10", NOW_MS), CustomerCreated(customer_id="cus_a", created_at_ms=0),
                      event("cus_a", "e2", "7", NOW_MS)])
    assert rows(partition) == [("cus_a", NOW_MS, Decimal(7), 1)]
    assert partition.rejected == {"meter_event_customer_not_found": 1}


def test_a_test_clock_customer_is_judged_by_its_clocks_frozen_time_not_the_arrival_time():
    frozen_ms = NOW_MS - 100 * DAY_MS  # far more than 35 days before the arrival
    partition = fold([TestClockCreated(test_clock_id="clock_1", frozen_time_ms=frozen_ms, created_at_ms=0),
                      CustomerCreated(customer_id="cus_c", test_clock_id="clock_1", created_at_ms=0),
                      CustomerCreated(customer_id="cus_w", created_at_ms=0),
                      event("cus_c", "e1", "3", frozen_ms), event("cus_w", "e1", "3", frozen_ms),
                      TestClockAdvanced(test_clock_id="clock_1", frozen_time_ms=frozen_ms + DAY_MS, advanced_at_ms=0),
                      event("cus_c", "e2", "4", frozen_ms + DAY_MS)])
    assert [(customer, value) for customer, _, value, _ in rows(partition)] == [("cus_c", Decimal(3)), ("cus_c", Decimal(4))]
    assert partition.rejected == {"timestamp_too_far_in_past": 1}


def test_grouping_by_day_merges_the_minutes_of_a_day():
    partition = fold([CustomerCreated(customer_id="cus_a", created_at_ms=0),
                      event("cus_a", "e1", "1.5", NOW_MS - 3_600_000), event("cus_a", "e2", "2.25", NOW_MS - 60_000)])
    assert rows(partition, "day") == [("cus_a", NOW_MS - DAY_MS, Decimal("3.75"), 2)]

"""Replay's per-partition fold without Kafka: who exists and test clocks decide validation, the
usage ledger decides dedupe and cancellation, grouping merges minutes; replay's compact ledger (and
its fast path for the common event) gives exactly the buckets and rows of the engine's UsageLedger."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from itertools import accumulate

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.facts import (
    CustomerCreated,
    EventTimeWindow,
    MeterAggregation,
    MeterDeactivated,
    MeterDefined,
    MeterEventCanceled,
    MeterEventRecorded,
    TestClockAdvanced,
    TestClockCreated,
    TestClockDeleted,
)
from billing.meter_events import MAX_EVENT_AGE_MS, MAX_EVENT_LEAD_MS, customer_now_ms, validate_meter_event
from billing.usage import UsageLedger
from producers.catalog_reader import fold_catalog
from billing.replay_fold import PartitionFold, group_rows
from tests.unit.meter_event_strategies import meter_events as shared_meter_events

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
            for r in group_rows(partition.usage_buckets(), CATALOG, NOW_MS - 200 * DAY_MS, NOW_MS + DAY_MS, group_by)]


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


# --- the compact ledger and its fast path give exactly the engine's buckets and rows -----------

LONG_NAME = "n" * 101
MIXED_METERS = [
    MeterDefined(meter_id="m_sum", display_name="Tokens", event_name="tokens", aggregation=MeterAggregation.SUM,
                 created_at_ms=0),
    MeterDefined(meter_id="m_count", display_name="Images", event_name="images", aggregation=MeterAggregation.COUNT,
                 customer_payload_key="account", value_payload_key="quantity", created_at_ms=0),
    MeterDefined(meter_id="m_last", display_name="Seats", event_name="seats", aggregation=MeterAggregation.LAST,
                 created_at_ms=0),
    MeterDefined(meter_id="m_hourly", display_name="Hourly", event_name="hourly", aggregation=MeterAggregation.SUM,
                 event_time_window=EventTimeWindow.HOUR, created_at_ms=0),
    MeterDefined(meter_id="m_old", display_name="Old", event_name="old", aggregation=MeterAggregation.SUM,
                 created_at_ms=0),
    MeterDefined(meter_id="m_long", display_name="Long", event_name=LONG_NAME, aggregation=MeterAggregation.SUM,
                 created_at_ms=0),
]
# m_last's first definition, under another event name and formula: "seats_v1" events count for
# m_last by the meter id's rules (last), in the same buckets as "seats" events
FIRST_SEATS = MeterDefined(meter_id="m_last", display_name="Seats", event_name="seats_v1",
                           aggregation=MeterAggregation.SUM, created_at_ms=0)
MIXED_CATALOG = fold_catalog([FIRST_SEATS, *MIXED_METERS, MeterDeactivated(meter_id="m_old", deactivated_at_ms=0)])

# Each strategy draws the common case most often (sampled_from is uniform over its list).
CUSTOMER_IDS = st.sampled_from(["cus_a", "cus_b", "cus_c", "cus_a", "cus_b", "cus_c", ""])
CLOCK_IDS = st.sampled_from(["clock_1", "clock_2"])
PLAIN_VALUES = st.from_regex(r"[0-9]{1,18}", fullmatch=True)  # the common value
VALUES = st.one_of(PLAIN_VALUES, PLAIN_VALUES, PLAIN_VALUES, st.none(),
                   st.sampled_from(["0", "007", "9" * 19, "-5", "1.5", "1.50", "1e3", " 5", "", "abc", "١٢", "NaN"]))
# Arrival minus event time: mostly on time, else around the bounds validate_meter_event checks
# (35 days late, 5 minutes early) or anywhere.
LATENESS_MS = st.one_of(st.sampled_from([0, 0, 0, 1, -1, MAX_EVENT_AGE_MS, MAX_EVENT_AGE_MS + 1, -MAX_EVENT_LEAD_MS,
                                         -MAX_EVENT_LEAD_MS - 1]),
                        st.integers(min_value=-2 * MAX_EVENT_LEAD_MS, max_value=2 * MAX_EVENT_AGE_MS))
# Few minutes, few event times, few identifiers: buckets, ties in event time and dedupe keys are common.
EVENT_TIMES_MS = st.integers(min_value=0, max_value=6).map(lambda step: NOW_MS + step * 20_000)
RECEIPTS_MS = st.integers(min_value=0, max_value=3 * DAY_MS).map(lambda ms: NOW_MS + ms)
IDENTIFIERS = st.sampled_from([*(f"e{number}" for number in range(20)), "i" * 100, "i" * 101])
EVENT_NAMES = st.sampled_from(["tokens", "images", "seats"] * 3 + ["hourly", "seats_v1", "old", LONG_NAME, "unknown"])


def meter_events():
    # an unknown event name gets the first meter's keys
    return shared_meter_events(MIXED_CATALOG, event_names=EVENT_NAMES, customer_ids=CUSTOMER_IDS, values=VALUES,
                               event_times_ms=EVENT_TIMES_MS, lateness_ms=LATENESS_MS, identifiers=IDENTIFIERS,
                               unknown_meter_keys=(MIXED_METERS[0].customer_payload_key,
                                                   MIXED_METERS[0].value_payload_key),
                               other_keys_one_in=5)


CUSTOMERS_CREATED = st.builds(CustomerCreated, customer_id=CUSTOMER_IDS,
                              test_clock_id=st.sampled_from([None, None, None, "clock_1", "clock_2"]),
                              created_at_ms=st.just(0))
FACTS = st.one_of(
    meter_events(),
    meter_events(),
    meter_events(),
    meter_events(),
    st.builds(MeterEventCanceled, event_name=EVENT_NAMES, identifier=IDENTIFIERS,
              customer_id=st.one_of(st.none(), CUSTOMER_IDS), received_at_ms=RECEIPTS_MS),
    CUSTOMERS_CREATED,
    st.builds(TestClockCreated, test_clock_id=CLOCK_IDS, frozen_time_ms=RECEIPTS_MS, created_at_ms=st.just(0)),
    st.builds(TestClockAdvanced, test_clock_id=CLOCK_IDS, frozen_time_ms=RECEIPTS_MS, advanced_at_ms=st.just(0)),
    st.builds(TestClockDeleted, test_clock_id=CLOCK_IDS, deleted_at_ms=st.just(0)),
)
LOGS = st.builds(lambda created, facts: [*created, *facts], st.lists(CUSTOMERS_CREATED, max_size=3),
                 st.lists(FACTS, min_size=5, max_size=40))


class Everyone:
    def __contains__(self, customer_id: object) -> bool:
        return True


class EngineFold:
    """The engine's fold of one partition, spelled out: every meter event through
    validate_meter_event and the engine's own UsageLedger (as billing/partition.py folds it)."""

    def __init__(self, catalog, dedupe_window_ms: int, every_customer_exists: bool) -> None:
        self.catalog = catalog
        self.ledger = UsageLedger(dedupe_window_ms=dedupe_window_ms)
        self.aggregators = {meter_id: catalog.aggregator(meter_id) for meter_id in catalog.meters}
        self.customers: dict[str, str | None] = {}
        self.known_customers = Everyone() if every_customer_exists else self.customers
        self.clocks: dict[str, int] = {}
        self.meter_events = 0
        self.rejected: Counter[str] = Counter()

    def apply(self, offset: int, fact) -> None:
        if type(fact) is MeterEventRecorded:
            self.meter_events += 1
            meter = self.catalog.meters_by_event_name.get(fact.event_name)
            clock = None if meter is None else self.customers.get(fact.payload.get(meter.customer_payload_key, ""))
            now_ms = customer_now_ms(fact.received_at_ms, None if clock is None else self.clocks.get(clock, 0))
            verdict = validate_meter_event(fact, self.catalog.meters_by_event_name, self.catalog.meter_inactive_at,
                                           self.known_customers, now_ms)
            if not hasattr(verdict, "meter_id"):
                self.rejected[str(verdict.code)] += 1
                return
            self.ledger.apply_event(offset, verdict, fact.event_name, self.aggregators[verdict.meter_id])
        elif type(fact) is MeterEventCanceled:
            self.ledger.apply_cancel(offset, fact, self.aggregators)
        elif type(fact) is CustomerCreated:
            self.customers.setdefault(fact.customer_id, fact.test_clock_id)
        elif type(fact) in (TestClockCreated, TestClockAdvanced):
            self.clocks[fact.test_clock_id] = max(self.clocks.get(fact.test_clock_id, fact.frozen_time_ms),
                                                  fact.frozen_time_ms)
        elif type(fact) is TestClockDeleted:
            self.clocks.pop(fact.test_clock_id, None)

    def usage_buckets(self):
        return ((bucket_key, bucket.usage) for bucket_key, bucket in self.ledger.buckets.items())


def exact_buckets(partition):
    """Every minute bucket's MeterUsage, with exact reprs (Decimal('1.50') is not Decimal('1.5'))."""
    return {bucket_key: repr(usage) for bucket_key, usage in partition.usage_buckets()}


def exact_rows(partition, group_by: str):
    """Rows with exact reprs."""
    return [(r.customer_id, r.meter_id, r.period_start_ms, repr(r.value), r.event_count)
            for r in group_rows(partition.usage_buckets(), MIXED_CATALOG, NOW_MS - 200 * DAY_MS, NOW_MS + 80 * DAY_MS,
                                group_by)]


def on_time(identifier: str, received_at_ms: int = NOW_MS, event_time_ms: int = NOW_MS, customer_id: str = "cus_a",
            value: str = "1") -> MeterEventRecorded:
    return event(customer_id, identifier, value, event_time_ms, received_at_ms)


def cancel(identifier: str, customer_id: str | None = None, received_at_ms: int = NOW_MS) -> MeterEventCanceled:
    return MeterEventCanceled(event_name="tokens", identifier=identifier, customer_id=customer_id,
                              received_at_ms=received_at_ms)


CREATED_A = CustomerCreated(customer_id="cus_a", created_at_ms=0)
CREATED_B = CustomerCreated(customer_id="cus_b", created_at_ms=0)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=LOGS, every_customer_exists=st.booleans(), dedupe_window_ms=st.sampled_from([DAY_MS, 35 * DAY_MS]),
       offset_steps=st.lists(st.integers(min_value=1, max_value=3), min_size=43, max_size=43))
# Cases too precise to be drawn often: a tie in event time (the bucket's latest is then the later
# received, then the greater identifier: "e9" > "e10"), the exact bounds of accepted event times,
# of the dedupe window and of the cancellation window, one identifier sent by two customers (then
# cancelled without a customer), a cancellation naming another customer, two events through the
# general path received in the other order than their event times, a duplicate and a reuse after
# the dedupe window of an identifier first folded by the fast path, values summed as ints and as
# Decimals in one bucket, and a customer taken to exist and then created on a test clock.
@example(facts=[CREATED_A, on_time("e9"), on_time("e10")], every_customer_exists=False, dedupe_window_ms=DAY_MS,
         offset_steps=[1] * 43)
@example(facts=[CREATED_A, on_time("e1", received_at_ms=NOW_MS + 1), on_time("e2")], every_customer_exists=False,
         dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[on_time("e1", received_at_ms=NOW_MS + MAX_EVENT_AGE_MS),
                on_time("e2", received_at_ms=NOW_MS + MAX_EVENT_AGE_MS + 1),
                on_time("e3", received_at_ms=NOW_MS - MAX_EVENT_LEAD_MS),
                on_time("e4", received_at_ms=NOW_MS - MAX_EVENT_LEAD_MS - 1)],
         every_customer_exists=True, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, on_time("e1"), on_time("e1", received_at_ms=NOW_MS + DAY_MS, value="2"),
                on_time("e1", received_at_ms=NOW_MS + DAY_MS + 1, value="3")],
         every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, on_time("e1"), on_time("e2", value="2"), cancel("e1", received_at_ms=NOW_MS + DAY_MS),
                cancel("e2", received_at_ms=NOW_MS + DAY_MS + 1)],
         every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, CREATED_B, on_time("e1"), on_time("e1", customer_id="cus_b", value="2"), cancel("e1"),
                cancel("e1", "cus_b")], every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, CREATED_B, on_time("e1"), cancel("e1", "cus_b")], every_customer_exists=False,
         dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, on_time("e1", received_at_ms=NOW_MS + 5, value="1.5"),
                on_time("e2", received_at_ms=NOW_MS + 1, event_time_ms=NOW_MS + 1, value="2.5")],
         every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[CREATED_A, on_time("e1", value="5"), on_time("e1", received_at_ms=NOW_MS + 2 * DAY_MS, value="7"),
                on_time("e1", received_at_ms=NOW_MS + 2 * DAY_MS + 1, value="9"),
                cancel("e1", "cus_a", received_at_ms=NOW_MS + 2 * DAY_MS + 2)],
         every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[2] * 43)
@example(facts=[CREATED_A, on_time("e1", value="1.50"), on_time("e2", value="3"), on_time("e3", value="-0"),
                cancel("e1", received_at_ms=NOW_MS + 1)],
         every_customer_exists=False, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
@example(facts=[TestClockCreated(test_clock_id="clock_1", frozen_time_ms=NOW_MS - 100 * DAY_MS, created_at_ms=0),
                on_time("e1"), CustomerCreated(customer_id="cus_a", test_clock_id="clock_1", created_at_ms=0),
                on_time("e2")], every_customer_exists=True, dedupe_window_ms=DAY_MS, offset_steps=[1] * 43)
def test_the_compact_ledger_gives_exactly_the_buckets_and_rows_of_the_engines_usage_ledger(
        facts, every_customer_exists, dedupe_window_ms, offset_steps):
    replay = PartitionFold(MIXED_CATALOG, dedupe_window_ms, every_customer_exists=every_customer_exists)
    engine = EngineFold(MIXED_CATALOG, dedupe_window_ms, every_customer_exists)
    # in log order, offsets skipping now and then (as transaction markers make them)
    for index, (offset, fact) in enumerate(zip(accumulate(offset_steps), facts)):
        replay.apply(offset, fact)
        engine.apply(offset, fact)
        assert exact_buckets(replay) == exact_buckets(engine), f"after fact {index}: {fact}"
    for group_by in ("minute", "hour", "day"):
        assert exact_rows(replay, group_by) == exact_rows(engine, group_by)
    assert (dict(replay.rejected), replay.meter_events) == (dict(engine.rejected), engine.meter_events)


def test_the_common_event_does_not_go_through_the_general_path(monkeypatch):
    def general_path(*args):
        raise AssertionError("the common event went through validate_meter_event")

    partition = PartitionFold(CATALOG)
    partition.apply(0, CustomerCreated(customer_id="cus_a", created_at_ms=0))
    monkeypatch.setattr("billing.replay_fold.validate_meter_event", general_path)
    partition.apply(1, event("cus_a", "e1", "10", NOW_MS + 2))
    partition.apply(2, event("cus_a", "e2", "5", NOW_MS + 1))  # earlier in the same minute: still the sum
    assert rows(partition) == [("cus_a", NOW_MS, Decimal(15), 2)]

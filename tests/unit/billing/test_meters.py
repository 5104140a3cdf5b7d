from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.facts import EventTimeWindow, MeterAggregation
from billing.meters import MeterAggregator, MeterReading, add_plain, billable_quantity
from billing.periods import minute_bucket_start_ms

from .conftest import utc_ms

T0 = utc_ms(2025, 1, 1)
MINUTE_MS = 60_000


def reading(value: str, event_minute: int, received_minute: int | None = None, identifier: str | None = None):
    received = event_minute if received_minute is None else received_minute
    return MeterReading(
        event_time_ms=T0 + event_minute * MINUTE_MS,
        received_at_ms=T0 + received * MINUTE_MS,
        identifier=identifier or f"evt_{event_minute}_{received}_{value}",
        value=Decimal(value),
    )


def fold(aggregator: MeterAggregator, readings) -> Decimal:
    return aggregator.result(aggregator.add_all(aggregator.initialize(), readings))


@pytest.mark.parametrize(
    ("aggregation", "window", "readings", "expected"),
    [
        (MeterAggregation.SUM, None, [("3000", 0, None), ("2000", 5, None)], "5000"),
        (MeterAggregation.SUM, None, [("10", 0, None), ("-4", 1, None)], "6"),  # a correction
        (MeterAggregation.COUNT, None, [("1", 0, None), ("1", 1, None), ("1", 2, None)], "3"),
        (MeterAggregation.LAST, None, [("7", 10, 10), ("9", 5, 20)], "7"),  # latest in event time
        # hour window: only the last event received in each hour counts
        (MeterAggregation.SUM, EventTimeWindow.HOUR, [("5", 0, 0), ("8", 30, 31), ("2", 61, 61)], "10"),
        (MeterAggregation.SUM, EventTimeWindow.HOUR, [("5", 30, 40), ("8", 10, 35)], "5"),  # received last wins
        (MeterAggregation.COUNT, EventTimeWindow.HOUR, [("1", 0, 0), ("1", 1, 1), ("1", 70, 70)], "2"),
        (MeterAggregation.SUM, EventTimeWindow.DAY, [("5", 0, 0), ("8", 600, 600), ("3", 1500, 1500)], "11"),
        (MeterAggregation.LAST, EventTimeWindow.DAY, [("5", 0, 0), ("8", 1500, 1500), ("3", 10, 1600)], "8"),
        (MeterAggregation.SUM, None, [], "0"),
        (MeterAggregation.LAST, None, [], "0"),
    ],
)
def test_meters_aggregate_by_formula_and_event_time_window(aggregation, window, readings, expected):
    aggregator = MeterAggregator(aggregation, window)
    assert fold(aggregator, [reading(value, event, received) for value, event, received in readings]) == Decimal(expected)


@pytest.mark.parametrize(("total", "billed"), [("-5", "0"), ("0", "0"), ("12.5", "12.5")])
def test_a_negative_period_total_bills_zero(total, billed):
    assert billable_quantity(Decimal(total)) == Decimal(billed)


def test_minute_buckets_merge_into_the_period_total():
    aggregator = MeterAggregator(MeterAggregation.SUM)
    readings = [reading("3", minute % 7, minute) for minute in range(20)]
    buckets: dict[int, object] = {}
    for one in readings:
        start = minute_bucket_start_ms(one.event_time_ms)
        buckets[start] = aggregator.add(buckets.get(start, aggregator.initialize()), one)
    period_usage = aggregator.merge_all(buckets.values())
    assert aggregator.result(period_usage) == Decimal(60)
    assert aggregator.event_count(period_usage) == 20


readings_strategy = st.lists(
    st.builds(
        reading,
        value=st.decimals(min_value=-1000, max_value=10**6, places=3, allow_nan=False, allow_infinity=False).map(str),
        event_minute=st.integers(min_value=0, max_value=3 * 24 * 60),
        received_minute=st.integers(min_value=0, max_value=4 * 24 * 60),
    ),
    max_size=30,
    unique_by=lambda one: one.identifier,
)
aggregator_strategy = st.builds(
    MeterAggregator,
    st.sampled_from(list(MeterAggregation)),
    st.sampled_from([None, EventTimeWindow.HOUR, EventTimeWindow.DAY]),
)


@given(aggregator=aggregator_strategy, readings=readings_strategy, data=st.data())
def test_folding_readings_in_any_order_and_any_batch_split_gives_the_same_result(aggregator, readings, data):
    expected = fold(aggregator, readings)
    shuffled = data.draw(st.permutations(readings))
    cut_points = sorted(data.draw(st.lists(st.integers(0, len(readings)), max_size=5)))
    batches = [shuffled[start:end] for start, end in zip([0, *cut_points], [*cut_points, len(shuffled)])]
    batch_usages = [aggregator.add_all(aggregator.initialize(), batch) for batch in batches]
    merged = aggregator.merge_all(data.draw(st.permutations(batch_usages)))
    assert aggregator.result(merged) == expected


@given(aggregation=st.sampled_from(list(MeterAggregation)), readings=readings_strategy,
       same_times=st.booleans())
def test_add_plain_is_the_add_of_a_meter_without_window(aggregation, readings, same_times):
    aggregator = MeterAggregator(aggregation)
    if same_times:  # ties on event time, then on receipt: the identifier decides the latest
        readings = [one._replace(event_time_ms=0, received_at_ms=one.received_at_ms % 2) for one in readings]
    usage, plain = aggregator.initialize(), None
    for one in readings:
        usage, plain = aggregator.add(usage, one), add_plain(plain, one)
        assert repr(plain) == repr(usage)  # repr: Decimal('1.50') is not Decimal('1.5')

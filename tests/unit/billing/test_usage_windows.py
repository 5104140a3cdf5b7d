"""The read side (billing/usage_windows.py) against the workers' fold and the independent oracle.

Random usage on every meter kind goes through the workers' usage ledger into minute buckets and
out as the UsageBucketUpdated facts the projection stores; the read side folded over those must
give the period total the workers bill (their period usage adds every reading) and that the oracle
(tests/oracle/model.py, written from STRIPE.md alone) computes from the events themselves. The
event summaries' steps must add up to it (sum, count) or, as one step, equal it (every kind).
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.facts import EventTimeWindow, MeterAggregation, MeterEventCanceled
from billing.meter_events import MeterEventAccepted
from billing.meters import MeterAggregator, MeterReading
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_MINUTE
from billing.usage import UsageBucket, UsageLedger, bucket_fact, remove_reading
from billing.usage_windows import ProjectedBucket, projected_bucket, usage_between, usage_by_window
from tests.oracle import model

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KINDS = [(formula, window) for formula in MeterAggregation for window in (None, *EventTimeWindow)]


def _ledger(aggregator: MeterAggregator, readings: list[MeterReading]) -> UsageLedger:
    ledger = UsageLedger()
    for offset, reading in enumerate(readings):
        ledger.apply_event(offset, MeterEventAccepted("mtr_1", "cus_1", reading), "tokens", aggregator)
    return ledger


def _cancel(ledger: UsageLedger, aggregator: MeterAggregator, offset: int, reading: MeterReading):
    cancel = MeterEventCanceled(event_name="tokens", identifier=reading.identifier, customer_id="cus_1",
                                received_at_ms=reading.received_at_ms + 1)
    return ledger.apply_cancel(offset, cancel, {"mtr_1": aggregator})


def _projected(aggregator: MeterAggregator, readings: list[MeterReading],
               ledger: UsageLedger | None = None) -> list[ProjectedBucket]:
    """The readings through the workers' ledger, then each bucket as its fact, as projected."""
    ledger = ledger or _ledger(aggregator, readings)
    facts = [bucket_fact("cus_1", "mtr_1", start_ms, aggregator, bucket, 0)
             for (_, _, start_ms), bucket in ledger.buckets.items()]
    return [projected_bucket(f.bucket_start_ms, f.value, f.event_count, f.counted_event_time_ms,
                             f.counted_received_at_ms, f.counted_identifier) for f in facts]


def _oracle_total(formula: MeterAggregation, window: EventTimeWindow | None, readings: list[MeterReading]) -> Decimal:
    meter = {"aggregation": str(formula), "event_time_window": None if window is None else str(window)}
    events = [model.Event((0, index), "cus_1", "mtr_1", r.identifier, r.value, r.event_time_ms, r.received_at_ms)
              for index, r in enumerate(readings)]
    return model.aggregate(meter, events)[0]


@st.composite
def usage(draw):
    """Distinct events over three days around a period starting at a random minute: event times
    often in one minute or one instant, receipts often tied (the tie-breaks decide what counts)."""
    count = draw(st.integers(min_value=0, max_value=25))
    minutes = st.integers(min_value=-120, max_value=3 * 24 * 60)
    readings = []
    for index in range(count):
        event_time_ms = START_MS + draw(minutes) * MILLISECONDS_PER_MINUTE + draw(st.sampled_from([0, 1, 59_999]))
        received_at_ms = START_MS + draw(st.integers(min_value=0, max_value=6)) * 1000
        value = Decimal(draw(st.integers(min_value=-5, max_value=50))) / draw(st.sampled_from([1, 4]))
        readings.append(MeterReading(event_time_ms, received_at_ms, draw(st.sampled_from("abc")) + str(index), value))
    period_start_ms = START_MS + draw(st.integers(min_value=0, max_value=90)) * MILLISECONDS_PER_MINUTE
    canceled = draw(st.sets(st.sampled_from(range(count)), max_size=4)) if count else set()
    return readings, sorted(canceled), period_start_ms, period_start_ms + 2 * MILLISECONDS_PER_DAY


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), drawn=usage())
def test_projected_buckets_read_back_as_the_workers_and_the_oracle_bill_the_period(kind, drawn):
    """Cancels too: the period and the buckets take the canceled readings out or fold the rest again."""
    formula, window = kind
    readings, canceled, start_ms, end_ms = drawn
    aggregator = MeterAggregator(formula, window)
    in_period = [r for r in readings if start_ms <= r.event_time_ms < end_ms]
    period_usage = aggregator.add_all(aggregator.initialize(), in_period)  # the workers' period total
    ledger = _ledger(aggregator, readings)
    for offset, index in enumerate(canceled, start=len(readings)):
        (removed,) = _cancel(ledger, aggregator, offset, readings[index]).canceled
        if removed.seen.reading in in_period:  # as remove_usage takes it out of the period
            period_usage = remove_reading(aggregator, period_usage, removed.seen.reading, start_ms, end_ms,
                                          partial(ledger.readings, "cus_1", "mtr_1"))
    workers = aggregator.result(period_usage)
    kept = [r for index, r in enumerate(readings) if index not in canceled and start_ms <= r.event_time_ms < end_ms]
    assert workers == _oracle_total(formula, window, kept)

    buckets = _projected(aggregator, readings, ledger)
    assert usage_between(aggregator, buckets, start_ms, end_ms) == workers
    assert usage_by_window(aggregator, buckets, start_ms, end_ms, end_ms - start_ms) == [(start_ms, workers)]
    if formula != MeterAggregation.LAST:  # sum and count: the summaries' steps add up to the period
        for step_ms in (MILLISECONDS_PER_MINUTE, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_DAY):
            steps = usage_by_window(aggregator, buckets, start_ms, end_ms, step_ms)
            assert len(steps) == (end_ms - start_ms) // step_ms
            assert sum(total for _, total in steps) == workers


def test_an_hour_windowed_sum_counts_the_last_reading_received_in_each_hour():
    """Issue 14's case by hand: 10, 20, 30 in the first hour and 7 in the second bill 30 + 7."""
    aggregator = MeterAggregator(MeterAggregation.SUM, EventTimeWindow.HOUR)
    readings = [MeterReading(START_MS + minute * MILLISECONDS_PER_MINUTE, START_MS + index, f"e{index}", Decimal(v))
                for index, (minute, v) in enumerate([(1, 10), (2, 20), (3, 30), (61, 7)])]
    buckets = _projected(aggregator, readings)
    assert usage_between(aggregator, buckets, START_MS, START_MS + MILLISECONDS_PER_DAY) == 37
    hours = usage_by_window(aggregator, buckets, START_MS, START_MS + 2 * MILLISECONDS_PER_HOUR, MILLISECONDS_PER_HOUR)
    assert hours == [(START_MS, 30), (START_MS + MILLISECONDS_PER_HOUR, 7)]


def test_a_day_windowed_meter_summarised_per_hour_shows_the_days_reading_in_its_hour_only():
    aggregator = MeterAggregator(MeterAggregation.SUM, EventTimeWindow.DAY)
    readings = [MeterReading(START_MS + 5 * MILLISECONDS_PER_HOUR, START_MS + 2, "late", Decimal(4)),
                MeterReading(START_MS + 1 * MILLISECONDS_PER_HOUR, START_MS + 1, "early", Decimal(9))]
    projected = _projected(aggregator, readings)
    hours = usage_by_window(aggregator, projected, START_MS, START_MS + 6 * MILLISECONDS_PER_HOUR, MILLISECONDS_PER_HOUR)
    assert [total for _, total in hours] == [0, 0, 0, 0, 0, 4]  # received last: "late" (4), in hour 5


def test_a_last_meter_reads_the_latest_event_time_across_buckets_not_the_latest_receipt():
    aggregator = MeterAggregator(MeterAggregation.LAST, EventTimeWindow.HOUR)
    readings = [MeterReading(START_MS + 2 * MILLISECONDS_PER_HOUR, START_MS + 1, "newest_time", Decimal(5)),
                MeterReading(START_MS + MILLISECONDS_PER_HOUR, START_MS + 9, "newest_receipt", Decimal(8))]
    assert usage_between(aggregator, _projected(aggregator, readings), START_MS, START_MS + MILLISECONDS_PER_DAY) == 5


def test_a_canceled_reading_of_a_windowed_meter_gives_way_to_its_windows_next_one_received_last():
    """By hand: an hour holds 5 (received first) and 9 (received last, so it counts). Cancelling 9
    leaves 5 to count, in its bucket, the period and the projection; cancelling 5 instead changes
    nothing billed (9 still counts) but empties 5's bucket of it."""
    aggregator = MeterAggregator(MeterAggregation.SUM, EventTimeWindow.HOUR)
    five = MeterReading(START_MS, START_MS, "w1", Decimal(5))
    nine = MeterReading(START_MS + MILLISECONDS_PER_MINUTE, START_MS + 2 * MILLISECONDS_PER_MINUTE, "w2", Decimal(9))
    for canceled, other in ((nine, five), (five, nine)):
        ledger = _ledger(aggregator, [five, nine])
        period = aggregator.add_all(aggregator.initialize(), [five, nine])
        assert aggregator.result(period) == 9
        (removed,) = _cancel(ledger, aggregator, 2, canceled).canceled
        assert removed.bucket is not None and removed.bucket.usage == aggregator.initialize()
        assert removed.bucket.readings == ()
        period = remove_reading(aggregator, period, canceled, START_MS, START_MS + MILLISECONDS_PER_DAY,
                                partial(ledger.readings, "cus_1", "mtr_1"))
        assert aggregator.result(period) == other.value
        projected = _projected(aggregator, [], ledger)
        assert usage_between(aggregator, projected, START_MS, START_MS + MILLISECONDS_PER_DAY) == other.value


def test_a_canceled_latest_reading_of_a_last_meter_gives_way_to_the_next_latest():
    """By hand: 3 at 00:01, 8 at 00:05, 6 at 00:07 (latest). Cancelling 6 leaves 8; cancelling 3
    leaves 6."""
    aggregator = MeterAggregator(MeterAggregation.LAST)
    readings = [MeterReading(START_MS + minute * MILLISECONDS_PER_MINUTE, START_MS + index, f"e{index}", Decimal(v))
                for index, (minute, v) in enumerate([(1, 3), (5, 8), (7, 6)])]
    for canceled, left in ((2, 8), (0, 6)):
        ledger = _ledger(aggregator, readings)
        period = aggregator.add_all(aggregator.initialize(), readings)
        _cancel(ledger, aggregator, 3, readings[canceled])
        period = remove_reading(aggregator, period, readings[canceled], START_MS, START_MS + MILLISECONDS_PER_DAY,
                                partial(ledger.readings, "cus_1", "mtr_1"))
        assert aggregator.result(period) == left
        projected = _projected(aggregator, [], ledger)
        assert usage_between(aggregator, projected, START_MS, START_MS + MILLISECONDS_PER_DAY) == left


def test_a_bucket_stored_before_buckets_kept_their_readings_refuses_to_fold_again():
    """A worker upgraded mid-day: a `last` bucket it stored before has no readings to fold again,
    so cancelling its event is refused rather than billing a guess."""
    aggregator = MeterAggregator(MeterAggregation.LAST)
    reading = MeterReading(START_MS, START_MS, "e1", Decimal(3))
    ledger = _ledger(aggregator, [reading])
    bucket_key = ("cus_1", "mtr_1", START_MS)
    ledger.buckets[bucket_key] = UsageBucket(ledger.buckets[bucket_key].usage, 0)  # as stored before: no readings
    outcome = _cancel(ledger, aggregator, 1, reading)
    assert outcome.refused_code == "meter_event_cancel_unsupported" and outcome.canceled == ()

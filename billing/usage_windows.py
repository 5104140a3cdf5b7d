"""Usage for any span of time from projected minute buckets, exactly as the workers fold it.

The invoice preview and the meter event summaries read the projected usage buckets (one row per
customer, meter and event-time minute: the UsageBucketUpdated facts). They must show what the
finalized invoice will bill, so they do not re-aggregate the rows themselves: each bucket is turned
back into the usage state the workers hold for it (billing/meters.py MeterUsage), and the states
are merged with the meter's own aggregator, the same merge the workers' period totals amount to
(`add` over readings == `merge` over the buckets holding them, in any split).

A bucket of a `last` or hour/day-windowed meter carries the reading its value comes from (its
event time, receipt time and identifier): without it a reader cannot tell which of two buckets in
one hour holds the reading received last, the one that counts.

Pure: the callers fetch the rows and pass them in.

    buckets = [ProjectedBucket(bucket_start_ms, value, event_count, counted), ...]
    usage_between(aggregator, buckets, start_ms, end_ms)                 # one total
    usage_by_window(aggregator, buckets, start_ms, end_ms, step_ms)      # one total per step
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

from billing.facts import MeterAggregation
from billing.meters import MeterAggregator, MeterReading, MeterUsage


class ProjectedBucket(NamedTuple):
    """One projected minute bucket of one customer's meter."""

    bucket_start_ms: int
    value: Decimal  # the bucket's aggregate (UsageBucketUpdated.value)
    event_count: int
    counted: MeterReading | None = None  # the reading `value` comes from (`last` and windowed meters)


def projected_bucket(bucket_start_ms: int, value: Decimal, event_count: int, counted_event_time_ms: int | None,
                     counted_received_at_ms: int | None, counted_identifier: str | None) -> ProjectedBucket:
    """A bucket from the fields of its UsageBucketUpdated (or its projected row)."""
    counted = None if counted_event_time_ms is None else MeterReading(
        counted_event_time_ms, counted_received_at_ms or 0, counted_identifier or "", value)
    return ProjectedBucket(bucket_start_ms, value, event_count, counted)


def counted_reading(aggregator: MeterAggregator, usage: MeterUsage) -> MeterReading | None:
    """The reading a bucket's value comes from, where a reader needs it to merge buckets: the
    surviving reading of a windowed meter's bucket (a minute lies in one window), the latest
    reading of a `last` meter's. None for sum and count meters without window (they only add)."""
    if aggregator.event_time_window is not None:
        survivors = usage.window_survivors
        return next(iter(survivors.values())) if len(survivors) == 1 else None
    return usage.latest if aggregator.aggregation == MeterAggregation.LAST else None


def bucket_usage(aggregator: MeterAggregator, bucket: ProjectedBucket) -> MeterUsage:
    """The usage state the workers hold for this bucket, as far as the meter's result depends on it."""
    # A bucket projected before the counted reading was recorded (UsageBucketUpdated v1) stands for
    # a reading at its minute: between buckets of a raw `last` meter, minutes give the same order.
    reading = bucket.counted or MeterReading(bucket.bucket_start_ms, 0, "", bucket.value)
    if aggregator.event_time_window is not None:
        if bucket.event_count == 0:
            return aggregator.initialize()
        window_start_ms = aggregator.window_start_ms(reading.event_time_ms)
        return MeterUsage(window_survivors=MappingProxyType({window_start_ms: reading}))
    return MeterUsage(value_sum=bucket.value, event_count=bucket.event_count,
                      latest=reading if bucket.event_count else None)


def _fold(aggregator: MeterAggregator, buckets: Iterable[ProjectedBucket], start_ms: int, end_ms: int) -> MeterUsage:
    usages = (bucket_usage(aggregator, bucket) for bucket in buckets if start_ms <= bucket.bucket_start_ms < end_ms)
    if aggregator.event_time_window is None:
        return aggregator.merge_all(usages)
    # Merged window by window first: a windowed state copies its survivors on every merge, and a
    # month of busy minutes merged one by one would copy a growing map tens of thousands of times.
    by_window: dict[int, MeterUsage] = {}
    for usage in usages:
        for window in usage.window_survivors:
            by_window[window] = aggregator.merge(by_window.get(window, aggregator.initialize()), usage)
    return aggregator.merge_all(by_window.values())


def usage_between(aggregator: MeterAggregator, buckets: Iterable[ProjectedBucket], start_ms: int,
                  end_ms: int) -> Decimal:
    """The meter's aggregated usage of the buckets starting in [start_ms, end_ms)."""
    return aggregator.result(_fold(aggregator, buckets, start_ms, end_ms))


def usage_by_window(aggregator: MeterAggregator, buckets: list[ProjectedBucket], start_ms: int, end_ms: int,
                    step_ms: int) -> list[tuple[int, Decimal]]:
    """(window start, aggregated usage) for each step of [start_ms, end_ms), oldest first.

    The readings that count are chosen over the whole span, then each step aggregates those lying
    in it: a day-windowed meter summarised per hour shows the day's reading in its hour and 0 in the
    others, so the steps of a sum or count meter add up to the span's total, as billed.
    """
    by_step: dict[int, list[ProjectedBucket]] = {}
    for bucket in buckets:
        if start_ms <= bucket.bucket_start_ms < end_ms:
            by_step.setdefault(start_ms + (bucket.bucket_start_ms - start_ms) // step_ms * step_ms, []).append(bucket)
    starts = range(start_ms, end_ms, step_ms)
    if aggregator.event_time_window is None:  # every reading counts: each step folds its own buckets
        return [(start, usage_between(aggregator, by_step.get(start, ()), start, start + step_ms)) for start in starts]
    # the readings that count over the whole span, each in the step holding it (a minute lies in one step)
    by_step_survivors: dict[int, dict[int, MeterReading]] = {}
    for window, reading in _fold(aggregator, buckets, start_ms, end_ms).window_survivors.items():
        step_start = start_ms + (reading.event_time_ms - start_ms) // step_ms * step_ms
        by_step_survivors.setdefault(step_start, {})[window] = reading
    return [(start, aggregator.result(MeterUsage(window_survivors=MappingProxyType(by_step_survivors.get(start, {})))))
            for start in starts]

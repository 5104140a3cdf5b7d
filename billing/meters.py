"""Meter aggregation: pure initialize / add / merge / result objects over frozen usage states.

A usage state folds any number of readings, in any order and any batch split, to the same result:
`add` is commutative and `merge` is associative and commutative. That is what lets per-minute
usage buckets be merged into a period total, and a replay equal the live run.

"Last" needs an order that does not depend on arrival batches, so each reading carries a total
order key (OURS):
- the `last` formula takes the reading latest in event time (ties: later received, then identifier);
- an hour/day event_time_window keeps, per window, the reading received last (ties: later event
  time, then identifier), as Stripe says "only the last event received per window counts".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

from billing.facts import EventTimeWindow, MeterAggregation
from billing.money import add_exact
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR

_ZERO = Decimal(0)
_new_tuple = tuple.__new__
_NO_SURVIVORS: Mapping[int, "MeterReading"] = MappingProxyType({})

# MeterReading and MeterUsage are NamedTuples, not frozen dataclasses: one or two of each are built
# per meter event on the hot path, and a frozen dataclass costs about 3x more to construct
# (object.__setattr__ per field). Immutable all the same.


class MeterReading(NamedTuple):
    """One accepted meter event, reduced to what aggregation needs."""

    event_time_ms: int
    received_at_ms: int
    identifier: str
    value: Decimal

    def event_time_order(self) -> tuple[int, int, str]:
        return (self.event_time_ms, self.received_at_ms, self.identifier)

    def received_order(self) -> tuple[int, int, str]:
        return (self.received_at_ms, self.event_time_ms, self.identifier)


def _later_by_event_time(first: MeterReading | None, second: MeterReading | None) -> MeterReading | None:
    if first is None or second is None:
        return first or second
    # event_time_order() compared field by field, without building the tuples (hot path)
    if second.event_time_ms != first.event_time_ms:
        return second if second.event_time_ms > first.event_time_ms else first
    return second if second.event_time_order() > first.event_time_order() else first


def _later_by_received(first: MeterReading, second: MeterReading) -> MeterReading:
    return second if second.received_order() > first.received_order() else first


class MeterUsage(NamedTuple):
    """Folded readings of one meter over some span (a minute bucket, a period).

    Raw meters keep a running sum, a count and the latest reading. Windowed meters keep the surviving
    reading of each hour/day window (keyed by window start) and aggregate those at `result` time.
    """

    value_sum: Decimal = _ZERO
    event_count: int = 0
    latest: MeterReading | None = None
    window_survivors: Mapping[int, MeterReading] = _NO_SURVIVORS


_EMPTY_USAGE = MeterUsage()


def add_plain(usage: MeterUsage | None, reading: MeterReading) -> MeterUsage:
    """MeterAggregator.add for a meter without event-time window (None: the empty usage), in one
    call: the workers' fast path runs it twice per meter event (bucket and period)."""
    if usage is None:
        usage = _EMPTY_USAGE
    latest = usage.latest
    if latest is None or reading.event_time_ms > latest.event_time_ms or (
            reading.event_time_ms == latest.event_time_ms
            and (reading.received_at_ms, reading.identifier) > (latest.received_at_ms, latest.identifier)):
        latest = reading
    # tuple.__new__: a NamedTuple's own __new__ is a Python function (every field given, in order)
    return _new_tuple(MeterUsage, (add_exact(usage.value_sum, reading.value), usage.event_count + 1, latest,
                                   _NO_SURVIVORS))


@dataclass(frozen=True, slots=True)
class MeterAggregator:
    """The aggregation rules of one meter: formula plus optional event-time window."""

    aggregation: MeterAggregation
    event_time_window: EventTimeWindow | None = None

    def initialize(self) -> MeterUsage:
        """The empty usage state."""
        return _EMPTY_USAGE

    @property
    def window_size_ms(self) -> int:
        """Length of the meter's hour or day window."""
        return MILLISECONDS_PER_HOUR if self.event_time_window == EventTimeWindow.HOUR else MILLISECONDS_PER_DAY

    def window_start_ms(self, event_time_ms: int) -> int:
        """Start of the UTC hour or day window holding `event_time_ms`."""
        return event_time_ms - event_time_ms % self.window_size_ms

    def without_window(self, usage: MeterUsage, window_start_ms: int) -> MeterUsage:
        """A windowed meter's usage without the reading of one window (to fold that window again)."""
        survivors = dict(usage.window_survivors)
        survivors.pop(window_start_ms, None)
        return MeterUsage(window_survivors=MappingProxyType(survivors))

    def add(self, usage: MeterUsage, reading: MeterReading) -> MeterUsage:
        """Usage with one more reading folded in."""
        if self.event_time_window is None:
            return MeterUsage(add_exact(usage.value_sum, reading.value), usage.event_count + 1,
                              _later_by_event_time(usage.latest, reading))
        window_start_ms = self.window_start_ms(reading.event_time_ms)
        survivors = dict(usage.window_survivors)
        current = survivors.get(window_start_ms)
        survivors[window_start_ms] = reading if current is None else _later_by_received(current, reading)
        return MeterUsage(window_survivors=MappingProxyType(survivors))

    def add_all(self, usage: MeterUsage, readings: Iterable[MeterReading]) -> MeterUsage:
        """Usage with every reading folded in."""
        for reading in readings:
            usage = self.add(usage, reading)
        return usage

    def merge(self, first: MeterUsage, second: MeterUsage) -> MeterUsage:
        """One usage state for the union of two disjoint sets of readings (e.g. minute buckets -> period)."""
        if self.event_time_window is None:
            return MeterUsage(
                value_sum=add_exact(first.value_sum, second.value_sum),
                event_count=first.event_count + second.event_count,
                latest=_later_by_event_time(first.latest, second.latest),
            )
        survivors = dict(first.window_survivors)
        for window_start_ms, reading in second.window_survivors.items():
            current = survivors.get(window_start_ms)
            survivors[window_start_ms] = reading if current is None else _later_by_received(current, reading)
        return MeterUsage(window_survivors=MappingProxyType(survivors))

    def merge_all(self, usages: Iterable[MeterUsage]) -> MeterUsage:
        """One usage state for all of `usages`."""
        total = self.initialize()
        for usage in usages:
            total = self.merge(total, usage)
        return total

    def counted_readings(self, usage: MeterUsage) -> tuple[MeterReading, ...] | None:
        """The readings that count for a windowed meter (one per window); None for a raw meter."""
        if self.event_time_window is None:
            return None
        return tuple(usage.window_survivors[start] for start in sorted(usage.window_survivors))

    def event_count(self, usage: MeterUsage) -> int:
        """How many readings count toward the result."""
        counted = self.counted_readings(usage)
        return usage.event_count if counted is None else len(counted)

    def result(self, usage: MeterUsage) -> Decimal:
        """The aggregated value (may be negative: negative values are corrections)."""
        counted = self.counted_readings(usage)
        if counted is None:
            if self.aggregation == MeterAggregation.SUM:
                return usage.value_sum
            if self.aggregation == MeterAggregation.COUNT:
                return Decimal(usage.event_count)
            return usage.latest.value if usage.latest is not None else _ZERO
        if self.aggregation == MeterAggregation.SUM:
            total = _ZERO
            for reading in counted:
                total = add_exact(total, reading.value)
            return total
        if self.aggregation == MeterAggregation.COUNT:
            return Decimal(len(counted))
        latest = None
        for reading in counted:
            latest = _later_by_event_time(latest, reading)
        return latest.value if latest is not None else _ZERO


def billable_quantity(aggregated_value: Decimal) -> Decimal:
    """The quantity an invoice bills for a period total: a negative total bills 0."""
    return max(aggregated_value, _ZERO)

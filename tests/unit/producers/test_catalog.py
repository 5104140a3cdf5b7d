"""The meter catalog as clients fold it from the catalog topic."""

from __future__ import annotations

from billing.facts import (
    MeterAggregation,
    MeterDeactivated,
    MeterDefined,
    MeterDisplayNameChanged,
    MeterReactivated,
    TimeTicked,
)
from producers.catalog import fold_catalog


def meter(meter_id: str, event_name: str) -> MeterDefined:
    return MeterDefined(meter_id=meter_id, display_name=meter_id, event_name=event_name,
                        aggregation=MeterAggregation.SUM, created_at_ms=1)


def test_meters_are_found_by_event_name_with_their_latest_display_name():
    catalog = fold_catalog([meter("m1", "tokens"), MeterDisplayNameChanged(meter_id="m1", display_name="Tokens",
                                                                            changed_at_ms=2), TimeTicked(now_ms=3)])
    assert catalog.meters_by_event_name["tokens"].display_name == "Tokens"
    assert catalog.meters_by_event_name["tokens"].aggregation == MeterAggregation.SUM


def test_deactivation_marks_a_meter_inactive_until_it_is_reactivated():
    deactivated = fold_catalog([meter("m1", "a"), meter("m2", "b"), MeterDeactivated(meter_id="m1", deactivated_at_ms=2)])
    reactivated = fold_catalog([meter("m1", "a"), MeterDeactivated(meter_id="m1", deactivated_at_ms=2),
                                MeterReactivated(meter_id="m1", reactivated_at_ms=3)])
    assert deactivated.inactive_meter_ids == {"m1"}
    assert reactivated.inactive_meter_ids == frozenset()

"""The catalog as clients fold it from the catalog topic (billing.catalog's rules)."""

from __future__ import annotations

from billing.facts import MeterAggregation, MeterDeactivated, MeterDefined, MeterDisplayNameChanged, TimeTicked
from producers.catalog_reader import fold_catalog


def meter(meter_id: str, event_name: str) -> MeterDefined:
    return MeterDefined(meter_id=meter_id, display_name=meter_id, event_name=event_name,
                        aggregation=MeterAggregation.SUM, created_at_ms=1)


def test_folding_the_catalog_topic_finds_meters_by_event_name_and_ignores_other_facts():
    catalog = fold_catalog([meter("m1", "tokens"), TimeTicked(now_ms=3),
                            MeterDisplayNameChanged(meter_id="m1", display_name="Tokens", changed_at_ms=2),
                            meter("m2", "images"), MeterDeactivated(meter_id="m2", deactivated_at_ms=4)])
    assert catalog.meters_by_event_name["tokens"].display_name == "Tokens"
    assert set(catalog.meters) == {"m1", "m2"}
    assert catalog.inactive_meter_ids == {"m2"}

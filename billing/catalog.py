"""The global catalog (meters and prices) as a frozen state folded from catalog facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from billing.facts import (
    MeterDeactivated,
    MeterDefined,
    MeterDisplayNameChanged,
    MeterReactivated,
    PriceCreated,
    ProductCreated,
)
from billing.meters import MeterAggregator


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Catalog:
    """Meters by id and by event name, their deactivations and reactivations, prices by id."""

    meters: Mapping[str, MeterDefined] = field(default_factory=_empty)
    meters_by_event_name: Mapping[str, MeterDefined] = field(default_factory=_empty)
    inactive_meter_ids: frozenset[str] = frozenset()  # as of the latest change read
    # meter id -> (at_ms, active) of each deactivation/reactivation, in catalog order
    meter_status_changes: Mapping[str, tuple[tuple[int, bool], ...]] = field(default_factory=_empty)
    prices: Mapping[str, PriceCreated] = field(default_factory=_empty)

    def meter_inactive_at(self, meter_id: str, received_at_ms: int) -> bool:
        """Whether an event received at `received_at_ms` finds the meter inactive. STRIPE.md: a
        deactivated meter rejects NEW events, so its status is judged at the event's receipt, not at
        when the engine happens to read it: the latest change at or before that instant decides (at
        the same instant, the later in the catalog). Every reader of the log judges alike, however
        far behind it reads."""
        latest_ms, active = -1, True
        for at_ms, now_active in self.meter_status_changes.get(meter_id, ()):
            if latest_ms <= at_ms <= received_at_ms:
                latest_ms, active = at_ms, now_active
        return not active

    def aggregator(self, meter_id: str) -> MeterAggregator:
        """The aggregation rules of a meter."""
        meter = self.meters[meter_id]
        return MeterAggregator(meter.aggregation, meter.event_time_window)


CatalogFact = (
    MeterDefined | MeterDisplayNameChanged | MeterDeactivated | MeterReactivated | ProductCreated | PriceCreated
)


def evolve_catalog(catalog: Catalog, fact: CatalogFact) -> Catalog:
    """The catalog after one catalog fact (unknown ids are ignored: facts are already accepted).

    The first fact wins: a meter or price whose id is known is a retried command (ids are derived
    from the Idempotency-Key), and a meter whose event_name another meter has lost the race for it
    (event names are unique; the projection keeps the same first meter, and the API answers the
    loser with a 400)."""
    match fact:
        case MeterDefined() if fact.meter_id in catalog.meters or fact.event_name in catalog.meters_by_event_name:
            return catalog
        case PriceCreated() if fact.price_id in catalog.prices:
            return catalog
        case MeterDefined():
            return replace(
                catalog,
                meters=MappingProxyType({**catalog.meters, fact.meter_id: fact}),
                meters_by_event_name=MappingProxyType({**catalog.meters_by_event_name, fact.event_name: fact}),
            )
        case MeterDisplayNameChanged() if fact.meter_id in catalog.meters:
            renamed = replace(catalog.meters[fact.meter_id], display_name=fact.display_name)
            return replace(
                catalog,
                meters=MappingProxyType({**catalog.meters, fact.meter_id: renamed}),
                meters_by_event_name=MappingProxyType({**catalog.meters_by_event_name, renamed.event_name: renamed}),
            )
        case MeterDeactivated():
            return replace(catalog, inactive_meter_ids=catalog.inactive_meter_ids | {fact.meter_id},
                           meter_status_changes=_with_change(catalog, fact.meter_id, fact.deactivated_at_ms, False))
        case MeterReactivated():
            return replace(catalog, inactive_meter_ids=catalog.inactive_meter_ids - {fact.meter_id},
                           meter_status_changes=_with_change(catalog, fact.meter_id, fact.reactivated_at_ms, True))
        case PriceCreated():
            return replace(catalog, prices=MappingProxyType({**catalog.prices, fact.price_id: fact}))
        case _:
            return catalog


def _with_change(catalog: Catalog, meter_id: str, at_ms: int, active: bool) -> Mapping:
    changes = (*catalog.meter_status_changes.get(meter_id, ()), (at_ms, active))
    return MappingProxyType({**catalog.meter_status_changes, meter_id: changes})

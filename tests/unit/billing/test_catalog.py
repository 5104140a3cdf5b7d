from billing.catalog import Catalog, evolve_catalog
from billing.facts import (
    EventTimeWindow,
    MeterAggregation,
    MeterDeactivated,
    MeterDisplayNameChanged,
    MeterReactivated,
    ProductCreated,
)
from billing.meters import MeterAggregator

from .conftest import make_meter, make_price


def fold(facts) -> Catalog:
    catalog = Catalog()
    for fact in facts:
        catalog = evolve_catalog(catalog, fact)
    return catalog


def test_meters_are_found_by_id_and_by_event_name_with_their_aggregator():
    catalog = fold([make_meter(aggregation=MeterAggregation.LAST, event_time_window=EventTimeWindow.DAY)])
    assert catalog.meters_by_event_name["hypernian_input_tokens"] is catalog.meters["mtr_input"]
    assert catalog.aggregator("mtr_input") == MeterAggregator(MeterAggregation.LAST, EventTimeWindow.DAY)


def test_only_the_display_name_of_a_meter_changes():
    catalog = fold([make_meter(), MeterDisplayNameChanged(meter_id="mtr_input", display_name="Tokens in", changed_at_ms=1)])
    assert catalog.meters["mtr_input"].display_name == "Tokens in"
    assert catalog.meters_by_event_name["hypernian_input_tokens"].display_name == "Tokens in"
    assert catalog.meters["mtr_input"].event_name == "hypernian_input_tokens"


def test_deactivating_a_meter_marks_it_inactive_until_reactivated():
    deactivated = fold([make_meter(), MeterDeactivated(meter_id="mtr_input", deactivated_at_ms=1)])
    assert "mtr_input" in deactivated.inactive_meter_ids
    reactivated = evolve_catalog(deactivated, MeterReactivated(meter_id="mtr_input", reactivated_at_ms=2))
    assert "mtr_input" not in reactivated.inactive_meter_ids


def test_prices_are_kept_by_id_and_products_change_nothing_billing_needs():
    catalog = fold([make_price(), ProductCreated(product_id="prod_input", name="Input", created_at_ms=0)])
    assert catalog.prices["price_input"] == make_price()
    assert catalog.meters == {}

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


def test_a_meters_status_is_judged_at_each_events_receipt():
    # Worked by hand from STRIPE.md (a deactivated meter rejects NEW events): deactivated at 100,
    # reactivated at 200, deactivated and reactivated again both at 300 (the later in the log wins).
    catalog = fold([make_meter(), MeterDeactivated(meter_id="mtr_input", deactivated_at_ms=100),
                    MeterReactivated(meter_id="mtr_input", reactivated_at_ms=200),
                    MeterDeactivated(meter_id="mtr_input", deactivated_at_ms=300),
                    MeterReactivated(meter_id="mtr_input", reactivated_at_ms=300)])
    received_at = [0, 99, 100, 150, 199, 200, 299, 300, 10_000]
    assert [catalog.meter_inactive_at("mtr_input", at) for at in received_at] == [
        False, False, True, True, True, False, False, False, False]
    assert not catalog.meter_inactive_at("mtr_never_changed", 150)
    # read late, in another order (a reactivation logged before an older deactivation): still by time
    late = fold([make_meter(), MeterReactivated(meter_id="mtr_input", reactivated_at_ms=200),
                 MeterDeactivated(meter_id="mtr_input", deactivated_at_ms=100)])
    assert [late.meter_inactive_at("mtr_input", at) for at in (50, 150, 250)] == [False, True, False]


def test_prices_are_kept_by_id_and_products_change_nothing_billing_needs():
    catalog = fold([make_price(), ProductCreated(product_id="prod_input", name="Input", created_at_ms=0)])
    assert catalog.prices["price_input"] == make_price()
    assert catalog.meters == {}


def test_the_first_meter_of_an_event_name_wins_and_a_re_published_meter_or_price_changes_nothing():
    # Two API processes may both pass the uniqueness check; the catalog log orders them. The projection
    # keeps the first meter (unique event_name, on conflict do nothing): so must the workers' catalog.
    from dataclasses import replace

    from billing.catalog import Catalog, evolve_catalog
    from billing.facts import MeterAggregation, MeterDefined, PriceCreated

    def meter(meter_id: str, display_name: str) -> MeterDefined:
        return MeterDefined(meter_id=meter_id, display_name=display_name, event_name="tokens",
                            aggregation=MeterAggregation.SUM, customer_payload_key="stripe_customer_id",
                            value_payload_key="value", event_time_window=None, created_at_ms=1)

    catalog = Catalog()
    for fact in (meter("mtr_first", "First"), meter("mtr_second", "Second"), meter("mtr_first", "Retried")):
        catalog = evolve_catalog(catalog, fact)
    assert catalog.meters_by_event_name["tokens"].meter_id == "mtr_first"
    assert set(catalog.meters) == {"mtr_first"}
    assert catalog.meters["mtr_first"].display_name == "First"
    from streams import walkthrough as w

    (price,) = [fact for fact in w.catalog_facts() if isinstance(fact, PriceCreated)][:1]
    catalog = evolve_catalog(catalog, price)
    catalog = evolve_catalog(catalog, replace(price, unit_amount_decimal=price.unit_amount_decimal * 2))
    assert catalog.prices[price.price_id].unit_amount_decimal == price.unit_amount_decimal

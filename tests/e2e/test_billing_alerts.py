"""Billing alerts through the official Stripe SDK, judged by the real worker, delivered as signed
webhooks. Expected values are worked out by hand: a price of 100 cents per unit, 1000 cents of
credits, 6 units -> usage 6 and a live balance of 1000 - 600 = 400; 1000 more credits -> 1400."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.test_webhooks import (  # noqa: F401 - fixtures
    dispatcher,
    endpoints,
    receiver,
    stripe_sdk,
    wait_for,
)


def _setup(stripe: Any) -> tuple[Any, Any]:
    suffix = uuid.uuid4().hex[:8]
    meter = stripe.billing.Meter.create(
        display_name="Alerted calls", event_name=f"alerted_calls_{suffix}", default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"})
    product = stripe.Product.create(name="Alerted API")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="100",
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    customer = stripe.Customer.create(name="Alert Watcher")  # on the wall clock
    stripe.billing.CreditGrant.create(
        customer=customer.id, category="paid", amount={"type": "monetary", "monetary": {"value": 1000, "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}})
    stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    return meter, customer


def _filters(customer_id: str) -> list[dict[str, str]]:
    return [{"type": "customer", "customer": customer_id}]


def test_usage_and_credit_balance_alerts_trigger_once_and_re_arm(stripe_sdk, worker, dispatcher, receiver, endpoints):
    stripe = stripe_sdk
    endpoint = stripe.WebhookEndpoint.create(url=receiver.url,
                                             enabled_events=["billing.alert.triggered", "billing.alert.recovered"])
    endpoints.append(endpoint)
    meter, customer = _setup(stripe)
    usage = stripe.billing.Alert.create(
        alert_type="usage_threshold", title="5 calls",
        usage_threshold={"gte": 5, "meter": meter.id, "recurrence": "one_time", "filters": _filters(customer.id)})
    balance = stripe.billing.Alert.create(
        alert_type="credit_balance_threshold", title="Credits low",
        credit_balance_threshold={"filters": _filters(customer.id),
                                  "lte": {"balance_type": "monetary", "monetary": {"currency": "usd", "value": 500}}})
    idle = stripe.billing.Alert.create(
        alert_type="usage_threshold", title="1 call, deactivated",
        usage_threshold={"gte": 1, "meter": meter.id, "recurrence": "one_time", "filters": _filters(customer.id)})
    assert (usage.object, usage.status, usage.usage_threshold.gte, usage.usage_threshold.meter) == (
        "billing.alert", "active", 5, meter.id)
    assert usage.usage_threshold.filters[0].customer == customer.id and usage.credit_balance_threshold is None
    assert stripe.billing.Alert.deactivate(idle.id).status == "inactive"

    stripe.billing.MeterEvent.create(event_name=meter.event_name,
                                     payload={"stripe_customer_id": customer.id, "value": "6"})

    def crossings() -> dict[tuple[str, str], list[Any]]:
        found: dict[tuple[str, str], list[Any]] = {}
        for event in receiver.events(endpoint.secret).values():
            found.setdefault((event.type, event.data.object.alert.id), []).append(event)
        return found

    wait_for(lambda: {("billing.alert.triggered", usage.id), ("billing.alert.triggered", balance.id)} <= set(crossings()),
             60, "both alerts to trigger")
    seen = crossings()
    (usage_event,) = seen[("billing.alert.triggered", usage.id)]
    (balance_event,) = seen[("billing.alert.triggered", balance.id)]
    assert (usage_event.data.object.object, usage_event.data.object.value, usage_event.data.object.customer) == (
        "billing.alert_triggered", 6, customer.id)
    assert balance_event.data.object.value == 400  # 1000 - 6 x 100

    # More usage: the one_time usage alert stays quiet; the balance alert is still below (no second event).
    stripe.billing.MeterEvent.create(event_name=meter.event_name,
                                     payload={"stripe_customer_id": customer.id, "value": "1"})
    # More credits lift the balance to 2000 - 700 = 1300: the balance alert re-arms (drawdown's own event).
    stripe.billing.CreditGrant.create(
        customer=customer.id, category="paid", amount={"type": "monetary", "monetary": {"value": 1000, "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}})
    (recovered,) = wait_for(lambda: crossings().get(("billing.alert.recovered", balance.id)), 60, "the recovery")
    assert (recovered.data.object.object, recovered.data.object.value) == ("billing.alert_recovered", 1300)
    seen = crossings()
    assert len(seen[("billing.alert.triggered", usage.id)]) == 1
    assert len(seen[("billing.alert.triggered", balance.id)]) == 1
    assert ("billing.alert.triggered", idle.id) not in seen  # inactive: never judged

    # The same events through the API.
    listed = [event.id for event in stripe.Event.list(type="billing.alert.triggered", limit=100).auto_paging_iter()]
    assert usage_event.id in listed and balance_event.id in listed

    # Archive: final, and gone from the list (Stripe's rule); retrieve still answers.
    assert stripe.billing.Alert.archive(idle.id).status == "archived"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe.billing.Alert.activate(idle.id)
    assert refused.value.code == "alert_archived"
    assert stripe.billing.Alert.retrieve(idle.id).status == "archived"
    listed_alerts = {alert.id for alert in stripe.billing.Alert.list(limit=100).auto_paging_iter()}
    assert {usage.id, balance.id} <= listed_alerts and idle.id not in listed_alerts
    by_meter = {alert.id for alert in stripe.billing.Alert.list(meter=meter.id, limit=100).auto_paging_iter()}
    assert by_meter == {usage.id}


def test_a_usage_alert_without_a_customer_triggers_for_each_customer_that_reaches_it(stripe_sdk, worker):
    # By hand: gte 100; one customer sends 150 (triggers at 150), another 40 then 70 (triggers at 110
    # whether the two are judged together or apart), a third 30 (never).
    stripe = stripe_sdk
    meter, first = _setup(stripe)
    second, third = stripe.Customer.create(name="Second"), stripe.Customer.create(name="Third")
    alert = stripe.billing.Alert.create(alert_type="usage_threshold", title="100 calls, any customer",
                                        usage_threshold={"gte": 100, "meter": meter.id, "recurrence": "one_time"})
    assert (alert.status, alert.usage_threshold.filters, alert.usage_threshold.gte) == ("active", None, 100)
    for customer, value in ((first, "150"), (second, "40"), (third, "30"), (second, "70")):
        stripe.billing.MeterEvent.create(event_name=meter.event_name,
                                         payload={"stripe_customer_id": customer.id, "value": value})

    def triggered() -> dict[str, int]:
        return {event.data.object.customer: event.data.object.value
                for event in stripe.Event.list(type="billing.alert.triggered", limit=100).auto_paging_iter()
                if event.data.object.alert.id == alert.id}

    wait_for(lambda: len(triggered()) == 2, 60, "both customers' crossings")
    assert triggered() == {first.id: 150, second.id: 110}
    assert stripe.billing.Alert.deactivate(alert.id).status == "inactive"
    assert stripe.billing.Alert.archive(alert.id).status == "archived"


def test_alert_parameters_are_checked_with_stripe_style_errors(stripe_sdk):
    stripe = stripe_sdk
    meter, customer = _setup(stripe)
    cases = [
        ({"alert_type": "credit_balance_threshold", "title": "no filter",
          "credit_balance_threshold": {"lte": {"balance_type": "monetary",
                                               "monetary": {"currency": "usd", "value": 5}}}},
         "credit_balance_threshold[filters]"),
        ({"alert_type": "usage_threshold", "title": "zero",
          "usage_threshold": {"gte": 0, "meter": meter.id, "recurrence": "one_time", "filters": _filters(customer.id)}},
         "usage_threshold[gte]"),
        ({"alert_type": "usage_threshold", "title": "no meter",
          "usage_threshold": {"gte": 5, "meter": "mtr_nope", "recurrence": "one_time",
                              "filters": _filters(customer.id)}},
         "usage_threshold[meter]"),
        ({"alert_type": "credit_balance_threshold", "title": "no customer",
          "credit_balance_threshold": {"filters": _filters("cus_nope"),
                                       "lte": {"balance_type": "monetary",
                                               "monetary": {"currency": "usd", "value": 5}}}},
         "credit_balance_threshold[filters][0][customer]"),
        ({"alert_type": "credit_balance_threshold", "title": "bad currency",
          "credit_balance_threshold": {"filters": _filters(customer.id),
                                       "lte": {"balance_type": "monetary",
                                               "monetary": {"currency": "u$d", "value": 5}}}},
         "credit_balance_threshold[lte][monetary][currency]"),
        ({"alert_type": "spend_threshold", "title": "unknown type"}, "alert_type"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            stripe.billing.Alert.create(**params)
        assert refused.value.http_status == 400 and refused.value.param == param, (params, refused.value)

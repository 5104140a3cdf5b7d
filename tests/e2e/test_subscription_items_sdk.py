"""Changing a subscription's items through the official Stripe SDK (issue 15: "add or remove a
metered price from the next period"), against the real worker.

Hand-worked: input tokens cost 1 cent, output tokens 2 cents. The subscription starts with input
tokens only; output tokens are added during period 1, from period 2 on. Period 1 (100 input, 200
output) bills 100; period 2 (10 input, 20 output) bills 10 + 40 = 50. Input tokens are removed
during period 2, from period 3 on: period 2 still bills them.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from api import walkthrough
from tests.e2e.builders import wait_for

START_S = walkthrough.START_S


def _metered_price(stripe: Any, name: str, cents: str) -> tuple[Any, Any]:
    meter = stripe.billing.Meter.create(display_name=name, event_name=f"{name}_{uuid.uuid4().hex[:10]}",
                                        default_aggregation={"formula": "sum"})
    product = stripe.Product.create(name=name)
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal=cents,
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    return meter, price


def _send(stripe: Any, meter: Any, customer_id: str, value: int, timestamp_s: int) -> None:
    stripe.billing.MeterEvent.create(event_name=meter.event_name, timestamp=timestamp_s,
                                     payload={"stripe_customer_id": customer_id, "value": str(value)})


def _prices(items: Any) -> list[str]:
    return sorted(item.price.id for item in items.data)


def test_items_added_and_removed_bill_from_the_next_period(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    meter_in, price_in = _metered_price(stripe, "input", "1")
    meter_out, price_out = _metered_price(stripe, "output", "2")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="items")
    customer = stripe.Customer.create(name="Items", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price_in.id}])
    period_1_end = subscription.current_period_end

    changed = stripe.Subscription.modify(subscription.id, items=[{"price": price_out.id}], proration_behavior="none")
    assert _prices(changed["items"]) == [price_in.id]  # period 1 keeps its items
    assert changed["next_period_items"]["effective_at"] == period_1_end
    assert sorted(item["price"]["id"] for item in changed["next_period_items"]["data"]) == \
        sorted([price_in.id, price_out.id])

    _send(stripe, meter_in, customer.id, 100, START_S + 60)
    _send(stripe, meter_out, customer.id, 200, START_S + 60)
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_1_end + 60)  # period 2, in period 1's grace
    _send(stripe, meter_in, customer.id, 10, period_1_end + 60)
    _send(stripe, meter_out, customer.id, 20, period_1_end + 60)
    now_in_period_2 = wait_for(lambda: (s := stripe.Subscription.retrieve(subscription.id)).current_period_start
                             == period_1_end and s, 60, "period 2")
    assert _prices(now_in_period_2["items"]) == sorted([price_in.id, price_out.id])
    item_in = next(item for item in now_in_period_2["items"].data if item.price.id == price_in.id)
    removed = stripe.Subscription.modify(subscription.id, items=[{"id": item_in.id, "deleted": True}])
    period_2_end = removed.current_period_end
    assert removed["next_period_items"]["effective_at"] == period_2_end
    assert [item["price"]["id"] for item in removed["next_period_items"]["data"]] == [price_out.id]

    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_2_end + walkthrough.GRACE_S + 60)
    invoices = wait_for(lambda: (found := stripe.Invoice.list(customer=customer.id).data) and len(found) == 2 and found,
                      120, "two invoices")
    by_start = {invoice.period_start: invoice for invoice in invoices}
    first, second = by_start[START_S], by_start[period_1_end]
    assert (first.subtotal, second.subtotal) == (100, 50)
    assert [(line.pricing.price_details.price, line.quantity) for line in first.lines.data] == [(price_in.id, 100)]
    assert sorted((line.pricing.price_details.price, line.quantity) for line in second.lines.data) == \
        sorted([(price_in.id, 10), (price_out.id, 20)])
    period_3 = stripe.Subscription.retrieve(subscription.id)
    assert _prices(period_3["items"]) == [price_out.id]
    assert period_3["next_period_items"] is None


def test_an_item_change_is_refused_clearly(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price_in = _metered_price(stripe, "input", "1")
    customer = stripe.Customer.create(name="Refused")
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price_in.id}])
    item = subscription["items"].data[0]
    cases = [
        ({"items": [{"id": "si_missing", "deleted": True}]}, "items[0][id]"),
        ({"items": [{"id": item.id, "deleted": True}]}, "items"),  # no item left
        ({"items": [{"price": price_in.id}]}, "items"),  # the same price twice
        ({"items": [{"price": price_in.id, "quantity": 2}], "proration_behavior": "create_prorations"},
         "proration_behavior"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            stripe.Subscription.modify(subscription.id, **params)
        assert refused.value.param == param, params


def test_item_metadata_is_set_on_create_and_changes_at_once_while_a_price_change_waits(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price_in = _metered_price(stripe, "input", "1")
    _, price_out = _metered_price(stripe, "output", "2")
    _, price_in_2 = _metered_price(stripe, "input2", "3")
    customer = stripe.Customer.create(name="Item metadata")
    subscription = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price_in.id, "metadata": {"team": "ml", "cost_center": "7"}},
                                     {"price": price_out.id}])
    item_in, item_out = (next(item for item in subscription["items"].data if item.price.id == price.id)
                         for price in (price_in, price_out))
    assert (item_in.metadata.to_dict(), item_out.metadata.to_dict()) == ({"team": "ml", "cost_center": "7"}, {})

    # Metadata alone: at once (Stripe's merge: a key given "" is deleted), and nothing waits for a period.
    changed = stripe.Subscription.modify(subscription.id, items=[{"id": item_in.id, "metadata": {
        "team": "search", "cost_center": ""}}])
    assert _item_metadata(changed) == {item_in.id: {"team": "search"}, item_out.id: {}}
    assert changed["next_period_items"] is None
    assert _item_metadata(stripe.Subscription.retrieve(subscription.id)) == _item_metadata(changed)
    listed = next(s for s in stripe.Subscription.list(customer=customer.id).data if s.id == subscription.id)
    assert _item_metadata(listed) == _item_metadata(changed)

    # A price change with metadata: the price waits for the next period, the metadata does not.
    repriced = stripe.Subscription.modify(subscription.id, items=[{"id": item_in.id, "price": price_in_2.id,
                                                                   "metadata": {"tier": "2"}}])
    assert _prices(repriced["items"]) == sorted([price_in.id, price_out.id])  # this period keeps its prices
    assert _item_metadata(repriced)[item_in.id] == {"team": "search", "tier": "2"}
    waiting = {item["id"]: item for item in repriced["next_period_items"]["data"]}
    assert waiting[item_in.id]["price"]["id"] == price_in_2.id
    assert waiting[item_in.id]["metadata"].to_dict() == {"team": "search", "tier": "2"}

    # Metadata of an item whose price change waits: this period's item and the waiting one alike, at once.
    again = stripe.Subscription.modify(subscription.id, items=[{"id": item_in.id, "metadata": {"tier": "3"}}])
    assert _item_metadata(again)[item_in.id] == {"team": "search", "tier": "3"}
    assert {item["id"]: item["metadata"].to_dict() for item in again["next_period_items"]["data"]}[item_in.id] == \
        {"team": "search", "tier": "3"}
    assert again["next_period_items"]["effective_at"] == repriced["next_period_items"]["effective_at"]
    assert _prices(again["items"]) == sorted([price_in.id, price_out.id])


def test_item_metadata_beyond_the_bounds_is_refused_naming_the_parameter(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price_in = _metered_price(stripe, "input", "1")
    customer = stripe.Customer.create(name="Item metadata refused")
    too_many = {f"k{index}": "v" for index in range(51)}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe.Subscription.create(customer=customer.id, items=[{"price": price_in.id, "metadata": too_many}])
    assert (refused.value.http_status, refused.value.param) == (400, "items[0][metadata]")

    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price_in.id}])
    item = subscription["items"].data[0]
    cases = [
        ({"items": [{"id": item.id, "metadata": {"note": "x" * 501}}]}, "items[0][metadata][note]"),
        ({"items": [{"id": item.id, "metadata": {"k" * 41: "v"}}]}, f"items[0][metadata][{'k' * 41}]"),
        ({"items": [{"id": item.id, "metadata": too_many}]}, "items[0][metadata]"),
        ({"items": [{"id": "si_missing", "metadata": {"a": "b"}}]}, "items[0][id]"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            stripe.Subscription.modify(subscription.id, **params)
        assert (refused.value.http_status, refused.value.param) == (400, param), params
    assert stripe.Subscription.retrieve(subscription.id)["items"].data[0].metadata.to_dict() == {}


def _item_metadata(subscription: Any) -> dict[str, dict[str, str]]:
    return {item["id"]: item["metadata"].to_dict() for item in subscription["items"]["data"]}


def test_an_invoice_line_shows_the_subscriptions_current_metadata_never_the_items(api_base, secret_key, worker):
    # Stripe: "for line items with type=subscription, metadata reflects the current metadata from
    # the subscription associated with the line item"; an item's metadata is copied nowhere.
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    meter_in, price_in = _metered_price(stripe, "input", "1")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="line metadata")
    customer = stripe.Customer.create(name="Line metadata", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id, metadata={"order": "42"},
                                              items=[{"price": price_in.id, "metadata": {"team": "ml"}}])
    _send(stripe, meter_in, customer.id, 7, START_S + 60)

    preview = wait_for(lambda: (found := stripe.Invoice.create_preview(subscription=subscription.id)).lines.data
                       and found, 60, "a previewed line")
    assert [line.metadata.to_dict() for line in preview.lines.data] == [{"order": "42"}]

    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=subscription.current_period_end + walkthrough.GRACE_S
                                          + 60)
    (invoice,) = wait_for(lambda: stripe.Invoice.list(customer=customer.id).data, 120, "the invoice")
    assert [(line.quantity, line.metadata.to_dict()) for line in invoice.lines.data] == [(7, {"order": "42"})]
    stripe.Subscription.modify(subscription.id, metadata={"order": "43"})
    assert [line.metadata.to_dict() for line in stripe.Invoice.retrieve(invoice.id).lines.data] == [{"order": "43"}]

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


def test_the_subscription_items_endpoints_through_the_sdk(api_base, secret_key, worker):
    # /v1/subscription_items: metadata at once; a price, a new item and a deletion from the next period.
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price_in = _metered_price(stripe, "input", "1")
    _, price_out = _metered_price(stripe, "output", "2")
    _, price_in_2 = _metered_price(stripe, "input2", "3")
    _, price_cache = _metered_price(stripe, "cache", "4")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="subscription items")
    customer = stripe.Customer.create(name="Subscription items", test_clock=clock.id)
    subscription = stripe.Subscription.create(
        customer=customer.id, items=[{"price": price_in.id, "metadata": {"team": "ml"}}, {"price": price_out.id}])
    period_1_end = subscription.current_period_end
    item_in, item_out = (next(item for item in subscription["items"].data if item.price.id == price.id)
                         for price in (price_in, price_out))

    listed = stripe.SubscriptionItem.list(subscription=subscription.id)
    assert [item.id for item in listed.data] == [item.id for item in subscription["items"].data]
    assert listed.has_more is False
    first_page = stripe.SubscriptionItem.list(subscription=subscription.id, limit=1)
    assert (len(first_page.data), first_page.has_more) == (1, True)
    second_page = stripe.SubscriptionItem.list(subscription=subscription.id, limit=1,
                                               starting_after=first_page.data[0].id)
    assert [item.id for item in first_page.data + second_page.data] == [item.id for item in listed.data]
    assert second_page.has_more is False

    retrieved = stripe.SubscriptionItem.retrieve(item_in.id)
    assert (retrieved.object, retrieved.id, retrieved.price.id, retrieved.quantity, retrieved.subscription,
            retrieved.metadata.to_dict()) == ("subscription_item", item_in.id, price_in.id, 1, subscription.id,
                                              {"team": "ml"})
    assert retrieved.created == subscription.created
    assert stripe.SubscriptionItem.retrieve(item_in.id, expand=["subscription"]).subscription.id == subscription.id

    # Metadata: at once, merged as Stripe merges it.
    tagged = stripe.SubscriptionItem.modify(item_in.id, metadata={"tier": "1"})
    assert tagged.metadata.to_dict() == {"team": "ml", "tier": "1"}
    assert _item_metadata(stripe.Subscription.retrieve(subscription.id))[item_in.id] == {"team": "ml", "tier": "1"}
    assert stripe.Subscription.retrieve(subscription.id)["next_period_items"] is None

    # A price: from the next period, as items[] on a subscription update.
    repriced = stripe.SubscriptionItem.modify(item_in.id, price=price_in_2.id, proration_behavior="none")
    assert repriced.price.id == price_in.id  # this period keeps its price
    added = stripe.SubscriptionItem.create(subscription=subscription.id, price=price_cache.id, quantity=1,
                                           metadata={"team": "cache"})
    assert (added.object, added.price.id, added.subscription, added.metadata.to_dict()) == \
        ("subscription_item", price_cache.id, subscription.id, {"team": "cache"})
    assert stripe.SubscriptionItem.retrieve(added.id).price.id == price_cache.id
    deleted = stripe.SubscriptionItem.delete(item_out.id)
    assert (deleted.id, deleted.deleted) == (item_out.id, True)
    assert stripe.SubscriptionItem.retrieve(item_out.id).price.id == price_out.id  # it bills this period

    waiting = stripe.Subscription.retrieve(subscription.id)
    assert _prices(waiting["items"]) == sorted([price_in.id, price_out.id])
    assert waiting["next_period_items"]["effective_at"] == period_1_end
    assert sorted((item["id"], item["price"]["id"]) for item in waiting["next_period_items"]["data"]) == \
        sorted([(item_in.id, price_in_2.id), (added.id, price_cache.id)])
    assert [item.id for item in stripe.SubscriptionItem.list(subscription=subscription.id).data] == \
        [item.id for item in listed.data]  # the list shows the items billing this period

    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_1_end + 60)
    wait_for(lambda: stripe.Subscription.retrieve(subscription.id).current_period_start == period_1_end, 60,
             "period 2")
    period_2 = stripe.SubscriptionItem.list(subscription=subscription.id).data
    assert sorted((item.id, item.price.id) for item in period_2) == \
        sorted([(item_in.id, price_in_2.id), (added.id, price_cache.id)])
    assert {item.id: item.metadata.to_dict() for item in period_2} == \
        {item_in.id: {"team": "ml", "tier": "1"}, added.id: {"team": "cache"}}
    with pytest.raises(stripe.InvalidRequestError) as gone:
        stripe.SubscriptionItem.retrieve(item_out.id)
    assert (gone.value.http_status, gone.value.code) == (404, "resource_missing")


def test_the_subscription_items_endpoints_refuse_clearly(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price_in = _metered_price(stripe, "input", "1")
    _, price_out = _metered_price(stripe, "output", "2")
    product = stripe.Product.create(name="yearly")
    yearly = stripe.Price.create(product=product.id, currency="usd", unit_amount=100, recurring={"interval": "year"})
    customer = stripe.Customer.create(name="Subscription items refused")
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price_in.id}])
    item = subscription["items"].data[0]

    with pytest.raises(stripe.InvalidRequestError) as missing_item:
        stripe.SubscriptionItem.retrieve("si_missing")
    assert (missing_item.value.http_status, missing_item.value.code, missing_item.value.param) == \
        (404, "resource_missing", "id")
    calls = [
        (lambda: stripe.SubscriptionItem.list(), "subscription"),
        (lambda: stripe.SubscriptionItem.list(subscription="sub_missing"), "subscription"),
        (lambda: stripe.SubscriptionItem.list(subscription=subscription.id, starting_after="si_missing"),
         "starting_after"),
        (lambda: stripe.SubscriptionItem.modify(item.id, price=price_out.id, proration_behavior="create_prorations"),
         "proration_behavior"),
        (lambda: stripe.SubscriptionItem.modify(item.id, price=yearly.id), "price"),  # another interval
        (lambda: stripe.SubscriptionItem.modify(item.id, quantity=0), "quantity"),
        (lambda: stripe.SubscriptionItem.create(subscription=subscription.id, price=price_in.id), "price"),  # twice
        (lambda: stripe.SubscriptionItem.create(subscription=subscription.id, price="price_missing"), "price"),
        (lambda: stripe.SubscriptionItem.create(subscription="sub_missing", price=price_out.id), "subscription"),
        (lambda: stripe.SubscriptionItem.create(subscription=subscription.id), "price"),
        (lambda: stripe.SubscriptionItem.delete(item.id), "id"),  # the subscription's last item
        (lambda: stripe.SubscriptionItem.delete(item.id, proration_behavior="always_invoice"), "proration_behavior"),
    ]
    for call, param in calls:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            call()
        assert (refused.value.http_status, refused.value.param) == (400, param), param
    with pytest.raises(stripe.InvalidRequestError) as missing_modify:
        stripe.SubscriptionItem.modify("si_missing", metadata={"a": "b"})
    assert (missing_modify.value.http_status, missing_modify.value.param) == (404, "id")

    stripe.Subscription.cancel(subscription.id)
    for call in (lambda: stripe.SubscriptionItem.modify(item.id, price=price_out.id),
                 lambda: stripe.SubscriptionItem.create(subscription=subscription.id, price=price_out.id),
                 lambda: stripe.SubscriptionItem.delete(item.id)):
        with pytest.raises(stripe.InvalidRequestError) as canceled:
            call()
        assert (canceled.value.http_status, canceled.value.code) == (400, "subscription_canceled")
    assert stripe.SubscriptionItem.retrieve(item.id).price.id == price_in.id


def test_a_finalized_invoice_keeps_the_subscription_metadata_it_was_finalized_with(api_base, secret_key, worker):
    # Stripe: parent.subscription_details.metadata "becomes an immutable snapshot of the subscription
    # metadata at the time of invoice finalization"; a preview shows the subscription's current one.
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    meter_in, price_in = _metered_price(stripe, "input", "1")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="invoice metadata")
    customer = stripe.Customer.create(name="Invoice metadata", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id, metadata={"order": "42"},
                                              items=[{"price": price_in.id}])
    _send(stripe, meter_in, customer.id, 7, START_S + 60)
    preview = stripe.Invoice.create_preview(subscription=subscription.id)
    assert preview.parent.subscription_details.metadata.to_dict() == {"order": "42"}

    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=subscription.current_period_end + walkthrough.GRACE_S
                                          + 60)
    (invoice,) = wait_for(lambda: stripe.Invoice.list(customer=customer.id).data, 120, "the invoice")
    assert (invoice.parent.subscription_details.subscription, invoice.parent.subscription_details.metadata.to_dict()) \
        == (subscription.id, {"order": "42"})

    stripe.Subscription.modify(subscription.id, metadata={"order": "43", "note": "renewed"})
    again = stripe.Invoice.retrieve(invoice.id)
    assert again.parent.subscription_details.metadata.to_dict() == {"order": "42"}
    assert [line.metadata.to_dict() for line in again.lines.data] == [{"order": "43", "note": "renewed"}]  # current
    assert stripe.Invoice.list(customer=customer.id).data[0].parent.subscription_details.metadata.to_dict() == \
        {"order": "42"}
    assert stripe.Invoice.create_preview(subscription=subscription.id).parent.subscription_details.metadata \
        .to_dict() == {"order": "43", "note": "renewed"}

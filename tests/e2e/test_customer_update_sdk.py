"""Customer updates through the official Stripe SDK, as Stripe documents them: a parameter not
given keeps its value, "" clears it, metadata merges key by key; customer.updated carries the
changed fields as data.previous_attributes."""

from __future__ import annotations

import json
import time

import pytest


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


@pytest.fixture()
def stripe(api_base, secret_key):
    import stripe as sdk

    from api import walkthrough

    walkthrough.configure(sdk, api_base, secret_key)
    return sdk


def test_a_customer_update_merges_metadata_and_says_what_changed(stripe):
    customer = stripe.Customer.create(name="Jenny Rosen", email="jenny@example.com",
                                      metadata={"plan": "pro", "team": "ml"})
    updated = stripe.Customer.modify(customer.id, name="Jenny R.", metadata={"plan": "scale", "region": "eu"})
    assert (updated.name, updated.email) == ("Jenny R.", "jenny@example.com")  # email not given: kept
    assert updated.metadata.to_dict() == {"plan": "scale", "team": "ml", "region": "eu"}
    cleared = stripe.Customer.modify(customer.id, email="", metadata={"team": ""})
    assert cleared.email is None and cleared.metadata.to_dict() == {"plan": "scale", "region": "eu"}
    assert stripe.Customer.retrieve(customer.id).name == "Jenny R."
    assert stripe.Customer.modify(customer.id, metadata="").metadata.to_dict() == {}

    deadline = time.monotonic() + 30
    while True:
        events = [event for event in stripe.Event.list(type="customer.updated", limit=100).auto_paging_iter()
                  if event.data.object.id == customer.id]
        if len(events) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(events) == 3
    previous = sorted((event.data.previous_attributes.to_dict() for event in events), key=canonical)
    assert previous == sorted([
        {"name": "Jenny Rosen", "metadata": {"plan": "pro", "team": "ml"}},
        {"email": "jenny@example.com", "metadata": {"plan": "scale", "team": "ml", "region": "eu"}},
        {"metadata": {"plan": "scale", "region": "eu"}},
    ], key=canonical)


def test_an_update_that_changes_nothing_is_no_event_and_bad_input_is_a_400(stripe):
    customer = stripe.Customer.create(name="Unchanged")
    assert stripe.Customer.modify(customer.id, name="Unchanged").name == "Unchanged"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe.Customer.modify("cus_does_not_exist", name="x")
    assert missing.value.http_status == 404
    with pytest.raises(stripe.InvalidRequestError) as too_long:
        stripe.Customer.modify(customer.id, name="x" * 257)
    assert (too_long.value.http_status, too_long.value.param) == (400, "name")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        stripe.Customer.modify(customer.id, test_clock="clock_x")
    assert unknown.value.http_status == 400
    time.sleep(1)
    assert not [event for event in stripe.Event.list(type="customer.updated", limit=100).auto_paging_iter()
                if event.data.object.id == customer.id]


def test_deleting_a_customer_cancels_its_subscriptions_and_refuses_its_usage(stripe, worker):
    meter = stripe.billing.Meter.create(
        display_name="Deleted usage", event_name=f"deleted_usage_{int(time.time() * 1000)}",
        default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"})
    product = stripe.Product.create(name="Deleted usage")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="1",
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    customer = stripe.Customer.create(name="Leaving soon")
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])

    deleted = stripe.Customer.delete(customer.id)
    assert (deleted.id, deleted.deleted) == (customer.id, True)
    assert stripe.Customer.retrieve(customer.id).deleted is True  # Stripe's answer for a deleted customer
    assert stripe.Subscription.retrieve(subscription.id).status == "canceled"
    assert customer.id not in [c.id for c in stripe.Customer.list(limit=100).auto_paging_iter()]
    with pytest.raises(stripe.InvalidRequestError) as gone:
        stripe.billing.MeterEvent.create(event_name=meter.event_name,
                                         payload={"stripe_customer_id": customer.id, "value": "5"})
    assert gone.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError) as again:
        stripe.Customer.delete(customer.id)
    assert again.value.http_status == 404
    with pytest.raises(stripe.InvalidRequestError):
        stripe.billing.CreditGrant.create(customer=customer.id, category="paid",
                                          amount={"type": "monetary", "monetary": {"value": 100, "currency": "usd"}},
                                          applicability_config={"scope": {"price_type": "metered"}})

    events = {event.type: event for event in _all_events(stripe, customer.id, subscription.id)}
    assert events["customer.deleted"].data.object.name == "Leaving soon"
    assert events["customer.subscription.deleted"].data.object.status == "canceled"


def _all_events(stripe, customer_id: str, subscription_id: str) -> list:
    deadline = time.monotonic() + 30
    while True:
        found = [event for event in stripe.Event.list(types=["customer.deleted", "customer.subscription.deleted"],
                                                      limit=100).auto_paging_iter()
                 if event.data.object.id in (customer_id, subscription_id)]
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_an_event_names_the_api_request_that_caused_it(stripe):
    key = f"create-{time.time_ns()}"
    customer = stripe.Customer.create(name="Requested", idempotency_key=key)
    request_id = customer.last_response.request_id
    assert request_id.startswith("req_")
    deadline = time.monotonic() + 30
    while not (created := [event for event in stripe.Event.list(type="customer.created", limit=100).auto_paging_iter()
                           if event.data.object.id == customer.id]):
        assert time.monotonic() < deadline, "no customer.created"
        time.sleep(0.2)
    assert (created[0].request.id, created[0].request.idempotency_key) == (request_id, key)

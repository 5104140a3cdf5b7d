"""Products and prices updated through the official Stripe SDK, with Stripe's rules: fields not given
keep their values, metadata merges, an inactive price takes no new subscription, a lookup key names
one price (moved with transfer_lookup_key); product.updated and price.updated say what changed."""

from __future__ import annotations

import time
import uuid

import pytest


@pytest.fixture()
def stripe(api_base, secret_key):
    import stripe as sdk

    from api import walkthrough

    walkthrough.configure(sdk, api_base, secret_key)
    return sdk


def _price(stripe, product_id: str) -> object:
    return stripe.Price.create(product=product_id, currency="usd", unit_amount=500, recurring={"interval": "month"})


def _events(stripe, event_type: str, object_id: str, count: int) -> list:
    deadline = time.monotonic() + 30
    while True:
        found = [event for event in stripe.Event.list(type=event_type, limit=100).auto_paging_iter()
                 if event.data.object.id == object_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_product_update_keeps_what_is_not_given_and_says_what_changed(stripe):
    product = stripe.Product.create(name="Tokens", metadata={"tier": "base"})
    assert (product.active, product.description) == (True, None)
    updated = stripe.Product.modify(product.id, description="LLM tokens", metadata={"team": "ml"})
    assert (updated.name, updated.description, updated.active) == ("Tokens", "LLM tokens", True)
    assert updated.metadata.to_dict() == {"tier": "base", "team": "ml"}
    archived = stripe.Product.modify(product.id, active=False)
    assert archived.active is False
    assert product.id not in [p.id for p in stripe.Product.list(active=True, limit=100).auto_paging_iter()]
    assert product.id in [p.id for p in stripe.Product.list(active=False, limit=100).auto_paging_iter()]
    events = _events(stripe, "product.updated", product.id, 2)
    changed = sorted(sorted(set(event.data.previous_attributes.to_dict()) - {"updated"}) for event in events)
    assert changed == [["active"], ["description", "metadata"]]


def test_an_inactive_price_takes_no_new_subscription_and_a_lookup_key_names_one_price(stripe):
    product = stripe.Product.create(name="Seats")
    first, second = _price(stripe, product.id), _price(stripe, product.id)
    key = f"seat-{uuid.uuid4().hex[:8]}"
    named = stripe.Price.modify(first.id, nickname="Seat", lookup_key=key, metadata={"plan": "team"})
    assert (named.nickname, named.lookup_key, named.metadata.to_dict(), named.active) == ("Seat", key, {"plan": "team"},
                                                                                          True)
    assert [price.id for price in stripe.Price.list(lookup_keys=[key]).data] == [first.id]
    with pytest.raises(stripe.InvalidRequestError) as taken:
        stripe.Price.modify(second.id, lookup_key=key)
    assert taken.value.param == "lookup_key"
    moved = stripe.Price.modify(second.id, lookup_key=key, transfer_lookup_key=True)
    assert moved.lookup_key == key and stripe.Price.retrieve(first.id).lookup_key is None
    assert [price.id for price in stripe.Price.list(lookup_keys=[key]).data] == [second.id]

    assert stripe.Price.modify(first.id, active=False).active is False
    customer = stripe.Customer.create(name="Seat buyer")
    with pytest.raises(stripe.InvalidRequestError) as inactive:
        stripe.Subscription.create(customer=customer.id, items=[{"price": first.id}])
    assert (inactive.value.http_status, inactive.value.param) == (400, "items[0][price]")
    assert "inactive" in inactive.value.user_message
    assert stripe.Subscription.create(customer=customer.id, items=[{"price": second.id}]).status == "active"

    updates = _events(stripe, "price.updated", first.id, 3)
    changed = sorted(sorted(event.data.previous_attributes.to_dict()) for event in updates)
    assert changed == [["active"], ["lookup_key"], ["lookup_key", "metadata", "nickname"]]


def test_metadata_nickname_and_lookup_key_set_on_create_and_subscription_metadata_updated(stripe):
    product = stripe.Product.create(name="Annotated")
    key = f"annotated-{uuid.uuid4().hex[:8]}"
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount=900, recurring={"interval": "month"},
                                nickname="Monthly", lookup_key=key, metadata={"tier": "gold"})
    assert (price.nickname, price.lookup_key, price.metadata.to_dict()) == ("Monthly", key, {"tier": "gold"})
    with pytest.raises(stripe.InvalidRequestError) as taken:
        stripe.Price.create(product=product.id, currency="usd", unit_amount=1, recurring={"interval": "month"},
                            lookup_key=key)
    assert taken.value.param == "lookup_key"
    customer = stripe.Customer.create(name="Annotated buyer")
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}],
                                              metadata={"order": "42"})
    assert subscription.metadata.to_dict() == {"order": "42"}
    updated = stripe.Subscription.modify(subscription.id, metadata={"order": "", "team": "ml"})
    assert updated.metadata.to_dict() == {"team": "ml"} and updated.status == "active"
    (event,) = _events(stripe, "customer.subscription.updated", subscription.id, 1)
    assert event.data.previous_attributes.to_dict() == {"metadata": {"order": "42"}}
    assert event.data.object.metadata.to_dict() == {"team": "ml"}

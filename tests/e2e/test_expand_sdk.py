"""Stripe's expand[] through the official SDK: ids replaced by the objects a retrieve answers with,
on single objects, dotted paths and lists (data.*); a field that cannot be expanded is a 400."""

from __future__ import annotations

import pytest


@pytest.fixture()
def stripe(api_base, secret_key):
    import stripe as sdk

    from api import walkthrough

    walkthrough.configure(sdk, api_base, secret_key)
    return sdk


def test_expand_replaces_ids_with_the_objects_a_retrieve_answers(stripe):
    product = stripe.Product.create(name="Expanded")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount=700, recurring={"interval": "month"})
    customer = stripe.Customer.create(name="Expander", metadata={"k": "v"})
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])

    plain = stripe.Subscription.retrieve(subscription.id)
    assert plain.customer == customer.id
    expanded = stripe.Subscription.retrieve(subscription.id, expand=["customer"])
    assert expanded.customer.id == customer.id and expanded.customer.metadata.to_dict() == {"k": "v"}
    assert expanded.customer.to_dict() == stripe.Customer.retrieve(customer.id).to_dict()

    deep = stripe.Price.retrieve(price.id, expand=["product"])
    assert (deep.product.object, deep.product.name) == ("product", "Expanded")

    listed = stripe.Subscription.list(customer=customer.id, expand=["data.customer"])
    assert [item.customer.name for item in listed.data] == ["Expander"]

    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe.Subscription.retrieve(subscription.id, expand=["status"])
    assert refused.value.param == "expand"
    with pytest.raises(stripe.InvalidRequestError):
        stripe.Subscription.retrieve(subscription.id, expand=["nope"])

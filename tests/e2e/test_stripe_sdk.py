"""The official Stripe SDK against the API for the calls beyond the walkthrough (no worker needed)."""

from __future__ import annotations

import pytest

T0_S = 1_767_225_600


@pytest.fixture()
def stripe_sdk(api_base, secret_key):
    import stripe

    from api import walkthrough

    walkthrough.configure(stripe, api_base, secret_key)
    return stripe


def test_the_sdk_manages_meters_grants_clocks_and_subscriptions(stripe_sdk):
    stripe = stripe_sdk
    meter = stripe.billing.Meter.create(display_name="Tokens", event_name=f"sdk_tokens_{T0_S}_{id(stripe)}",
                                        default_aggregation={"formula": "count"})
    assert stripe.billing.Meter.deactivate(meter.id).status == "inactive"
    assert stripe.billing.Meter.reactivate(meter.id).status == "active"
    assert stripe.billing.Meter.modify(meter.id, display_name="Renamed").display_name == "Renamed"
    clock = stripe.test_helpers.TestClock.create(frozen_time=T0_S)
    customer = stripe.Customer.create(name="Sdk", test_clock=clock.id)
    grant = stripe.billing.CreditGrant.create(
        customer=customer.id, category="promotional", amount={"type": "monetary", "monetary": {"value": 500,
                                                                                             "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}}, expires_at=T0_S + 86_400)
    assert stripe.billing.CreditGrant.modify(grant.id, metadata={"k": "v"}).metadata.to_dict() == {"k": "v"}
    assert stripe.billing.CreditGrant.void_grant(grant.id).voided_at is not None
    assert [g.id for g in stripe.billing.CreditGrant.list(customer=customer.id).auto_paging_iter()] == [grant.id]
    product = stripe.Product.create(name="Tokens")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="0.5",
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    assert stripe.Subscription.modify(subscription.id, cancel_at_period_end=True).cancel_at_period_end is True
    assert stripe.Subscription.cancel(subscription.id, invoice_now=True).status == "canceled"
    adjustment = stripe.billing.MeterEventAdjustment.create(event_name=meter.event_name, type="cancel",
                                                            cancel={"identifier": "nope"})
    assert adjustment.status == "pending"
    advanced = stripe.test_helpers.TestClock.advance(clock.id, frozen_time=T0_S + 3600)
    assert advanced.frozen_time == T0_S + 3600
    stripe.test_helpers.TestClock.delete(clock.id)


def test_the_sdk_raises_its_typed_errors_for_our_error_responses(stripe_sdk):
    stripe = stripe_sdk
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe.Customer.retrieve("cus_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as bad:
        stripe.billing.Meter.create(display_name="x", event_name="y", default_aggregation={"formula": "median"})
    assert bad.value.param == "default_aggregation[formula]"
    stripe.api_key = "sk_test_wrong"
    with pytest.raises(stripe.AuthenticationError):
        stripe.Customer.list()

"""Invoice lifecycle through the official Stripe SDK, with the real stream worker: invoice items,
one-off invoices (draft -> open -> paid | uncollectible | void), a period invoice paid, and
Stripe's refusals (a paid invoice cannot be voided)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.builders import unique, wait_for

START_S = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture()
def stripe_sdk(api_base: str, secret_key: str) -> Any:
    import stripe

    from api import walkthrough

    walkthrough.configure(stripe, api_base, secret_key)
    return stripe


def _refused(call: Any) -> Any:
    import stripe

    with pytest.raises(stripe.InvalidRequestError) as refused:
        call()
    assert refused.value.http_status == 400
    return refused.value


def test_a_one_off_invoice_bills_its_items_without_credits_and_follows_stripes_status_rules(stripe_sdk, worker):
    stripe = stripe_sdk
    customer = stripe.Customer.create(name="One-off")
    stripe.billing.CreditGrant.create(  # a metered grant: it must not pay for one-off items
        customer=customer.id, category="paid", amount={"type": "monetary", "monetary": {"value": 500, "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}})
    setup = stripe.InvoiceItem.create(customer=customer.id, amount=1000, currency="usd", description="Setup",
                                      metadata={"order": "42"})
    seats = stripe.InvoiceItem.create(customer=customer.id, unit_amount_decimal="250.5", quantity=3, currency="usd")
    dropped = stripe.InvoiceItem.create(customer=customer.id, amount=7, currency="usd")
    assert (setup.amount, setup.invoice, setup.metadata.to_dict()) == (1000, None, {"order": "42"})
    assert seats.amount == 752  # 3 x 250.5 = 751.5, rounded half up
    assert stripe.InvoiceItem.delete(dropped.id).deleted is True
    pending = stripe.InvoiceItem.list(customer=customer.id, pending=True).data
    assert sorted(item.id for item in pending) == sorted([setup.id, seats.id])

    draft = stripe.Invoice.create(customer=customer.id, pending_invoice_items_behavior="include",
                                  description="Setup and seats", metadata={"deal": "d1"})
    assert (draft.status, draft.amount_due, draft.billing_reason, draft.subscription) == ("draft", 1752, "manual", None)
    assert [line.amount for line in draft.lines.data] == [1000, 752]
    assert stripe.InvoiceItem.retrieve(setup.id).invoice == draft.id
    empty = stripe.Invoice.create(customer=customer.id)  # Stripe's default: pending items excluded
    assert (empty.status, empty.amount_due, empty.lines.data) == ("draft", 0, [])
    _refused(lambda: stripe.Invoice.pay(draft.id, paid_out_of_band=True))  # a draft cannot be paid

    invoice = stripe.Invoice.finalize_invoice(draft.id)
    assert (invoice.status, invoice.subtotal, invoice.amount_due, invoice.amount_remaining) == ("open", 1752, 1752, 1752)
    assert invoice.total_pretax_credit_amounts == [] and invoice.status_transitions.finalized_at is not None
    assert [(line.amount, line.description) for line in invoice.lines.data] == [(1000, "Setup"), (752, None)]
    assert invoice.metadata.to_dict() == {"deal": "d1"} and invoice.description == "Setup and seats"
    _refused(lambda: stripe.Invoice.finalize_invoice(draft.id))
    _refused(lambda: stripe.InvoiceItem.delete(setup.id))  # billed: no longer editable

    paid = stripe.Invoice.pay(invoice.id, paid_out_of_band=True)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 1752, 0)
    assert paid.status_transitions.paid_at is not None
    refusal = _refused(lambda: stripe.Invoice.void_invoice(invoice.id))
    assert refusal.code == "invoice_unexpected_status"
    _refused(lambda: stripe.Invoice.mark_uncollectible(invoice.id))
    assert stripe.Invoice.retrieve(invoice.id).status == "paid"
    # Metadata stays editable on a paid invoice and a billed item (Stripe merges it: "" removes a key).
    updated = stripe.Invoice.modify(invoice.id, metadata={"deal": "", "po": "PO-7"})
    assert (updated.metadata.to_dict(), updated.status, updated.amount_paid) == ({"po": "PO-7"}, "paid", 1752)
    event = wait_for(lambda: next(iter(e for e in stripe.Event.list(type="invoice.updated", limit=100).auto_paging_iter()
                                       if e.data.object.id == invoice.id), None), 90, "invoice.updated")
    assert (event.data.object.metadata.to_dict(), event.data.previous_attributes.to_dict()) == (
        {"po": "PO-7"}, {"metadata": {"deal": "d1"}})  # the whole previous map, as for customers
    item = stripe.InvoiceItem.modify(setup.id, metadata={"order": "43"})
    assert (item.metadata.to_dict(), item.amount, item.invoice) == ({"order": "43"}, 1000, invoice.id)

    # An empty invoice has nothing due: paid on finalization, so it cannot be voided either.
    zero = stripe.Invoice.finalize_invoice(empty.id)
    assert (zero.status, zero.amount_due, zero.amount_paid) == ("paid", 0, 0)
    _refused(lambda: stripe.Invoice.void_invoice(empty.id))


def test_an_uncollectible_invoice_can_be_paid_and_another_voided(stripe_sdk, worker):
    stripe = stripe_sdk
    customer = stripe.Customer.create(name="Uncollectible")
    invoices = []
    for cents in (300, 400):
        stripe.InvoiceItem.create(customer=customer.id, amount=cents, currency="usd")
        draft = stripe.Invoice.create(customer=customer.id, pending_invoice_items_behavior="include")
        invoices.append(stripe.Invoice.finalize_invoice(draft.id))
    first, second = invoices
    assert (first.amount_due, second.amount_due) == (300, 400)  # each took only the item pending then
    for invoice in invoices:
        marked = stripe.Invoice.mark_uncollectible(invoice.id)
        assert (marked.status, marked.amount_remaining) == ("uncollectible", invoice.amount_due)
        assert marked.status_transitions.marked_uncollectible_at is not None
    _refused(lambda: stripe.Invoice.mark_uncollectible(first.id))
    paid = stripe.Invoice.pay(first.id, paid_out_of_band=True)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 300, 0)
    voided = stripe.Invoice.void_invoice(second.id)
    assert (voided.status, voided.amount_remaining) == ("void", 0)
    assert _refused(lambda: stripe.Invoice.void_invoice(second.id)).code == "invoice_already_voided"
    _refused(lambda: stripe.Invoice.pay(second.id, paid_out_of_band=True))
    without_band = _refused(lambda: stripe.Invoice.pay(first.id))
    assert without_band.param == "paid_out_of_band"

    # Each step is an event, in the projection's transaction, so listed as soon as the call answers.
    def events(event_type: str) -> list[tuple[str, str]]:
        return sorted((event.data.object.id, event.data.object.status) for event in
                      stripe.Event.list(type=event_type, limit=100).auto_paging_iter()
                      if event.data.object.id in (first.id, second.id))

    assert events("invoice.created") == sorted([(first.id, "draft"), (second.id, "draft")])
    assert events("invoice.marked_uncollectible") == sorted([(first.id, "uncollectible"), (second.id, "uncollectible")])
    assert events("invoice.paid") == [(first.id, "paid")]
    assert events("invoice.voided") == [(second.id, "void")]


def test_invoice_items_take_a_licensed_price_and_refuse_hostile_input(stripe_sdk):
    stripe = stripe_sdk
    customer = stripe.Customer.create(name="Hostile")
    product = stripe.Product.create(name="Seats")
    seat = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="1250.5",
                               recurring={"interval": "month", "usage_type": "licensed"})
    seats = stripe.InvoiceItem.create(customer=customer.id, price=seat.id, quantity=3)
    assert (seats.amount, seats.price, seats.quantity, seats.currency) == (3752, seat.id, 3, "usd")  # 3751.5 -> 3752
    stripe.InvoiceItem.delete(seats.id)
    meter = stripe.billing.Meter.create(display_name="T", event_name=unique("tokens"),
                                        default_aggregation={"formula": "sum"})
    metered = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="3",
                                  recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    _refused(lambda: stripe.InvoiceItem.create(customer=customer.id, price=metered.id))
    for bad in ({"amount": -1, "currency": "usd"}, {"amount": 10**8, "currency": "usd"},
                {"amount": 5, "currency": "US D"}, {"amount": 5},
                {"unit_amount_decimal": "1e5000", "currency": "usd"},
                {"unit_amount_decimal": "0.0000000000001", "currency": "usd"},
                {"unit_amount_decimal": "99999999", "quantity": 10**9, "currency": "usd"},
                {"unit_amount_decimal": "1", "quantity": 10**10, "currency": "usd"},
                {"amount": 5, "unit_amount_decimal": "1", "currency": "usd"}, {"currency": "usd"},
                {"amount": 5, "currency": "usd", "invoice": "in_nope"}):
        _refused(lambda: stripe.InvoiceItem.create(customer=customer.id, **bad))
    _refused(lambda: stripe.InvoiceItem.create(customer="cus_nope", amount=5, currency="usd"))
    _refused(lambda: stripe.Invoice.create(customer=customer.id, pending_invoice_items_behavior="sometimes"))
    assert stripe.InvoiceItem.list(customer=customer.id).data == []


def test_a_period_invoice_is_paid_out_of_band_and_then_keeps_its_credits(stripe_sdk, worker):
    stripe = stripe_sdk
    suffix = unique("life")
    meter = stripe.billing.Meter.create(display_name="Tokens", event_name=f"tokens_{suffix}",
                                        default_aggregation={"formula": "sum"})
    product = stripe.Product.create(name="Tokens")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="3",
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S)
    customer = stripe.Customer.create(name="Period", test_clock=clock.id)
    grant = stripe.billing.CreditGrant.create(
        customer=customer.id, category="paid", amount={"type": "monetary", "monetary": {"value": 1000, "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}})
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    stripe.billing.MeterEvent.create(event_name=meter.event_name, identifier=f"{suffix}-1",
                                     payload={"stripe_customer_id": customer.id, "value": "3000"})
    wait_for(lambda: stripe.Invoice.create_preview(subscription=subscription.id).subtotal == 9000, 90, "usage counted")
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=subscription.current_period_end + 3600 + 60)
    invoice = wait_for(lambda: next(iter(stripe.Invoice.list(subscription=subscription.id).data), None), 90,
                       "the period invoice")
    assert (invoice.status, invoice.subtotal, invoice.amount_due) == ("open", 9000, 8000)  # 3000 x 3 - 1000
    tagged = stripe.Invoice.modify(invoice.id, metadata={"erp": "INV-1"})  # an invoice the workers made, too
    assert (tagged.metadata.to_dict(), tagged.amount_due) == ({"erp": "INV-1"}, 8000)
    paid = stripe.Invoice.pay(invoice.id, paid_out_of_band=True)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 8000, 0)
    assert _refused(lambda: stripe.Invoice.void_invoice(invoice.id)).code == "invoice_unexpected_status"
    transactions = stripe.billing.CreditBalanceTransaction.list(customer=customer.id, credit_grant=grant.id).data
    assert sorted((t.type, (t.credit or t.debit).type) for t in transactions) == [
        ("credit", "credits_granted"), ("debit", "credits_applied")]  # not reinstated


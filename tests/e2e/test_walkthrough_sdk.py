"""The seed walkthrough end to end through the official Stripe SDK: API -> Kafka -> stream worker
(`python -m drawdown worker`, a subprocess: the `worker` fixture of tests/e2e/conftest.py) -> projector -> API."""

from __future__ import annotations

import time
import urllib.request


def test_the_hypernian_walkthrough_bills_3000_input_tokens_as_9000_minus_1000_credit(api_base, secret_key, worker):
    import stripe

    from api import walkthrough

    walkthrough.configure(stripe, api_base, secret_key)
    lines: list[str] = []
    result = walkthrough.run(stripe, say=lines.append, invoice_timeout_s=90)

    funding = result["funding"]  # the guide's funding step: a $10 one-off invoice paid out of band
    assert (funding.status, funding.billing_reason, funding.amount_due, funding.amount_paid,
            funding.amount_remaining) == ("paid", "manual", 1000, 1000, 0)
    assert funding.status_transitions.paid_at is not None and funding.total_pretax_credit_amounts == []
    assert [(line.amount, line.description) for line in funding.lines.data] == [(1000, "Hypernian prepaid credits")]
    assert result["clock_statuses"] == ("advancing", "ready")
    assert result["invoice_visible_when_ready"], "a ready clock's invoices are readable at once"
    preview = result["preview"]
    assert (preview.subtotal, preview.amount_due) == (9000, 8000)
    invoice = result["invoice"]
    assert invoice.status == "open" and invoice.id.startswith("in_")
    assert [(line.quantity, line.amount) for line in invoice.lines.data] == [(3000, 9000), (0, 0)]
    assert (invoice.subtotal, invoice.amount_due) == (9000, 8000)
    assert [credit.amount for credit in invoice.total_pretax_credit_amounts] == [1000]
    balance = result["summary"].balances[0]
    assert (balance.available_balance.monetary.value, balance.ledger_balance.monetary.value) == (0, 0)
    kinds = sorted((t.type, (t.credit or t.debit).type, (t.credit or t.debit).amount.monetary.value)
                   for t in result["transactions"])
    assert kinds == [("credit", "credits_granted", 1000), ("debit", "credits_applied", 1000)]
    assert sum(s.aggregated_value for s in result["summaries"]) == 3000


def test_a_cancel_of_an_identifier_no_partition_holds_is_a_visible_meter_event_not_found(api_base, secret_key,
                                                                                         worker):
    """Issue 12 finding 5: such a cancel answered "pending" and then vanished. A cancel carries no
    customer, so it goes to every partition; only all of their misses together mean "not found"."""
    import json
    import uuid

    import stripe

    from api import walkthrough

    walkthrough.configure(stripe, api_base, secret_key)
    event_name = f"tokens_{uuid.uuid4().hex[:8]}"
    stripe.billing.Meter.create(display_name="Tokens", event_name=event_name, default_aggregation={"formula": "sum"})
    customer = stripe.Customer.create(name="Cancel")
    stripe.billing.MeterEvent.create(event_name=event_name, identifier=f"{event_name}-held",
                                     payload={"stripe_customer_id": customer.id, "value": "5"})
    for identifier in (f"{event_name}-held", f"{event_name}-nowhere"):
        adjustment = stripe.billing.MeterEventAdjustment.create(event_name=event_name, type="cancel",
                                                                cancel={"identifier": identifier})
        assert adjustment.status == "pending"  # Stripe's answer: the outcome is known later

    def not_found_letters() -> list[dict]:
        request = urllib.request.Request(f"{api_base}/v1/dead_letters?reason_code=meter_event_not_found&limit=100",
                                         headers={"Authorization": f"Bearer {secret_key}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return [letter for letter in json.load(response)["data"] if event_name in letter["message"]]

    deadline = time.monotonic() + 60
    while not (letters := not_found_letters()):
        assert time.monotonic() < deadline, "the cancel of an unknown identifier never showed as a dead letter"
        time.sleep(0.5)
    # Both cancels reached every partition in this order: the held one was found, so it has no letter.
    assert [letter["message"] for letter in letters] == [
        f"no event '{event_name}-nowhere' of '{event_name}': no partition holds it"]

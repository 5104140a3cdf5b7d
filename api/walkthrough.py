"""The seed walkthrough (STRIPE.md, "credit-based pricing model") through the official Stripe SDK.

Shared by `make demo` (against the running engine) and the end-to-end test. Hypernian sells input
tokens at 3 cents and output tokens at 5 cents; Jenny Rosen gets a 10 USD grant, uses 3000 input
tokens, and at period end (a test clock moves there) her invoice applies the credits: 9000 - 1000
= 8000 cents due. The guide's optional funding step comes first: Jenny pays a 10 USD one-off invoice
(out of band here), and on its `invoice.paid` the integrator creates the grant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

START_S = 1_767_225_600  # 2026-01-01T00:00:00Z: the test clock's start
GRACE_S = 3600


def configure(stripe: Any, api_base: str, api_key: str) -> None:
    stripe.api_base = api_base
    stripe.api_key = api_key
    stripe.max_network_retries = 2  # the SDK then sends an Idempotency-Key with every POST


def run(stripe: Any, say: Callable[[str], None] = print, invoice_timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the walkthrough; returns the objects the checks need."""
    suffix = uuid.uuid4().hex[:8]
    input_meter = stripe.billing.Meter.create(
        display_name="Hypernian input tokens", event_name=f"hypernian_input_tokens_{suffix}",
        default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"})
    output_meter = stripe.billing.Meter.create(
        display_name="Hypernian output tokens", event_name=f"hypernian_output_tokens_{suffix}",
        default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"})
    say(f"1. meters {input_meter.id} ({input_meter.event_name}), {output_meter.id}")
    prices = []
    for name, meter, cents in (("Input tokens", input_meter, "3"), ("Output tokens", output_meter, "5")):
        product = stripe.Product.create(name=f"Hypernian {name}")
        prices.append(stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal=cents,
                                          recurring={"interval": "month", "usage_type": "metered",
                                                     "meter": meter.id}))
    say(f"2. prices {prices[0].id} (3 cents/token), {prices[1].id} (5 cents/token)")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name=f"walkthrough {suffix}")
    customer = stripe.Customer.create(name="Jenny Rosen", email="jenny.rosen@example.com", test_clock=clock.id)
    say(f"3. customer {customer.id} on test clock {clock.id} (frozen at 2026-01-01T00:00:00Z)")
    funding = fund(stripe, customer.id)
    say(f"   funding invoice {funding.id}: {funding.amount_paid} cents {funding.status} (no credits apply to it)")
    grant = stripe.billing.CreditGrant.create(
        customer=customer.id, name="Welcome credits", category="paid",
        amount={"type": "monetary", "monetary": {"value": 1000, "currency": "usd"}},
        applicability_config={"scope": {"price_type": "metered"}})
    say(f"4. credit grant {grant.id}: {grant.amount.monetary.value} cents, metered prices")
    alert = stripe.billing.Alert.create(
        alert_type="credit_balance_threshold", title="Credits running low",
        credit_balance_threshold={"filters": [{"type": "customer", "customer": customer.id}],
                                  "lte": {"balance_type": "monetary", "monetary": {"currency": "usd", "value": 500}}})
    say(f"   billing alert {alert.id}: billing.alert.triggered when the live balance falls to 500 cents or below")
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id} for price in prices])
    say(f"5. subscription {subscription.id}, period {subscription.current_period_start}.."
        f"{subscription.current_period_end}")
    event = stripe.billing.MeterEvent.create(event_name=input_meter.event_name,
                                             payload={"stripe_customer_id": customer.id, "value": "3000"},
                                             identifier=f"walkthrough-{suffix}-1")
    say(f"6. meter event {event.identifier}: 3000 input tokens at {event.timestamp}")
    preview = _until(lambda: _preview_with_usage(stripe, subscription.id), 60, "usage in the invoice preview")
    say(f"7. preview: subtotal {preview.subtotal}, provisional credits "
        f"{sum(c.amount for c in preview.total_pretax_credit_amounts)}, amount due {preview.amount_due}")
    period_end_s = subscription.current_period_end
    advancing = stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_end_s + GRACE_S + 60)
    say(f"   test clock advancing past period end + grace period (status {advancing.status})")
    ready = _until(lambda: _ready(stripe, clock.id), invoice_timeout_s, "the test clock to be ready")
    say(f"   test clock {ready.status} at {ready.frozen_time}")
    visible_when_ready = bool(stripe.Invoice.list(subscription=subscription.id, limit=1).data)
    invoice = _until(lambda: _first(stripe.Invoice.list(subscription=subscription.id, limit=1).data),
                     invoice_timeout_s, "the finalized invoice")
    say(f"8. invoice {invoice.id} ({invoice.status}), period {invoice.period_start}..{invoice.period_end}")
    for line in invoice.lines.data:
        credits = sum(credit.amount for credit in line.pretax_credit_amounts)
        say(f"     line {line.price}: {line.quantity_decimal} x {line.pricing.unit_amount_decimal} cents = "
            f"{line.amount}, credits {credits}")
    say(f"     subtotal {invoice.subtotal}, credit grant applied "
        f"{-sum(c.amount for c in invoice.total_pretax_credit_amounts)}, amount due {invoice.amount_due}")
    summary = _until(lambda: _settled_summary(stripe, customer.id, grant.id), 60, "the applied credits in the summary")
    for balance in summary.balances:
        say(f"9. balance: available {balance.available_balance.monetary.value}, "
            f"ledger {balance.ledger_balance.monetary.value} {balance.ledger_balance.monetary.currency}")
    transactions = stripe.billing.CreditBalanceTransaction.list(customer=customer.id, credit_grant=grant.id).data
    for transaction in transactions:
        detail = transaction.credit if transaction.type == "credit" else transaction.debit
        say(f"10. {transaction.id}: {transaction.type} {detail.type} {detail.amount.monetary.value}")
    summaries = stripe.billing.Meter.list_event_summaries(
        input_meter.id, customer=customer.id, start_time=START_S, end_time=START_S + 86_400,
        value_grouping_window="hour", limit=100).data
    say(f"11. usage summaries (hourly, first day): "
        f"{[(s.start_time, s.aggregated_value) for s in summaries if s.aggregated_value]}")
    return {"preview": preview, "invoice": invoice, "clock_statuses": (advancing.status, ready.status),
            "invoice_visible_when_ready": visible_when_ready, "summary": summary, "transactions": transactions,
            "summaries": summaries, "grant": grant, "customer": customer, "funding": funding, "alert": alert}


def fund(stripe: Any, customer_id: str, amount_cents: int = 1000) -> Any:
    """The guide's funding step: a one-off invoice for the credits, finalized and paid (out of band:
    drawdown takes no payments). Its `invoice.paid` is the integrator's cue to create the grant."""
    stripe.InvoiceItem.create(customer=customer_id, amount=amount_cents, currency="usd",
                              description="Hypernian prepaid credits")
    draft = stripe.Invoice.create(customer=customer_id, pending_invoice_items_behavior="include",
                                  auto_advance=False, description="Prepaid credits")
    stripe.Invoice.finalize_invoice(draft.id)
    return stripe.Invoice.pay(draft.id, paid_out_of_band=True)


def _ready(stripe: Any, clock_id: str) -> Any:
    clock = stripe.test_helpers.TestClock.retrieve(clock_id)
    return clock if clock.status == "ready" else None


def _preview_with_usage(stripe: Any, subscription_id: str) -> Any:
    preview = stripe.Invoice.create_preview(subscription=subscription_id)
    return preview if preview.subtotal > 0 else None


def _settled_summary(stripe: Any, customer_id: str, grant_id: str) -> Any:
    summary = stripe.billing.CreditBalanceSummary.retrieve(
        customer=customer_id, filter={"type": "credit_grant", "credit_grant": grant_id})
    settled = summary.balances and summary.balances[0].ledger_balance.monetary.value == 0
    return summary if settled else None


def _first(items: list[Any]) -> Any:
    return items[0] if items else None


def _until(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f}s")
        time.sleep(0.5)

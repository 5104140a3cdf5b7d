"""Usage of every meter kind, read three ways through the official Stripe SDK against the real
worker: the invoice preview and the event summaries must show what the finalized invoice bills.

Issue 14: on an hour-windowed sum meter the preview and the summaries added every event (67) while
the invoice counted one reading per window (37), as STRIPE.md says ("only the last event received
per window counts")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from api import walkthrough

START_S = walkthrough.START_S  # 2026-01-01T00:00:00Z, the test clock's start; the period ends Feb 1
HOUR_S = 3600


def _until(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := probe()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)
    return result


def _meter_with_price(stripe: Any, formula: str, window: str | None) -> tuple[Any, Any]:
    """A meter (1 cent per unit) of `formula` and event_time_window `window`."""
    extra = {} if window is None else {"event_time_window": window}
    meter = stripe.billing.Meter.create(display_name=f"{formula} {window}", event_name=f"usage_{uuid.uuid4().hex[:10]}",
                                        default_aggregation={"formula": formula}, **extra)
    product = stripe.Product.create(name=f"{formula} {window}")
    price = stripe.Price.create(product=product.id, currency="usd", unit_amount_decimal="1",
                                recurring={"interval": "month", "usage_type": "metered", "meter": meter.id})
    return meter, price


def _hourly_summaries(stripe: Any, meter_id: str, customer_id: str, hours: int) -> list[tuple[int, int]]:
    """(start_time, aggregated_value) per hour from START_S, oldest first."""
    data = stripe.billing.Meter.list_event_summaries(meter_id, customer=customer_id, start_time=START_S,
                                                     end_time=START_S + hours * HOUR_S,
                                                     value_grouping_window="hour", limit=100).data
    return sorted((s.start_time, s.aggregated_value) for s in data)


def test_an_hour_windowed_sum_meter_previews_and_summarises_what_the_invoice_bills(api_base, secret_key, worker):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    meter, price = _meter_with_price(stripe, "sum", "hour")
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="windowed")
    customer = stripe.Customer.create(name="Windowed", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=START_S + 2 * HOUR_S)  # events in hours 1 and 2
    _until(lambda: stripe.test_helpers.TestClock.retrieve(clock.id).status == "ready", 60, "the clock")
    for offset_s, value in ((60, "10"), (120, "20"), (180, "30"), (HOUR_S + 60, "7")):
        stripe.billing.MeterEvent.create(event_name=meter.event_name, timestamp=START_S + offset_s,
                                         payload={"stripe_customer_id": customer.id, "value": value})
    # One customer's events are one ordered log: once the second hour shows, the first is complete.
    summaries = _until(lambda: (s := _hourly_summaries(stripe, meter.id, customer.id, 2))[1][1] and s, 60,
                       "the second hour's usage")

    # Hand-worked: the last event received in hour 1 is 30, in hour 2 it is 7: 37 units at 1 cent.
    assert summaries == [(START_S, 30), (START_S + HOUR_S, 7)]
    preview = stripe.Invoice.create_preview(subscription=subscription.id)
    assert [line.quantity for line in preview.lines.data] == [37]
    assert preview.subtotal == 37

    period_end_s = subscription.current_period_end
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_end_s + walkthrough.GRACE_S + 60)
    invoice = _until(lambda: stripe.Invoice.list(customer=customer.id, limit=1).data, 90, "the invoice")[0]
    assert [line.quantity for line in invoice.lines.data] == [37]
    assert invoice.subtotal == 37

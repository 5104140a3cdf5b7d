"""Usage of every meter kind, read three ways through the official Stripe SDK against the real
worker: the invoice preview and the event summaries must show what the finalized invoice bills.

Issue 14: on an hour-windowed sum meter the preview and the summaries added every event (67) while
the invoice counted one reading per window (37), as STRIPE.md says ("only the last event received
per window counts")."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api import walkthrough
from tests.e2e.builders import wait_for
from tests.oracle import model

START_S = walkthrough.START_S  # 2026-01-01T00:00:00Z, the test clock's start; the period ends Feb 1
HOUR_S = 3600


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
    wait_for(lambda: stripe.test_helpers.TestClock.retrieve(clock.id).status == "ready", 60, "the clock")
    for offset_s, value in ((60, "10"), (120, "20"), (180, "30"), (HOUR_S + 60, "7")):
        stripe.billing.MeterEvent.create(event_name=meter.event_name, timestamp=START_S + offset_s,
                                         payload={"stripe_customer_id": customer.id, "value": value})
    # One customer's events are one ordered log: once the second hour shows, the first is complete.
    summaries = wait_for(lambda: (s := _hourly_summaries(stripe, meter.id, customer.id, 2))[1][1] and s, 60,
                       "the second hour's usage")

    # Hand-worked: the last event received in hour 1 is 30, in hour 2 it is 7: 37 units at 1 cent.
    assert summaries == [(START_S, 30), (START_S + HOUR_S, 7)]
    preview = stripe.Invoice.create_preview(subscription=subscription.id)
    assert [line.quantity for line in preview.lines.data] == [37]
    assert preview.subtotal == 37

    period_end_s = subscription.current_period_end
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_end_s + walkthrough.GRACE_S + 60)
    invoice = wait_for(lambda: stripe.Invoice.list(customer=customer.id, limit=1).data, 90, "the invoice")[0]
    assert [line.quantity for line in invoice.lines.data] == [37]
    assert invoice.subtotal == 37


KINDS = [(formula, window) for formula in ("sum", "count", "last") for window in (None, "hour", "day")]
DAY_S = 24 * HOUR_S
# Event times: a few instants, so that events share minutes, hours and days (seconds from START_S)
EVENT_TIMES_S = [0, 30, 60, 3540, 3600, 3630, 7170, 86_340, 86_400, 86_430, 90_000, 172_000]


@st.composite
def _usage(draw):
    """Per meter kind: events (identifier, event time offset, value) in the order they are sent,
    some retries of an earlier identifier, and cancels (sent last) of some identifiers."""
    usage = {}
    for kind in KINDS:
        events = []
        for index in range(draw(st.integers(min_value=2, max_value=6))):
            retry = events and draw(st.integers(min_value=0, max_value=5)) == 0
            identifier = draw(st.sampled_from(events))[0] if retry else f"e{index}"
            offset_s, value = draw(st.sampled_from(EVENT_TIMES_S)), draw(st.integers(min_value=0, max_value=99))
            events.append((identifier, offset_s, value))
        identifiers = sorted({identifier for identifier, _, _ in events})
        cancels = draw(st.lists(st.sampled_from(identifiers), unique=True, max_size=2))
        usage[kind] = (events, cancels)
    return usage


def _expected(formula: str, window: str | None, events: list[tuple[str, int, int]], cancels: list[str]) -> Decimal:
    """The oracle's aggregate (tests/oracle/model.py) of what was sent: the first event of each
    identifier counts, received in the order sent, less the cancelled ones."""
    first: dict[str, model.Event] = {}
    for order, (identifier, offset_s, value) in enumerate(events):
        first.setdefault(identifier, model.Event((0, order), "cus", "mtr", identifier, Decimal(value),
                                                 (START_S + offset_s) * 1000, order))
    kept = [event for identifier, event in first.items() if identifier not in cancels]
    return model.aggregate({"aggregation": formula, "event_time_window": window}, kept)[0]


# By hand, for every kind: two readings in one minute of hour 1 and a third in a later minute (received
# last: it is the hour's reading), one in hour 2, a retry of the first identifier, one on day 2 (the
# latest); cancelling the third (the hour's reading is then the second one, 20) and the latest.
HAND_WORKED = [("e0", 0, 10), ("e1", 30, 20), ("e2", 180, 3), ("e3", 3600, 7), ("e0", 60, 99), ("e4", 86_400, 5)]


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=_usage())
@example(usage={kind: (HAND_WORKED, ["e2", "e4"]) for kind in KINDS})
def test_preview_and_summaries_equal_the_finalized_invoice_on_every_meter_kind(api_base, secret_key, worker, usage):
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    meters = {kind: _meter_with_price(stripe, *kind) for kind in KINDS}
    sentinel, _ = _meter_with_price(stripe, "sum", None)
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S, name="every kind")
    customer = stripe.Customer.create(name="Every kind", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id,
                                              items=[{"price": price.id} for _, price in meters.values()])
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=START_S + 2 * DAY_S)
    wait_for(lambda: stripe.test_helpers.TestClock.retrieve(clock.id).status == "ready", 60, "the clock")
    for kind, (events, _) in usage.items():
        for identifier, offset_s, value in events:
            stripe.billing.MeterEvent.create(event_name=meters[kind][0].event_name, identifier=identifier,
                                             timestamp=START_S + offset_s,
                                             payload={"stripe_customer_id": customer.id, "value": str(value)})
    for kind, (_, cancels) in usage.items():
        for identifier in cancels:
            stripe.billing.MeterEventAdjustment.create(event_name=meters[kind][0].event_name, type="cancel",
                                                       cancel={"identifier": identifier})
    # The customer's facts are one ordered log: once the last event shows, everything before it does.
    stripe.billing.MeterEvent.create(event_name=sentinel.event_name, timestamp=START_S,
                                     payload={"stripe_customer_id": customer.id, "value": "1"})
    wait_for(lambda: _hourly_summaries(stripe, sentinel.id, customer.id, 1)[0][1], 60, "the last event")

    preview = stripe.Invoice.create_preview(subscription=subscription.id)
    period_end_s = subscription.current_period_end
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=period_end_s + walkthrough.GRACE_S + 60)
    invoice = wait_for(lambda: stripe.Invoice.list(customer=customer.id, limit=1).data, 90, "the invoice")[0]
    previewed = {line.price: (line.quantity, line.amount) for line in preview.lines.data}
    invoiced = {line.price: (line.quantity, line.amount) for line in invoice.lines.data}
    for kind, (meter, price) in meters.items():
        expected = _expected(*kind, *usage[kind])
        assert previewed[price.id] == invoiced[price.id] == (expected, expected), kind
        whole = stripe.billing.Meter.list_event_summaries(meter.id, customer=customer.id, start_time=START_S,
                                                          end_time=subscription.current_period_end).data
        assert [s.aggregated_value for s in whole] == [expected], kind
        if kind[0] != "last":  # sum and count: the hourly summaries add up to the invoiced quantity
            hourly = _hourly_summaries(stripe, meter.id, customer.id, 48)
            assert sum(value for _, value in hourly) == expected, kind
    assert (preview.subtotal, preview.amount_due) == (invoice.subtotal, invoice.amount_due)


@pytest.mark.parametrize(("events", "billed"), [(((20, "3"), (40, "5")), 5), (((20, "3"),), 0)])
def test_a_period_starting_mid_minute_previews_its_first_minutes_usage(api_base, secret_key, worker, events, billed):
    """A subscription created at 00:00:30 shares the minute bucket 00:00 with the time before it:
    the event at 00:00:20 (3) lies before the period, the one at 00:00:40 (5) inside it. The preview
    read minute buckets and showed 0 (the whole bucket starts before the period); it now reads the
    workers' exact count of the period and shows 5, as the invoice bills; and 0 when the minute
    holds only the event before the period (the bucket alone would say 3)."""
    import stripe

    walkthrough.configure(stripe, api_base, secret_key)
    _, price = _meter_with_price(stripe, "sum", None)
    meter = stripe.billing.Meter.retrieve(price.recurring.meter)
    clock = stripe.test_helpers.TestClock.create(frozen_time=START_S + 30, name="mid-minute")
    customer = stripe.Customer.create(name="Mid-minute", test_clock=clock.id)
    subscription = stripe.Subscription.create(customer=customer.id, items=[{"price": price.id}])
    assert subscription.current_period_start == START_S + 30
    for offset_s, value in events:
        stripe.billing.MeterEvent.create(event_name=meter.event_name, timestamp=START_S + offset_s,
                                         payload={"stripe_customer_id": customer.id, "value": value})
    total = sum(int(value) for _, value in events)
    wait_for(lambda: _hourly_summaries(stripe, meter.id, customer.id, 1)[0][1] == total, 60, "the events")
    preview = stripe.Invoice.create_preview(subscription=subscription.id)
    stripe.test_helpers.TestClock.advance(clock.id, frozen_time=subscription.current_period_end + walkthrough.GRACE_S)
    invoice = wait_for(lambda: stripe.Invoice.list(customer=customer.id, limit=1).data, 90, "the invoice")[0]
    assert invoice.subtotal == billed  # the engine bills what lies inside the period
    assert preview.subtotal == billed

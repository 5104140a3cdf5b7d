"""The oracle itself against hand-worked numbers (no services): if it is wrong, the differential
tests prove nothing."""

from __future__ import annotations

from decimal import Decimal

from tests.oracle.model import HOUR_MS, add_months, period_containing, run

START = 1_767_225_600_000  # 2026-01-01T00:00Z
FEB_1 = add_months(START, 1)
GRACE = HOUR_MS


def meter(meter_id, event_name, aggregation="sum", window=None):
    return ("MeterDefined", {"meter_id": meter_id, "display_name": meter_id, "event_name": event_name,
                             "aggregation": aggregation, "customer_payload_key": "stripe_customer_id",
                             "value_payload_key": "value", "event_time_window": window, "created_at_ms": START})


def price(price_id, meter_id, unit, usage_type="metered"):
    return ("PriceCreated", {"price_id": price_id, "product_id": "prod", "currency": "usd",
                             "unit_amount_decimal": unit, "usage_type": usage_type, "meter_id": meter_id,
                             "recurring_interval": "month", "recurring_interval_count": 1, "created_at_ms": START})


CATALOG = {0: [(n, *fact) for n, fact in enumerate([
    meter("mtr_in", "in"), meter("mtr_out", "out"), meter("mtr_win", "win", window="hour"),
    price("price_in", "mtr_in", "3"), price("price_out", "mtr_out", "5"), price("price_half", "mtr_win", "1.5")])]}


def customer(customer_id="cus_1", clock="clock_1"):
    return ("CustomerCreated", {"customer_id": customer_id, "name": None, "email": None, "test_clock_id": clock,
                                "created_at_ms": START, "metadata": {}})


def grant(grant_id, amount, priority=50, expires=None, category="paid", prices=(), effective=START, created=START):
    return ("CreditGrantCreated", {
        "grant_id": grant_id, "customer_id": "cus_1", "name": None, "amount_minor": amount, "currency": "usd",
        "scope": {"price_type": None if prices else "metered", "price_ids": list(prices)}, "category": category,
        "priority": priority, "effective_at_ms": effective, "expires_at_ms": expires, "created_at_ms": created,
        "metadata": {}, "test_clock_id": "clock_1"})


def subscription(*prices):
    return ("SubscriptionCreated", {
        "subscription_id": "sub_1", "customer_id": "cus_1", "currency": "usd",
        "items": [{"item_id": f"si_{p}", "price_id": p, "quantity": 1} for p in prices],
        "billing_cycle_anchor_ms": START, "created_at_ms": START, "test_clock_id": "clock_1"})


def event(name, value, identifier, at=START + 60_000, received=None):
    return ("MeterEventRecorded", {"customer_id": "cus_1", "event_name": name, "identifier": identifier,
                                   "payload": {"stripe_customer_id": "cus_1", "value": value},
                                   "event_time_ms": at, "received_at_ms": at if received is None else received})


def clock(frozen):
    return ("TestClockAdvanced", {"test_clock_id": "clock_1", "frozen_time_ms": frozen, "advanced_at_ms": frozen})


def fold(*facts):
    log = [("TestClockCreated", {"test_clock_id": "clock_1", "name": None, "frozen_time_ms": START,
                                 "created_at_ms": START}), customer(), *facts]
    return run(CATALOG, {0: [(n, *fact) for n, fact in enumerate(log)]}, GRACE, 35 * 24 * HOUR_MS)


def only_invoice(results):
    assert len(results.invoices) == 1
    return next(iter(results.invoices.values()))


def test_the_walkthrough_3000_input_tokens_minus_a_10_usd_grant_leaves_8000_due():
    results = fold(grant("g", 1000), subscription("price_in", "price_out"), event("in", "3000", "e1"),
                   clock(FEB_1 + GRACE))
    invoice = only_invoice(results)
    assert [line["amount_minor"] for line in invoice["lines"]] == [9000, 0]
    assert (invoice["subtotal_minor"], invoice["total_credits_minor"], invoice["amount_due_minor"]) == (9000, 1000, 8000)
    assert invoice["finalized_at_ms"] == FEB_1 + GRACE and invoice["period_end_ms"] == FEB_1
    assert results.grant_balances["g"] == (0, 0)


def test_grants_apply_by_priority_then_expiry_then_promotional_first():
    results = fold(grant("g_paid_never", 500, priority=10), grant("g_late", 500, priority=10, expires=FEB_1 + 9 * GRACE),
                   grant("g_promo_never", 500, priority=10, category="promotional"), grant("g_low", 500, priority=90),
                   grant("g_first", 100, priority=0),
                   subscription("price_in"), event("in", "600", "e1"), clock(FEB_1 + GRACE))
    credits = [(c["grant_id"], c["amount_minor"]) for c in only_invoice(results)["lines"][0]["credits"]]
    assert credits == [("g_first", 100), ("g_late", 500), ("g_promo_never", 500), ("g_paid_never", 500),
                       ("g_low", 200)]


def test_a_line_rounds_half_up_and_an_hour_window_counts_its_last_received_event():
    # 3 events in one hour: the last received (value 3) counts; 3 x 1.5 = 4.5 -> 5
    results = fold(subscription("price_half"), event("win", "7", "a", received=START + 120_000),
                   event("win", "3", "b", at=START + 30_000, received=START + 180_000),
                   event("win", "9", "c", received=START + 150_000), clock(FEB_1 + GRACE))
    line = only_invoice(results)["lines"][0]
    assert (line["quantity"], line["amount_minor"]) == (Decimal(3), 5)


def test_a_retry_counts_once_and_a_cancel_takes_the_event_out():
    results = fold(subscription("price_in"), event("in", "10", "e1"), event("in", "10", "e1"),
                   event("in", "4", "e2"),
                   ("MeterEventCanceled", {"event_name": "in", "identifier": "e2", "customer_id": None,
                                           "received_at_ms": START + HOUR_MS}), clock(FEB_1 + GRACE))
    assert results.buckets[("cus_1", "mtr_in", START + 60_000)] == (Decimal(10), 1)
    assert only_invoice(results)["lines"][0]["amount_minor"] == 30


def test_an_expired_grant_pays_nothing_and_writes_credits_expired_at_its_expiry():
    results = fold(grant("g", 700, expires=START + 10 * HOUR_MS), subscription("price_in"),
                   event("in", "100", "e1"), clock(FEB_1 + GRACE))
    assert only_invoice(results)["total_credits_minor"] == 0
    expired = [t for t in results.transactions.values() if t["reason"] == "credits_expired"]
    assert [(t["amount_minor"], t["effective_at_ms"]) for t in expired] == [(700, START + 10 * HOUR_MS)]


def test_live_balance_is_credits_minus_the_open_periods_rated_usage():
    results = fold(grant("g", 1000), subscription("price_in", "price_out"), event("in", "100", "e1"),
                   event("out", "30", "e2"), clock(START + HOUR_MS))
    assert results.live_balances[("cus_1", "usd")] == (1000, 450, 550)


def test_a_period_anchored_on_the_31st_ends_on_the_last_day_of_february():
    jan_31 = START + 30 * 24 * HOUR_MS
    assert period_containing(jan_31, 1, jan_31, jan_31 + 1) == (jan_31, add_months(START, 1) + 27 * 24 * HOUR_MS)


def test_a_deactivated_meter_rejects_the_events_received_from_its_deactivation_until_its_reactivation():
    day = 24 * HOUR_MS
    catalog = {0: [*CATALOG[0], (6, "MeterDeactivated", {"meter_id": "mtr_in", "deactivated_at_ms": START + day}),
                   (7, "MeterReactivated", {"meter_id": "mtr_in", "reactivated_at_ms": START + 3 * day})]}
    log = [("TestClockCreated", {"test_clock_id": "clock_1", "name": None, "frozen_time_ms": START,
                                 "created_at_ms": START}), customer(), subscription("price_in"),
           event("in", "1", "before", received=START + day - 1), event("in", "10", "at", received=START + day),
           event("in", "100", "during", received=START + 2 * day),
           event("in", "1000", "after", received=START + 3 * day), clock(FEB_1 + GRACE)]
    results = run(catalog, {0: [(n, *fact) for n, fact in enumerate(log)]}, GRACE, 35 * day)
    # 1 + 1000 counted, 3 cents each; the two events received while it was inactive: archived_meter
    assert only_invoice(results)["lines"][0]["quantity"] == Decimal(1001)
    assert sorted(results.rejected.values()) == ["archived_meter", "archived_meter"]

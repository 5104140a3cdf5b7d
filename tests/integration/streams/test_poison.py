"""No poison pill: facts the worker cannot fold, produced straight to customer-facts (as any
producer could, bypassing the API's bounds), are dead-lettered and the partition goes on; the
customer is left as before that fact, so its later facts bill correctly (issue 12, finding 2)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal

from billing.facts import DeadLetter, InvoiceFinalized, LiveBalanceChanged, PriceCreated
from streams import walkthrough as w

PERIOD_END_MS = w.first_period_end_ms()
GRACE_MS = 3600 * 1000
# The largest amounts the edge lets through (billing/money.py, "Bounds"): a period's volume, not any
# single input, is what can still overflow, and only the worker can see it.
TOP_VALUE = "999999999"  # units per event (< 10^9)
TOP_PRICE = Decimal("99999999")  # minor units per unit (< 10^8)
PER_EVENT = 999_999_999 * 99_999_999  # 99_999_998_900_000_001 minor units
FITTING_EVENTS = 92  # 92 x PER_EVENT = 9_199_999_898_800_000_092 <= 2^63 - 1 < 93 x PER_EVENT


def catalog_with_top_output_price(suffix: str) -> list:
    return [replace(fact, unit_amount_decimal=TOP_PRICE) if isinstance(fact, PriceCreated)
            and fact.price_id.startswith("price_out") else fact for fact in w.catalog_facts(suffix)]


def _output_line(invoice: InvoiceFinalized):
    return next(line for line in invoice.lines if line.price_id.startswith("price_out"))


def test_a_period_volume_beyond_a_long_is_dead_lettered_and_the_customer_bills_on(worker, producer, outputs):
    suffix = uuid.uuid4().hex[:8]
    wall, clocked, clock = f"cus_wall_{suffix}", f"cus_clock_{suffix}", f"clock_{suffix}"
    producer.send_all(catalog_with_top_output_price(suffix))
    producer.flush()
    producer.send(w.clock_created(clock))
    producer.send_all(w.customer_setup(wall, None, suffix=suffix))  # wall clock: the worker's fast path
    producer.send_all(w.customer_setup(clocked, clock, suffix=suffix))  # test clock: the general path
    at_ms = w.START_MS + w.HOUR_MS
    producer.send(w.clock_advanced(clock, at_ms))
    for customer in (wall, clocked):
        for n in range(FITTING_EVENTS + 1):  # the last one would take the output line past 2^63 - 1
            producer.send(w.meter_event(customer, TOP_VALUE, f"top-{n}", at_ms, suffix=suffix, output=True))
        producer.send(w.meter_event(customer, "1", "normal", at_ms, suffix=suffix, output=True))
    producer.flush()

    outputs.wait_for(lambda facts: outputs.of(DeadLetter, wall) and outputs.of(DeadLetter, clocked))
    producer.send(w.clock_advanced(clock, PERIOD_END_MS + GRACE_MS))
    producer.flush()
    outputs.wait_for(lambda facts: outputs.of(InvoiceFinalized, clocked))
    outputs.settle(1.0)
    assert worker.process.poll() is None, worker.log_tail()

    for customer in (wall, clocked):
        (dead,) = outputs.of(DeadLetter, customer)
        assert dead.reason_code == "amount_out_of_range"
        assert dead.customer_id == customer and dead.original_bytes  # the fact itself, to inspect and re-publish
    # 92 top events and the normal one count, the 93rd does not: 92 x PER_EVENT + 99_999_999
    accrued = 9_199_999_898_800_000_092 + 99_999_999
    assert accrued == FITTING_EVENTS * PER_EVENT + 99_999_999 == 9_199_999_898_900_000_091
    assert outputs.of(LiveBalanceChanged, wall)[-1].accrued_usage_minor == accrued
    assert max(b.accrued_usage_minor for b in outputs.of(LiveBalanceChanged, wall)) == accrued
    (invoice,) = outputs.of(InvoiceFinalized, clocked)
    line = _output_line(invoice)
    assert line.quantity == Decimal(92 * 999_999_999 + 1) == Decimal("91999999909")
    assert line.amount_minor == accrued
    assert invoice.subtotal_minor == accrued  # no input tokens
    assert invoice.amount_due_minor == accrued - 1000  # the 10 USD grant applies


def test_the_worker_goes_on_with_other_customers_after_a_dead_letter(worker, producer, outputs):
    """A later customer on any partition is billed as usual (the worker did not stop)."""
    suffix = uuid.uuid4().hex[:8]
    poisoned, healthy = f"cus_p_{suffix}", f"cus_h_{suffix}"
    producer.send_all(catalog_with_top_output_price(suffix))
    producer.flush()
    at_ms = w.START_MS + w.HOUR_MS
    producer.send_all(w.customer_setup(poisoned, None, suffix=suffix))
    producer.send_all(w.meter_event(poisoned, TOP_VALUE, f"top-{n}", at_ms, suffix=suffix, output=True)
                      for n in range(FITTING_EVENTS + 1))
    producer.flush()
    outputs.wait_for(lambda facts: outputs.of(DeadLetter, poisoned))
    producer.send_all(w.customer_setup(healthy, None, suffix=suffix))
    producer.send(w.meter_event(healthy, "40", "normal", at_ms, suffix=suffix))  # input tokens: 3 each
    producer.flush()
    outputs.wait_for(lambda facts: any(b.accrued_usage_minor == 120 for b in outputs.of(LiveBalanceChanged, healthy)))
    assert worker.process.poll() is None, worker.log_tail()

"""No poison pill: facts the worker cannot fold, produced straight to customer-facts (as any
producer could, bypassing the API's bounds), are dead-lettered and the partition goes on; the
customer is left as before that fact, so its later facts bill correctly (issue 12, finding 2)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from billing.facts import DeadLetter, InvoiceFinalized, LiveBalanceChanged
from streams import walkthrough as w

PERIOD_END_MS = w.first_period_end_ms()
GRACE_MS = 3600 * 1000
HUGE = "999999999999999999"  # 18 digits: the largest value a meter event may carry


def _output_line(invoice: InvoiceFinalized):
    return next(line for line in invoice.lines if line.price_id.startswith("price_out"))


def test_amounts_beyond_a_long_are_dead_lettered_and_the_customer_bills_on(worker, producer, outputs):
    suffix = uuid.uuid4().hex[:8]
    wall, clocked, clock = f"cus_wall_{suffix}", f"cus_clock_{suffix}", f"clock_{suffix}"
    producer.send_all(w.catalog_facts(suffix))
    producer.flush()
    producer.send(w.clock_created(clock))
    producer.send_all(w.customer_setup(wall, None, suffix=suffix))  # wall clock: the worker's fast path
    producer.send_all(w.customer_setup(clocked, clock, suffix=suffix))  # test clock: the general path
    at_ms = w.START_MS + w.HOUR_MS
    producer.send(w.clock_advanced(clock, at_ms))
    for customer in (wall, clocked):
        # Output tokens cost 5 (minor units) each: one HUGE is 4_999_999_999_999_999_995, which fits
        # a signed 64-bit amount (max 9_223_372_036_854_775_807); a second one (9_999_999_999_999_999_990) does not.
        producer.send(w.meter_event(customer, HUGE, "huge-1", at_ms, suffix=suffix, output=True))
        producer.send(w.meter_event(customer, HUGE, "huge-2", at_ms, suffix=suffix, output=True))
        producer.send(w.meter_event(customer, "100", "normal", at_ms, suffix=suffix, output=True))
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
    # huge-1 and normal count, huge-2 does not: 5 x (999_999_999_999_999_999 + 100)
    accrued = 5 * (999_999_999_999_999_999 + 100)
    assert accrued == 5_000_000_000_000_000_495
    assert outputs.of(LiveBalanceChanged, wall)[-1].accrued_usage_minor == accrued
    assert max(b.accrued_usage_minor for b in outputs.of(LiveBalanceChanged, wall)) == accrued
    (invoice,) = outputs.of(InvoiceFinalized, clocked)
    line = _output_line(invoice)
    assert line.quantity == Decimal("1000000000000000099")
    assert line.amount_minor == accrued
    assert invoice.subtotal_minor == accrued  # no input tokens
    assert invoice.amount_due_minor == accrued - 1000  # the 10 USD grant applies


def test_the_worker_goes_on_with_other_customers_after_a_dead_letter(worker, producer, outputs):
    """A later customer on any partition is billed as usual (the worker did not stop)."""
    suffix = uuid.uuid4().hex[:8]
    poisoned, healthy = f"cus_p_{suffix}", f"cus_h_{suffix}"
    producer.send_all(w.catalog_facts(suffix))
    producer.flush()
    at_ms = w.START_MS + w.HOUR_MS
    producer.send_all(w.customer_setup(poisoned, None, suffix=suffix))
    producer.send(w.meter_event(poisoned, HUGE, "huge-1", at_ms, suffix=suffix, output=True))
    producer.send(w.meter_event(poisoned, HUGE, "huge-2", at_ms, suffix=suffix, output=True))
    producer.flush()
    outputs.wait_for(lambda facts: outputs.of(DeadLetter, poisoned))
    producer.send_all(w.customer_setup(healthy, None, suffix=suffix))
    producer.send(w.meter_event(healthy, "40", "normal", at_ms, suffix=suffix))  # input tokens: 3 each
    producer.flush()
    outputs.wait_for(lambda facts: any(b.accrued_usage_minor == 120 for b in outputs.of(LiveBalanceChanged, healthy)))
    assert worker.process.poll() is None, worker.log_tail()

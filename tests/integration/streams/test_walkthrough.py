"""The seed walkthrough through the real topics and a real worker process."""

from __future__ import annotations

import uuid

from billing.facts import CreditBalanceTransaction, InvoiceFinalized, TransactionReason, UsageBucketUpdated
from streams import walkthrough as w


def test_walkthrough_invoice_bills_3000_input_tokens_minus_the_10_usd_grant(worker, producer, outputs):
    run = uuid.uuid4().hex[:8]
    customer_id, clock_id = f"cus_{run}", f"clock_{run}"
    producer.send_all(w.catalog_facts(run))
    producer.flush()
    producer.send(w.clock_created(clock_id))
    producer.send_all(w.customer_setup(customer_id, clock_id, suffix=run))
    producer.send(w.clock_advanced(clock_id, w.START_MS + w.HOUR_MS))
    producer.send(w.meter_event(customer_id, "3000", f"evt_{run}", w.START_MS + w.HOUR_MS, suffix=run))
    producer.send(w.clock_advanced(clock_id, w.first_period_end_ms() + w.HOUR_MS + 1000))
    producer.flush()

    outputs.wait_for(lambda facts: any(isinstance(f, InvoiceFinalized) and f.customer_id == customer_id
                                       for f in facts))
    outputs.wait_for(lambda facts: len(outputs.of(CreditBalanceTransaction, customer_id)) >= 2)
    (invoice,) = outputs.of(InvoiceFinalized, customer_id)
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (9000, 1000, 8000)
    transactions = outputs.of(CreditBalanceTransaction, customer_id)
    assert [(t.reason, t.amount_minor) for t in transactions] == [
        (TransactionReason.CREDITS_GRANTED, 1000), (TransactionReason.CREDITS_APPLIED, 1000)]
    assert transactions[1].invoice_id == invoice.invoice_id
    buckets = outputs.of(UsageBucketUpdated, customer_id)
    assert [(b.meter_id, str(b.value)) for b in buckets] == [(f"mtr_in{run}", "3000")]

"""The seed walkthrough through the real topics and a real worker process."""

from __future__ import annotations

import uuid

from billing.facts import (
    CreditBalanceTransaction,
    InvoiceFinalized,
    LiveBalanceChanged,
    LowBalanceAlert,
    TransactionReason,
    UsageBucketUpdated,
)
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


def test_live_balance_burns_down_with_usage_and_alerts_once_when_it_crosses_zero(worker, producer, outputs):
    run = uuid.uuid4().hex[:8]
    customer_id, clock_id = f"cus_{run}", f"clock_{run}"
    producer.send_all(w.catalog_facts(run))
    producer.flush()
    producer.send(w.clock_created(clock_id))
    producer.send_all(w.customer_setup(customer_id, clock_id, suffix=run))  # 1000 minor of credits
    producer.send(w.clock_advanced(clock_id, w.START_MS + w.HOUR_MS))
    producer.flush()
    outputs.wait_for(lambda facts: outputs.of(LiveBalanceChanged, customer_id))
    producer.send(w.meter_event(customer_id, "100", f"a_{run}", w.START_MS + w.HOUR_MS, suffix=run))  # 300
    producer.flush()
    outputs.wait_for(lambda facts: any(f.live_balance_minor == 700 for f in outputs.of(LiveBalanceChanged, customer_id)))
    producer.send(w.meter_event(customer_id, "300", f"b_{run}", w.START_MS + w.HOUR_MS, suffix=run))  # 900
    producer.send(w.meter_event(customer_id, "100", f"c_{run}", w.START_MS + w.HOUR_MS, suffix=run))  # 300
    producer.flush()
    outputs.wait_for(lambda facts: any(f.live_balance_minor == -500 for f in outputs.of(LiveBalanceChanged, customer_id)))
    outputs.settle(1.0)

    (alert,) = outputs.of(LowBalanceAlert, customer_id)
    assert (alert.threshold_minor, alert.live_balance_minor <= 0) == (0, True)
    latest = outputs.of(LiveBalanceChanged, customer_id)[-1]
    assert (latest.available_credits_minor, latest.accrued_usage_minor, latest.live_balance_minor) == (1000, 1500, -500)

"""Time as facts: the ticker writes TimeTicked to every partition, and a tick past period end plus
grace finalizes the invoices of customers without a test clock."""

from __future__ import annotations

import uuid
from decimal import Decimal

from billing.facts import InvoiceFinalized, TimeTicked
from streams import walkthrough as w
from streams.ticker import run_ticker

from tests.oracle.wire import read_records


def test_the_ticker_writes_a_time_fact_to_every_partition(stream_settings):
    from schemas.codec import FactCodec

    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-ticker",
                                                  "tick_interval_ms": 50})
    assert run_ticker(settings, ticks=3) == 0
    codec = FactCodec()
    log = read_records(settings.kafka_client_config(), settings.topic("customer-facts"))
    assert len(log) == settings.partitions
    for partition, rows in log.items():
        ticks = [codec.decode(value) for _, value in rows]
        assert len(ticks) == 3 and all(isinstance(tick, TimeTicked) for tick in ticks), partition
        assert ticks[0].now_ms < ticks[1].now_ms < ticks[2].now_ms


def test_a_tick_past_period_end_and_grace_finalizes_a_customer_without_a_test_clock(worker, producer, outputs):
    run = uuid.uuid4().hex[:8]
    customer_id = f"cus_{run}"
    producer.send_all(w.catalog_facts(run))
    producer.flush()
    producer.send_all(w.customer_setup(customer_id, None, suffix=run))
    producer.send(w.meter_event(customer_id, "10", f"evt_{run}", w.START_MS + w.HOUR_MS, suffix=run))
    producer.send(TimeTicked(now_ms=w.first_period_end_ms() + w.HOUR_MS - 1))  # grace not over yet
    producer.flush()
    outputs.wait_for(lambda facts: any(getattr(f, "customer_id", None) == customer_id for f in facts))
    outputs.settle(1.0)
    assert not outputs.of(InvoiceFinalized, customer_id)

    producer.send(TimeTicked(now_ms=w.first_period_end_ms() + w.HOUR_MS))
    producer.flush()
    outputs.wait_for(lambda facts: outputs.of(InvoiceFinalized, customer_id))
    (invoice,) = outputs.of(InvoiceFinalized, customer_id)
    assert invoice.lines[0].quantity == Decimal(10) and invoice.amount_due_minor == 0
    assert invoice.finalized_at_ms == w.first_period_end_ms() + w.HOUR_MS

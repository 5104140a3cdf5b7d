"""Meter events, dedupe, cancellations, late events, dead letters, grants, void and expiry: facts in
through the real topics, derived facts out of a real worker process."""

from __future__ import annotations

import uuid
from decimal import Decimal

from billing.facts import (
    CreditBalanceTransaction,
    CreditGrantCreated,
    DeadLetter,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    InvoiceFinalized,
    InvoiceVoided,
    InvoiceVoidRequested,
    LiveBalanceChanged,
    MeterEventCanceled,
    TransactionReason,
    UsageBucketUpdated,
)
from billing.periods import MILLISECONDS_PER_MINUTE as MINUTE_MS
from streams import walkthrough as w
from streams.topics import PRODUCER_PARTITIONER

PERIOD_END_MS = w.first_period_end_ms()
GRACE_MS = 3600 * 1000


class Run:
    """One test's own catalog, customer and test clock, so tests share a worker but not state."""

    def __init__(self, producer, grant_minor: int | None = 1000):
        self.id = uuid.uuid4().hex[:8]
        self.customer_id, self.clock_id = f"cus_{self.id}", f"clock_{self.id}"
        self.producer = producer
        producer.send_all(w.catalog_facts(self.id))
        producer.flush()
        producer.send(w.clock_created(self.clock_id))
        setup = w.customer_setup(self.customer_id, self.clock_id, suffix=self.id)
        if grant_minor is None:
            setup = [fact for fact in setup if not isinstance(fact, CreditGrantCreated)]
        producer.send_all(setup)
        self.advance(w.START_MS + w.HOUR_MS)

    def advance(self, frozen_ms: int) -> None:
        self.producer.send(w.clock_advanced(self.clock_id, frozen_ms))
        self.producer.flush()

    def tokens(self, value: str, identifier: str, event_time_ms: int, received_at_ms: int | None = None) -> None:
        self.producer.send(w.meter_event(self.customer_id, value, identifier, event_time_ms, suffix=self.id,
                                         received_at_ms=received_at_ms))

    def grant(self, grant_id: str, amount_minor: int, *, priority: int = 50, expires_at_ms: int | None = None,
              category: GrantCategory = GrantCategory.PAID) -> None:
        self.producer.send(CreditGrantCreated(
            grant_id=f"{grant_id}_{self.id}", customer_id=self.customer_id, amount_minor=amount_minor, currency="usd",
            scope=GrantScope(price_type=GrantPriceType.METERED), category=category, priority=priority,
            effective_at_ms=w.START_MS, expires_at_ms=expires_at_ms, created_at_ms=w.START_MS,
            test_clock_id=self.clock_id))


def invoice_of(outputs, run) -> InvoiceFinalized:
    outputs.wait_for(lambda facts: outputs.of(InvoiceFinalized, run.customer_id))
    (invoice,) = outputs.of(InvoiceFinalized, run.customer_id)
    return invoice


def input_line(invoice: InvoiceFinalized):
    return next(line for line in invoice.lines if line.price_id.startswith("price_in"))


def test_usage_late_within_the_grace_period_is_billed_and_later_usage_is_not(worker, producer, outputs):
    run = Run(producer)
    run.tokens("1000", "on-time", w.START_MS + w.HOUR_MS)
    run.advance(PERIOD_END_MS + 30 * MINUTE_MS)  # period over, grace period running
    run.tokens("500", "late-in-grace", PERIOD_END_MS - MINUTE_MS, received_at_ms=PERIOD_END_MS + 30 * MINUTE_MS)
    run.advance(PERIOD_END_MS + GRACE_MS + 1000)
    invoice = invoice_of(outputs, run)
    run.tokens("700", "after-finalization", PERIOD_END_MS - 2 * MINUTE_MS,
               received_at_ms=PERIOD_END_MS + GRACE_MS + 1000)
    producer.flush()
    late_bucket = PERIOD_END_MS - 2 * MINUTE_MS
    outputs.wait_for(lambda facts: any(b.bucket_start_ms == late_bucket
                                       for b in outputs.of(UsageBucketUpdated, run.customer_id)))
    outputs.settle(1.0)

    assert input_line(invoice).quantity == Decimal(1500)
    assert invoice.subtotal_minor == 4500 and invoice.amount_due_minor == 3500
    assert len(outputs.of(InvoiceFinalized, run.customer_id)) == 1  # the late usage changed no invoice


def test_a_duplicate_identifier_counts_once(worker, producer, outputs):
    run = Run(producer)
    for _ in range(3):
        run.tokens("250", "same-identifier", w.START_MS + w.HOUR_MS)
    run.tokens("50", "other-identifier", w.START_MS + w.HOUR_MS)
    run.advance(PERIOD_END_MS + GRACE_MS)

    invoice = invoice_of(outputs, run)
    assert input_line(invoice).quantity == Decimal(300)
    # The bucket fact is emitted at the end of the batch, on another topic than the invoice:
    # wait for it and for the outputs to settle before reading the bucket's last value.
    outputs.wait_for(lambda facts: outputs.of(UsageBucketUpdated, run.customer_id))
    outputs.settle(1.0)
    bucket = outputs.of(UsageBucketUpdated, run.customer_id)[-1]
    assert (bucket.value, bucket.event_count) == (Decimal(300), 2)


def test_cancellations_within_24_hours_remove_the_value_with_or_without_a_customer(worker, producer, outputs):
    run = Run(producer)
    at_ms = w.START_MS + w.HOUR_MS
    for identifier, value in (("e1", "100"), ("e2", "200"), ("e3", "400"), ("e4", "800")):
        run.tokens(value, identifier, at_ms)
    event_name = f"hypernian_input_tokens{run.id}"
    producer.send(MeterEventCanceled(event_name=event_name, identifier="e1", customer_id=run.customer_id,
                                     received_at_ms=at_ms + MINUTE_MS))
    # No customer: written to every partition; only the one holding the event applies it.
    producer.send(MeterEventCanceled(event_name=event_name, identifier="e2", customer_id=None,
                                     received_at_ms=at_ms + MINUTE_MS))
    # Too late: more than 24 hours after the event's receipt.
    producer.send(MeterEventCanceled(event_name=event_name, identifier="e4", customer_id=run.customer_id,
                                     received_at_ms=at_ms + 25 * w.HOUR_MS))
    run.advance(PERIOD_END_MS + GRACE_MS)

    invoice = invoice_of(outputs, run)
    assert input_line(invoice).quantity == Decimal(1200)
    outputs.wait_for(lambda facts: outputs.of(DeadLetter, run.customer_id))
    (refused,) = outputs.of(DeadLetter, run.customer_id)
    assert refused.reason_code == "meter_event_cancel_window_passed"


def test_invalid_events_and_undecodable_bytes_are_dead_lettered_and_processing_goes_on(
        worker, producer, outputs, stream_settings):
    from confluent_kafka import Producer

    run = Run(producer)
    at_ms = w.START_MS + w.HOUR_MS
    unknown_meter = w.meter_event(run.customer_id, "5", "bad-meter", at_ms, suffix=run.id + "nope")
    producer.send(unknown_meter)
    run.tokens("not-a-number", "bad-value", at_ms)
    run.tokens("5", "too-old", at_ms - 36 * 24 * w.HOUR_MS)
    producer.flush()
    raw = Producer({**stream_settings.kafka_client_config(),
                    "partitioner": PRODUCER_PARTITIONER})
    raw.produce(stream_settings.topic("customer-facts"), b"\xc3\x01garbage-not-avro", key=run.customer_id.encode())
    raw.flush(10)
    run.tokens("42", "good", at_ms)
    producer.flush()

    outputs.wait_for(lambda facts: outputs.of(UsageBucketUpdated, run.customer_id))
    outputs.wait_for(lambda facts: len(outputs.of(DeadLetter, run.customer_id)) >= 4)
    codes = sorted(d.reason_code for d in outputs.of(DeadLetter, run.customer_id))
    assert codes == sorted(["no_meter", "meter_event_invalid_value", "timestamp_too_far_in_past",
                            "unknown_schema_fingerprint"])
    undecodable = next(d for d in outputs.of(DeadLetter, run.customer_id) if d.reason_code.startswith("unknown"))
    assert undecodable.original_bytes == b"\xc3\x01garbage-not-avro"
    assert outputs.of(UsageBucketUpdated, run.customer_id)[-1].value == Decimal(42)


def test_credits_apply_by_priority_then_expiry_then_promotional_first(worker, producer, outputs):
    run = Run(producer, grant_minor=None)
    far_ms = PERIOD_END_MS + 90 * 24 * w.HOUR_MS
    run.grant("paid_never", 500, priority=50)
    run.grant("promo_expiring", 500, priority=50, expires_at_ms=far_ms, category=GrantCategory.PROMOTIONAL)
    run.grant("paid_expiring", 500, priority=50, expires_at_ms=far_ms)
    run.grant("urgent", 300, priority=10)
    run.tokens("400", "usage", w.START_MS + w.HOUR_MS)  # 1200 minor
    run.advance(PERIOD_END_MS + GRACE_MS)

    invoice = invoice_of(outputs, run)
    credits = [(c.grant_id.rsplit("_", 1)[0], c.amount_minor) for c in input_line(invoice).credits]
    assert credits == [("urgent", 300), ("promo_expiring", 500), ("paid_expiring", 400)]
    assert invoice.amount_due_minor == 0


def test_voiding_an_invoice_reinstates_its_credits_and_a_grant_expires_at_its_time(worker, producer, outputs):
    run = Run(producer)
    run.grant("short", 250, priority=0, expires_at_ms=w.START_MS + 2 * w.HOUR_MS)
    run.advance(w.START_MS + 3 * w.HOUR_MS)  # the short grant expires unused
    # 1200 minor: 1000 credited, 200 due, so the invoice is open (one with nothing due is paid, and a
    # paid invoice cannot be voided, as in Stripe).
    run.tokens("400", "usage", w.START_MS + 3 * w.HOUR_MS)
    run.advance(PERIOD_END_MS + GRACE_MS)
    invoice = invoice_of(outputs, run)
    producer.send(InvoiceVoidRequested(invoice_id=invoice.invoice_id, customer_id=run.customer_id,
                                       requested_at_ms=PERIOD_END_MS + 2 * GRACE_MS))
    producer.flush()

    outputs.wait_for(lambda facts: outputs.of(InvoiceVoided, run.customer_id))
    outputs.wait_for(lambda facts: any(t.reason == TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED
                                       for t in outputs.of(CreditBalanceTransaction, run.customer_id)))
    transactions = [(t.grant_id.split("_")[0], t.reason, t.amount_minor)
                    for t in outputs.of(CreditBalanceTransaction, run.customer_id)]
    assert transactions == [
        ("credgr", TransactionReason.CREDITS_GRANTED, 1000),
        ("short", TransactionReason.CREDITS_GRANTED, 250),
        ("short", TransactionReason.CREDITS_EXPIRED, 250),
        ("credgr", TransactionReason.CREDITS_APPLIED, 1000),
        ("credgr", TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED, 1000),
    ]
    assert (invoice.total_credits_minor, invoice.amount_due_minor) == (1000, 200)
    outputs.wait_for(lambda facts: any(b.available_credits_minor == 1000 and b.accrued_usage_minor == 0
                                       for b in outputs.of(LiveBalanceChanged, run.customer_id)))

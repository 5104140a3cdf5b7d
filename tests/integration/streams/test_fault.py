"""The fault test: kill -9 a worker at random moments while it folds >= 200,000 meter events, restart
it, and compare every usage total, balance and invoice with the independent oracle (tests/oracle),
which works them out from the raw input log with no engine code. Exact equality: nothing lost,
nothing counted twice, and every rule as written."""

from __future__ import annotations

import random
import time
from decimal import Decimal

import pytest

from billing import ids
from billing.facts import (
    InvoiceFinalized,
    InvoiceVoidRequested,
    LiveBalanceChanged,
    MeterEventCanceled,
    TimeTicked,
    UsageBucketUpdated,
)
from billing.periods import MILLISECONDS_PER_MINUTE as MINUTE_MS
from billing.periods import add_months_clamped_ms
from streams import walkthrough as w
from streams.topics import ensure_topics

from tests.integration.oracle.compare import compare, oracle_results

from .conftest import OutputReader, WorkerProcess, wait_until_durable_to_the_end

CUSTOMERS = 300
EVENTS = 200_000
KILLS = 5
CLOCK_ID = "clock_fault"
VOIDS = 20
PERIOD_1_END_MS = w.first_period_end_ms()
PERIOD_2_END_MS = add_months_clamped_ms(w.START_MS, 2)
GRACE_MS = 3600 * 1000


def produce_log(settings, rng: random.Random, customer_count: int = CUSTOMERS, event_count: int = EVENTS) -> int:
    """The whole input log: setup, two billing periods of usage with retries, cancellations (with
    and without customer), late usage, voids. Every fourth customer runs on the wall clock (ticks
    move it, at the moments the test clock moves). Returns how many meter events it holds."""
    from producers.producer import FactProducer

    customers = [f"cus_fault_{n}" for n in range(customer_count)]
    with FactProducer(settings, validate=False) as producer:
        def advance(to_ms: int) -> None:
            producer.send(w.clock_advanced(CLOCK_ID, to_ms))
            producer.send(TimeTicked(now_ms=to_ms))

        producer.send_all(w.catalog_facts())
        producer.flush()
        producer.send(w.clock_created(CLOCK_ID))
        producer.send(TimeTicked(now_ms=w.START_MS))
        for n, customer_id in enumerate(customers):
            producer.send_all(w.customer_setup(customer_id, None if n % 4 == 3 else CLOCK_ID,
                                               grant_minor=rng.randrange(1, 400) * 100))
        advance(w.START_MS + w.HOUR_MS)
        sent: list[tuple[str, str, bool]] = []

        def events(count: int, first_event_ms: int, span_ms: int, received_ms: int) -> None:
            for n in range(count):
                customer_id = rng.choice(customers)
                output = rng.random() < 0.4
                if sent and rng.random() < 0.01:  # a retried event: same identifier
                    customer_id, identifier, output = rng.choice(sent)
                else:
                    identifier = f"evt_{len(sent)}"
                    sent.append((customer_id, identifier, output))
                producer.send(w.meter_event(customer_id, str(rng.randrange(-5, 60)), identifier,
                                            first_event_ms + rng.randrange(span_ms), output=output,
                                            received_at_ms=received_ms + n // 1000))
                if n % 20000 == 0:
                    producer.poll(0)

        events(event_count * 3 // 4, w.START_MS, w.HOUR_MS, w.START_MS + w.HOUR_MS)
        for customer_id, identifier, output in rng.sample(sent, min(600, len(sent) // 50)):
            name = "hypernian_output_tokens" if output else "hypernian_input_tokens"
            producer.send(MeterEventCanceled(event_name=name, identifier=identifier,
                                             customer_id=customer_id if rng.random() < 0.5 else None,
                                             received_at_ms=w.START_MS + 2 * w.HOUR_MS))
        advance(PERIOD_1_END_MS + GRACE_MS + 1000)
        # Period 2 usage, and late usage for the finalized period 1 (bucketed, never billed).
        events(event_count // 4, PERIOD_1_END_MS + GRACE_MS - 30 * MINUTE_MS, 30 * MINUTE_MS,
               PERIOD_1_END_MS + GRACE_MS + 1000)
        events(1000, PERIOD_1_END_MS - 10 * MINUTE_MS, 10 * MINUTE_MS, PERIOD_1_END_MS + GRACE_MS + 1000)
        for customer_id in rng.sample(customers, VOIDS):
            producer.send(InvoiceVoidRequested(invoice_id=ids.invoice_id(f"sub_{customer_id}", w.START_MS),
                                               customer_id=customer_id,
                                               requested_at_ms=PERIOD_1_END_MS + 2 * GRACE_MS))
        advance(PERIOD_2_END_MS + GRACE_MS + 1000)
    return event_count + 1000


def latest_by(facts: list, key) -> dict:
    latest = {}
    for fact in facts:
        latest[key(fact)] = fact
    return latest


def assert_engine_equals_oracle(settings, customer_count: int) -> int:
    """Every invoice, transaction, voided invoice, usage bucket, grant ledger, final live balance and
    dead letter the engine emitted equals the oracle's (tests/oracle). Returns the bucket count."""
    oracle = oracle_results(settings)
    assert len(oracle.invoices) == 2 * customer_count and len(oracle.voided_invoices) == VOIDS
    assert any(customer.test_clock_id is None for customer in oracle.customers.values())  # both kinds of time
    found = compare(settings)
    assert not found, "\n".join(found)
    return len(oracle.buckets)


@pytest.mark.slow
def test_kill_9_during_200k_events_loses_nothing_and_counts_nothing_twice(stream_settings, tmp_path):
    rng = random.Random(20261123)
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-fault",
                                                  "live_balance_interval_ms": 0})
    ensure_topics(settings)
    started = time.monotonic()
    produce_log(settings, rng)
    produced_s = time.monotonic() - started

    worker = WorkerProcess(settings, "worker-fault", tmp_path).start().wait_processing()
    reader = OutputReader(settings)
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.5, 3.0))  # a random moment while it folds
            worker.kill()
            kills += 1
            worker.start().wait_processing()
        wait_until_durable_to_the_end(settings, timeout_s=300)
        reader.wait_for(lambda facts: len({f.invoice_id for f in facts if isinstance(f, InvoiceFinalized)})
                        >= 2 * CUSTOMERS, timeout_s=60)
        reader.settle(2.0)
    finally:
        worker.stop()
        reader.close()
    engine_s = time.monotonic() - started - produced_s
    buckets = assert_engine_equals_oracle(settings, CUSTOMERS)
    print(f"\nfault test: produced in {produced_s:.1f}s, engine with {kills} kills {engine_s:.1f}s, "
          f"{buckets} buckets, {2 * CUSTOMERS} invoices")


WALL_CUSTOMERS = 200
WALL_EVENTS = 60_000
WALL_KILLS = 3
CENTS_PER_UNIT = {"hypernian_input_tokens": 3, "hypernian_output_tokens": 5}  # walkthrough prices


@pytest.mark.slow
def test_kill_9_on_the_wall_clock_fast_path_loses_nothing_and_counts_nothing_twice(stream_settings, tmp_path):
    """Wall-clock customers (no test clock: the worker's fast path) in their first period, 1% of events
    retried, the worker SIGKILLed while it folds. Usage buckets and live balances are checked against
    usage_oracle.py, which works them out from the raw log without engine code."""
    from producers.producer import FactProducer, wall_clock_ms

    rng = random.Random(20261203)
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-fault-wall",
                                                  "live_balance_interval_ms": 0})
    ensure_topics(settings)
    start_ms = wall_clock_ms() - w.HOUR_MS
    customers = [f"cus_wall_{n}" for n in range(WALL_CUSTOMERS)]
    grants = {customer_id: rng.randrange(1, 400) * 100 for customer_id in customers}
    with FactProducer(settings, validate=False) as producer:
        producer.send_all(w.catalog_facts())
        producer.flush()
        for customer_id in customers:
            producer.send_all(w.customer_setup(customer_id, None, start_ms=start_ms, grant_minor=grants[customer_id]))
        sent: list[tuple[str, str, bool]] = []
        for n in range(WALL_EVENTS):
            if sent and rng.random() < 0.01:  # a retried event: same identifier, same customer
                customer_id, identifier, output = rng.choice(sent)
            else:
                customer_id, identifier, output = rng.choice(customers), f"evt_wall_{n}", rng.random() < 0.4
                sent.append((customer_id, identifier, output))
            producer.send(w.meter_event(customer_id, str(rng.randrange(0, 60)), identifier,
                                        start_ms + rng.randrange(w.HOUR_MS), output=output,
                                        received_at_ms=start_ms + w.HOUR_MS))
            if n % 20000 == 0:
                producer.poll(0)

    worker = WorkerProcess(settings, "worker-fault-wall", tmp_path).start().wait_processing()
    reader = OutputReader(settings)
    try:
        for _ in range(WALL_KILLS):
            time.sleep(rng.uniform(0.3, 1.5))  # a random moment while it folds
            worker.kill()
            worker.start().wait_processing()
        wait_until_durable_to_the_end(settings, timeout_s=240)
        reader.settle(2.0)
    finally:
        worker.stop()
        reader.close()

    from .usage_oracle import counted_events, first_period_live_balances, minute_usage

    events = counted_events(settings)
    assert len(events) == len(sent)
    meter_ids = {meter.event_name: meter.meter_id for meter in w.catalog_facts() if hasattr(meter, "event_name")}
    buckets = {key: Decimal(str(fact.value)) for key, fact in latest_by(
        reader.of(UsageBucketUpdated), lambda f: (f.customer_id, f.meter_id, f.bucket_start_ms)).items()}
    assert buckets == minute_usage(events, meter_ids)
    live = {customer_id: (f.available_credits_minor, f.accrued_usage_minor, f.live_balance_minor)
            for customer_id, f in latest_by(reader.of(LiveBalanceChanged), lambda f: f.customer_id).items()}
    assert live == first_period_live_balances(events, grants, CENTS_PER_UNIT)

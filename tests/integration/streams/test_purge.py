"""The worker's state purge on a real broker (issue 16): three months of usage through a worker that
purges and one that does not, on topics of their own with the same facts. The purging worker forgets
dedupe records and buckets (its ready page counts them), is then killed and restored on a new machine
from its changelogs (tombstones and all), and both go on with retries and reused identifiers: every
bucket, invoice and credit transaction they end with is the same, and the restored one still
deduplicates the retry of an event inside the dedupe window."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from decimal import Decimal

import pytest

from billing.facts import CreditBalanceTransaction, InvoiceFinalized, TimeTicked, UsageBucketUpdated
from drawdown.settings import Settings
from producers.producer import FactProducer
from streams import walkthrough as w
from tests.integration.producers.kafka_reading import own_topics

from .conftest import OutputReader, WorkerProcess, wait_until_durable_to_the_end

DAY_MS = 86_400_000
DAYS = 90
CUSTOMERS = [f"cus_purge_{n}" for n in range(6)]
START_MS = w.START_MS


def history() -> list:
    """Three months of daily usage (two events per customer a day, received at their own times), a
    tick a day (invoices at each month's end)."""
    facts = [*w.catalog_facts()]
    for customer_id in CUSTOMERS:
        facts.extend(w.customer_setup(customer_id, None, start_ms=START_MS, grant_minor=5_000))
    for day in range(DAYS):
        day_ms = START_MS + day * DAY_MS
        for n, customer_id in enumerate(CUSTOMERS):
            facts.append(w.meter_event(customer_id, str(day + n), f"d{day}", day_ms + n * 60_000))
            facts.append(w.meter_event(customer_id, "1", f"o{day}", day_ms + 3_600_000, output=True))
        facts.append(TimeTicked(now_ms=day_ms + DAY_MS))
    return facts


LAST_MS = START_MS + DAYS * DAY_MS
LATER_MS = LAST_MS + 2 * DAY_MS


def afterwards() -> list:
    """After the restore: a retry of an event received 20 days ago (a duplicate: counts nothing), the
    identifier of one received 80 days ago used again (past the dedupe window: a new event), and the
    day's usage."""
    return [w.meter_event(CUSTOMERS[0], "70", "d70", START_MS + 70 * DAY_MS, received_at_ms=LAST_MS),
            w.meter_event(CUSTOMERS[1], "500", "d10", LAST_MS),
            w.meter_event(CUSTOMERS[2], "9", "today", LAST_MS),
            TimeTicked(now_ms=LAST_MS + DAY_MS)]


@pytest.fixture(scope="module")
def two_installations(settings: Settings) -> Iterator[tuple[Settings, Settings]]:
    base = settings.model_copy(update={"receipt_bound_seconds": 0, "grace_period_seconds": 3600,
                                       "live_balance_interval_ms": 0})
    for purging in own_topics(base.model_copy(update={"purge_state": True}), "pg"):
        for keeping in own_topics(base.model_copy(update={"purge_state": False}), "kp"):
            yield purging, keeping


def final_state(settings: Settings) -> tuple[dict, dict, list]:
    """Each bucket's last value, each invoice, and every credit transaction (by id) on the output topics."""
    reader = OutputReader(settings)
    try:
        facts = reader.settle(3.0)
    finally:
        reader.close()
    buckets = {(f.customer_id, f.meter_id, f.bucket_start_ms): (f.value, f.event_count)
               for f in facts if isinstance(f, UsageBucketUpdated)}
    invoices = {f.invoice_id: f for f in facts if isinstance(f, InvoiceFinalized)}
    transactions = sorted({f.transaction_id: f for f in facts if isinstance(f, CreditBalanceTransaction)}.items())
    return buckets, invoices, transactions


def test_a_purging_worker_restored_on_a_new_machine_ends_where_a_keeping_one_does(two_installations,
                                                                                   tmp_path_factory):
    purging, keeping = two_installations
    base = tmp_path_factory.mktemp("purge")
    workers = {"purging": WorkerProcess(purging, "purging", base), "keeping": WorkerProcess(keeping, "keeping", base)}
    try:
        for name, settings in (("purging", purging), ("keeping", keeping)):
            with FactProducer(settings, validate=False) as producer:
                producer.send_all(history())
                producer.flush()
            workers[name].start()
        for name, settings in (("purging", purging), ("keeping", keeping)):
            wait_until_durable_to_the_end(settings)
        # A batch's purge judges by time as of the batch before, and buckets past their limits go a
        # cancel window (a day of receipts, on each partition) after that: a tick, usage two days
        # later, and a tick.
        for name, settings in (("purging", purging), ("keeping", keeping)):
            for facts in ([TimeTicked(now_ms=LAST_MS)],
                          [w.meter_event(customer_id, "5", "later", LATER_MS) for customer_id in CUSTOMERS],
                          [TimeTicked(now_ms=LATER_MS)]):
                with FactProducer(settings, validate=False) as producer:
                    producer.send_all(facts)
                    producer.flush()
                wait_until_durable_to_the_end(settings)
        forgotten = workers["purging"].status()["forgotten"]
        # 92 days received, the floor an hour before: dedupe records of ~56 days (two a day on each of
        # the 3 partitions, each holding its customers' events) and buckets of ~54 days (2 x 6 a day)
        assert forgotten["seen"] >= 3 * 2 * 50 and forgotten["buckets"] >= 12 * 50, forgotten
        assert workers["keeping"].status()["forgotten"] == {"seen": 0, "buckets": 0}

        # the purging worker's machine is gone: kill -9, its state with it; restored from its changelogs
        workers["purging"].kill()
        shutil.rmtree(workers["purging"].settings.worker_data_dir)
        workers["purging"].start()
        for name, settings in (("purging", purging), ("keeping", keeping)):
            with FactProducer(settings, validate=False) as producer:
                producer.send_all(afterwards())
                producer.flush()
        for name, settings in (("purging", purging), ("keeping", keeping)):
            wait_until_durable_to_the_end(settings)
    finally:
        for worker in workers.values():
            worker.stop()
    purged_buckets, purged_invoices, purged_transactions = final_state(purging)
    kept_buckets, kept_invoices, kept_transactions = final_state(keeping)
    assert purged_buckets == kept_buckets
    assert purged_invoices == kept_invoices and len(kept_invoices) == 3 * len(CUSTOMERS)  # Feb, Mar, Apr 1st
    assert purged_transactions == kept_transactions
    # worked by hand: the retry counted nothing (day 70's bucket of customer 0 holds its first 70);
    # the reused identifier counted 500 in today's minute; so did "today"
    assert purged_buckets[(CUSTOMERS[0], "mtr_in", START_MS + 70 * DAY_MS)] == (Decimal(70), 1)
    assert purged_buckets[(CUSTOMERS[1], "mtr_in", LAST_MS)] == (Decimal(500), 1)
    assert purged_buckets[(CUSTOMERS[2], "mtr_in", LAST_MS)] == (Decimal(9), 1)
    assert purged_buckets[(CUSTOMERS[3], "mtr_in", LATER_MS)] == (Decimal(5), 1)

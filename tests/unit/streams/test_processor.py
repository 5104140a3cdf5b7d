"""The partition fold without Kafka: the walkthrough, and replays that change nothing."""

from __future__ import annotations

from billing.catalog import Catalog, evolve_catalog
from billing.customer import FoldConfig
from billing.facts import CreditBalanceTransaction, DeadLetter, InvoiceFinalized, UsageBucketUpdated
from billing.usage import UsageLedger
from streams import state as records
from streams import walkthrough as w
from streams.processor import PartitionProcessor, PartitionState

CONFIG = FoldConfig(grace_period_ms=3_600_000, live_balance_interval_ms=0)


def catalog() -> Catalog:
    folded = Catalog()
    for fact in w.catalog_facts():
        folded = evolve_catalog(folded, fact)
    return folded


def processor(customers=None, ledger=None, state=None) -> PartitionProcessor:
    """A processor over existing state, its due-time index rebuilt from it (as after a restart)."""
    customers = {} if customers is None else customers
    return PartitionProcessor(topic="customer-facts", partition=0, customers=customers,
                              ledger=ledger or UsageLedger(), partition_state=state or PartitionState(),
                              catalog=catalog(), config=CONFIG, existing_customers=list(customers.values()))


def walkthrough_log() -> list:
    return [w.clock_created("clock"), *w.customer_setup("cus_1", "clock"),
            w.clock_advanced("clock", w.START_MS + w.HOUR_MS),
            w.meter_event("cus_1", "2000", "e1", w.START_MS + w.HOUR_MS),
            w.meter_event("cus_1", "2000", "e1", w.START_MS + w.HOUR_MS),  # a retry: counted once
            w.meter_event("cus_1", "1000", "e2", w.START_MS + w.HOUR_MS),
            w.clock_advanced("clock", w.first_period_end_ms() + w.HOUR_MS)]


def fold(proc: PartitionProcessor, log: list, start: int = 0) -> list:
    out = []
    for offset, fact in enumerate(log[start:], start):
        out.extend(proc.process(offset, fact, b""))
    return out + proc.finish_batch()


def test_the_walkthrough_invoice_is_9000_minus_1000_credits():
    out = fold(processor(), walkthrough_log())
    (invoice,) = [f for f in out if isinstance(f, InvoiceFinalized)]
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (9000, 1000, 8000)
    assert [t.reason for t in out if isinstance(t, CreditBalanceTransaction)] == ["credits_granted", "credits_applied"]


def money(facts: list) -> list:
    return [f for f in facts if isinstance(f, (InvoiceFinalized, CreditBalanceTransaction))]


def test_replaying_an_applied_prefix_after_a_crash_emits_only_what_was_not_applied():
    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:7])
    # A crash after the state of offsets 0..6 was written, before the source offset was committed:
    # a new processor over the same state re-reads from offset 3.
    again = fold(processor(customers, ledger, state), log, start=3)
    once = fold(processor(), log)
    assert money(again) == [f for f in money(once) if f.__class__ is InvoiceFinalized or f.reason == "credits_applied"]
    (invoice,) = [f for f in again if isinstance(f, InvoiceFinalized)]
    assert invoice.subtotal_minor == 9000  # the 3000 tokens counted exactly once


def test_folding_the_same_log_twice_over_the_same_state_changes_nothing():
    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log)
    snapshot = records.dumps((customers, dict(ledger.buckets), dict(ledger.seen), state))
    replayed = fold(processor(customers, ledger, state), log)
    assert [f for f in replayed if not isinstance(f, UsageBucketUpdated)] == []
    assert records.loads(records.dumps((customers, dict(ledger.buckets), dict(ledger.seen), state))) == \
        records.loads(snapshot)


def test_an_undecodable_record_becomes_a_dead_letter_with_the_codec_reason():
    from schemas.errors import TruncatedFact

    (letter,) = processor().process(7, None, b"\xc3", key="cus_1", error=TruncatedFact("1 byte"))
    assert isinstance(letter, DeadLetter)
    assert (letter.reason_code, letter.offset, letter.original_bytes) == ("truncated_fact", 7, b"\xc3")


def test_usage_records_lost_behind_a_newer_partition_record_come_back_when_re_read_from_the_durable_offset():
    from billing.usage import bucket_value

    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:3])
    state.durable_offset = state.applied_offset  # offsets 0..2: every record acknowledged
    durable_usage = UsageLedger(dict(ledger.seen), dict(ledger.buckets))
    # Offsets 3..6 reach the customer and partition records but their usage records are lost.
    fold(processor(customers, ledger, state), log[:7], start=3)
    assert state.applied_offset == 6 and state.durable_offset == 2
    again = fold(processor(customers, durable_usage, state), log, start=state.durable_offset + 1)
    once_ledger = UsageLedger()
    once = fold(processor(ledger=once_ledger), log)
    values = {key: bucket_value(catalog().aggregator(key[1]), bucket) for key, bucket in durable_usage.buckets.items()}
    assert values == {key: bucket_value(catalog().aggregator(key[1]), bucket)
                      for key, bucket in once_ledger.buckets.items()}
    assert [f.subtotal_minor for f in again if isinstance(f, InvoiceFinalized)] == \
        [f.subtotal_minor for f in once if isinstance(f, InvoiceFinalized)] == [9000]


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def test_each_partition_folds_only_the_run_that_continues_from_its_next_offset():
    from streams.worker import unbroken_runs

    next_offsets = {0: 5}
    messages = [_Message(0, 3), _Message(0, 5), _Message(1, 10), _Message(0, 6), _Message(2, 7),
                _Message(2, 9), _Message(2, 10), _Message(1, 11), _Message(0, 8)]
    runs, gaps = unbroken_runs(messages, next_offsets, resume_offset={1: 10, 2: 7}.__getitem__)
    assert {p: [m.offset() for m in run] for p, run in runs.items()} == {0: [3, 5, 6], 1: [10, 11], 2: [7]}
    assert gaps == {0: (7, 8), 2: (8, 9)}
    assert next_offsets == {0: 7, 1: 12, 2: 8}
    runs, gaps = unbroken_runs([_Message(2, 8), _Message(2, 9)], next_offsets, resume_offset=lambda p: 0)
    assert ([m.offset() for m in runs[2]], gaps, next_offsets[2]) == ([8, 9], {}, 10)

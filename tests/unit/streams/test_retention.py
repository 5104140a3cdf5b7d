"""The purge of the worker's usage state (issue 16): the rules by hand, and purging on against
purging off over generated months of usage, through the worker's own state code (BatchCaches over a
RocksDB store, streams.pipeline.usage_state_writes), with the changelog it writes restored."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict, WriteBatch

from billing.catalog import Catalog, evolve_catalog
from billing.customer import FoldConfig
from billing.facts import DeadLetter, MeterEventCanceled, TimeTicked, UsageBucketUpdated
from billing.partition import PartitionProcessor, PartitionState
from billing.retention import (
    armed_buckets_expired,
    bucket_retention_ms,
    buckets_past_lateness,
    receipt_floor_ms,
    seen_expired,
)
from billing.usage import UsageLedger
from streams import records
from streams import walkthrough as w
from streams.pipeline import Retention, usage_state_writes
from streams.retention import ARMED_INDEX, BUCKET_INDEX, SEEN_INDEX, restore_usage_changelog

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
WINDOW_MS = 35 * DAY_MS
GRACE_MS = HOUR_MS
CONFIG = FoldConfig(grace_period_ms=GRACE_MS, live_balance_interval_ms=0)


# --- the rules, worked by hand -------------------------------------------------------------------

def test_the_receipt_floor_is_the_latest_receipt_less_twice_the_bound_and_an_hour():
    # a fact received at R was appended at R - B or later; one appended after it, at R - B or
    # later, was received at most B before: R - 2B, less an hour for broker clocks and disorder
    assert receipt_floor_ms(10 * DAY_MS, HOUR_MS) == 10 * DAY_MS - 3 * HOUR_MS
    assert receipt_floor_ms(10 * DAY_MS, 0) == 10 * DAY_MS - HOUR_MS


def test_a_seen_record_expires_once_the_floor_is_past_its_receipt_plus_the_dedupe_window():
    # a duplicate received at the floor F is one iff F - r <= window: r = F - window still dedupes it
    floor_ms = 100 * DAY_MS
    assert not seen_expired(floor_ms - WINDOW_MS, floor_ms, WINDOW_MS)
    assert seen_expired(floor_ms - WINDOW_MS - 1, floor_ms, WINDOW_MS)
    # a window shorter than the cancel window (24 h) is kept for cancels
    assert not seen_expired(floor_ms - DAY_MS, floor_ms, HOUR_MS)
    assert seen_expired(floor_ms - DAY_MS - 1, floor_ms, HOUR_MS)


def test_buckets_are_kept_35_days_a_cancel_window_a_day_window_and_a_minute_past_their_minute_plus_grace():
    assert bucket_retention_ms(GRACE_MS) == (35 + 1 + 1) * DAY_MS + MINUTE_MS + HOUR_MS
    now_ms = 200 * DAY_MS
    retention_ms = 37 * DAY_MS + MINUTE_MS + HOUR_MS
    assert not buckets_past_lateness(now_ms - retention_ms, now_ms, GRACE_MS)
    assert buckets_past_lateness(now_ms - retention_ms - 1, now_ms, GRACE_MS)
    # ... and forgotten a cancel window (on the receipts' clock) after they were found past it
    assert not armed_buckets_expired(now_ms - DAY_MS, now_ms)
    assert armed_buckets_expired(now_ms - DAY_MS - 1, now_ms)


# --- a worker's usage state, as streams/pipeline.py keeps it -------------------------------------


def catalog() -> Catalog:
    folded = Catalog()
    for fact in w.catalog_facts():
        folded = evolve_catalog(folded, fact)
    return folded


CATALOG = catalog()


class WorkerState:
    """One partition's fold with its usage state in a RocksDB store behind the worker's caches,
    written batch by batch as BatchPipeline writes it (usage_state_writes), its changelog kept as a
    list, time made durable a batch late (as the pipeline's completion does)."""

    def __init__(self, path, retention: Retention | None) -> None:
        self.db = Rdict(str(path), options=Options(raw_mode=True))
        self.retention = retention
        self.seen = records.BatchCache(self.db, records.seen_key, max_entries=50, dump=records.dump_seen,
                                       load=records.load_seen)
        self.buckets = records.BatchCache(self.db, records.bucket_key, max_entries=50, dump=records.dump_bucket,
                                          load=records.load_bucket)
        self.customers = records.BatchCache(Rdict(str(path) + "-customers", options=Options(raw_mode=True)),
                                            records.customer_key)
        self.state = PartitionState()
        self.processor = PartitionProcessor(topic="customer-facts", partition=0, customers=self.customers,
                                            ledger=UsageLedger(self.seen, self.buckets, WINDOW_MS),
                                            partition_state=self.state, catalog=CATALOG, config=CONFIG)
        self.changelog: list[tuple[bytes, bytes | None]] = []
        self.batches = 0
        self.offset = -1
        self.pending_durable: tuple | None = None
        self.forgotten_seen = self.forgotten_buckets = 0
        self.clocks_scanned: dict[str, int] = {}

    def fold(self, facts: list) -> list:
        out = []
        for fact in facts:
            self.offset += 1
            out.extend(self.processor.process(self.offset, fact, b"bytes"))
        out.extend(self.processor.finish_batch())
        self.customers.take_dirty()
        puts, changelog, deletes, purged = usage_state_writes(
            self.db, self.seen, self.buckets, self.customers, self.state, b"i:%d:0" % self.batches, self.retention,
            self.clocks_scanned)
        self.forgotten_seen += purged.forgotten_seen
        self.forgotten_buckets += purged.forgotten_buckets
        self.changelog.extend(changelog)
        write = WriteBatch(raw_mode=True)
        for key, value in puts:
            write.put(key, value)
        for key in deletes:
            write.delete(key)
        self.db.write(write)
        # the previous batch is durable once this one's writes are: time as of its last offset
        if self.pending_durable is not None:
            self.state.mark_durable(*self.pending_durable)
        self.pending_durable = (self.offset, self.state.now_ms, dict(self.state.clocks), self.state.latest_received_ms)
        self.batches += 1
        return out

    def stored(self) -> dict[bytes, bytes]:
        return dict(self.db.items())


class _Message:
    def __init__(self, offset: int, key: bytes, value: bytes | None) -> None:
        self.tp, self.offset, self.partition, self.key, self.value = ("usage-changelog", 0), offset, 0, key, value


class _Event:
    def __init__(self, message: _Message) -> None:
        self.message = message


def restored(path, changelog: list[tuple[bytes, bytes | None]], batch_size: int = 7) -> dict[bytes, bytes]:
    """A store restored from `changelog` by the worker's recovery, in Faust-sized batches."""
    db = Rdict(str(path), options=Options(raw_mode=True))
    events = [_Event(_Message(offset, key, value)) for offset, key, value in
              ((offset, key, value) for offset, (key, value) in enumerate(changelog))]
    for start in range(0, len(events), batch_size):
        offsets = restore_usage_changelog(lambda partition: db, events[start:start + batch_size])
        assert offsets == {("usage-changelog", 0): events[min(start + batch_size, len(events)) - 1].message.offset}
    return dict(db.items())


def compacted(changelog: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """The changelog as Kafka's log compaction may leave it: the last record of each key, where it
    stood, tombstones removed (delete.retention.ms passed)."""
    last = {key: offset for offset, (key, _) in enumerate(changelog)}
    return [(key, value) for offset, (key, value) in enumerate(changelog) if last[key] == offset and value is not None]


def normalized(out: list) -> list:
    """Outputs as a purge may change them: a cancel of an event forgotten long ago is refused as not
    found (billing/retention.py) rather than as past its window."""
    def one(fact):
        if isinstance(fact, DeadLetter) and fact.reason_code in ("meter_event_not_found",
                                                                "meter_event_cancel_window_passed",
                                                                "meter_event_not_in_partition"):
            return ("cancel refused", fact.offset)
        return fact
    return [one(fact) for fact in out]


# --- months of usage, generated -------------------------------------------------------------------

START_MS = w.START_MS
CLOCK = "clock_p"
SETUP = [w.clock_created(CLOCK, START_MS), TimeTicked(now_ms=START_MS),
         *w.customer_setup("cus_a", None, grant_minor=10**6), *w.customer_setup("cus_b", None, grant_minor=500),
         *w.customer_setup("cus_c", CLOCK, grant_minor=10**6)]
IDENTIFIERS = [f"e{n}" for n in range(5)]

# One step: the wall clock moves on, then one fact at the new time.
STEP = st.tuples(
    st.sampled_from([0, MINUTE_MS, HOUR_MS, 6 * HOUR_MS, DAY_MS, 5 * DAY_MS, 20 * DAY_MS]),
    st.sampled_from(["event", "event", "event", "clock_event", "cancel", "tick", "advance"]),
    st.sampled_from(["cus_a", "cus_b"]),
    st.sampled_from(IDENTIFIERS),
    st.sampled_from([0, HOUR_MS, 2 * DAY_MS, 34 * DAY_MS, 35 * DAY_MS, 35 * DAY_MS + 1]),  # lateness
    st.booleans(),  # a cancel names its customer, an advance is long
)


def log_of(steps: list) -> list[list]:
    """The facts of `steps`, one list per step (batch boundaries are drawn between them)."""
    wall_ms, clock_ms, facts = START_MS, START_MS, []
    for advance_ms, kind, customer, identifier, lateness_ms, flag in steps:
        wall_ms += advance_ms
        if kind == "event":
            facts.append([w.meter_event(customer, "7", identifier, wall_ms - lateness_ms, received_at_ms=wall_ms)])
        elif kind == "clock_event":
            facts.append([w.meter_event("cus_c", "3", identifier, clock_ms - lateness_ms, received_at_ms=wall_ms)])
        elif kind == "cancel":
            facts.append([MeterEventCanceled(event_name="hypernian_input_tokens", identifier=identifier,
                                             customer_id=customer if flag else None, received_at_ms=wall_ms)])
        elif kind == "tick":
            facts.append([TimeTicked(now_ms=wall_ms)])
        else:
            clock_ms += 30 * DAY_MS if flag else DAY_MS
            facts.append([w.clock_advanced(CLOCK, clock_ms)])
    return facts


def run_both(tmp_path, steps: list, batch_ends: set[int]) -> tuple[WorkerState, WorkerState, list, list]:
    purging = WorkerState(tmp_path / "on", Retention(WINDOW_MS, 0, GRACE_MS))
    keeping = WorkerState(tmp_path / "off", None)
    outs = {id(purging): [], id(keeping): []}
    for worker in (purging, keeping):
        outs[id(worker)].extend(worker.fold(SETUP))
        batch: list = []
        for index, facts in enumerate(log_of(steps)):
            batch.extend(facts)
            if index in batch_ends:
                outs[id(worker)].extend(worker.fold(batch))
                batch = []
        outs[id(worker)].extend(worker.fold(batch))
        outs[id(worker)].extend(worker.fold([]) + worker.fold([]))  # the last batch's time durable, purged by
    return purging, keeping, outs[id(purging)], outs[id(keeping)]


# Five months of one event a day per customer, each with an identifier of its own.
LONG_RUN = [(DAY_MS if customer == "cus_a" else 0, "event", customer, f"d{day}", 0, True)
            for day in range(1, 151) for customer in ("cus_a", "cus_b")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=60), batch_ends=st.sets(st.integers(0, 60), max_size=20))
@example(steps=LONG_RUN, batch_ends=set(range(0, 300, 3)))
# A test clock passes 60 days in a moment: its customer's bucket is past lateness at once, but a cancel
# of the event in it may still come for 24 hours (wall clock), and must find the bucket.
@example(steps=[(0, "clock_event", "cus_a", "e1", 0, True), (0, "advance", "cus_a", "e1", 0, True),
                (0, "advance", "cus_a", "e1", 0, True), (6 * HOUR_MS, "event", "cus_a", "e2", 0, True),
                (6 * HOUR_MS, "event", "cus_a", "e3", 0, True), *[(2 * HOUR_MS, "event", "cus_b", identifier, 0, True)
                                                                 for identifier in ("e1", "e2", "e3")],
                (HOUR_MS, "cancel", "cus_a", "e1", 0, False)], batch_ends=set(range(10)))
@example(steps=[(0, "event", "cus_a", "e1", 0, True), (20 * DAY_MS, "advance", "cus_a", "e1", 0, True),
                (0, "clock_event", "cus_a", "e2", 0, True), *[(5 * DAY_MS, "tick", "cus_a", "e1", 0, True)] * 8,
                (0, "event", "cus_a", "e1", 0, True), (0, "advance", "cus_a", "e1", 0, True),
                (0, "advance", "cus_a", "e1", 0, True), (0, "clock_event", "cus_a", "e2", 0, True)],
         batch_ends={0, 1, 2, 5, 9, 10, 11, 12})
def test_purging_changes_no_output_and_a_restore_reads_back_the_purged_store(tmp_path_factory, steps, batch_ends):
    tmp_path = tmp_path_factory.mktemp("purge")
    purging, keeping, purged_out, kept_out = run_both(tmp_path, steps, batch_ends)
    # the same invoices, balances, buckets and dead letters, fact by fact, in the same order
    assert normalized(purged_out) == normalized(kept_out)
    # the purged store holds no record the kept one does not, with the same values
    kept = keeping.stored()
    purged_store = purging.stored()
    assert all(kept[key] == value for key, value in purged_store.items() if not key.startswith(b"\x00expiry:"))
    # and a restore from its changelog, as written and as compaction may leave it, reads it back
    assert restored(tmp_path / "restored", purging.changelog) == purged_store
    assert restored(tmp_path / "restored-compacted", compacted(purging.changelog)) == purged_store


def test_five_months_of_daily_usage_keep_about_35_days_of_dedupe_records_and_37_of_buckets(tmp_path):
    purging, keeping, purged_out, kept_out = run_both(tmp_path, LONG_RUN, set(range(0, 300, 3)))
    assert normalized(purged_out) == normalized(kept_out)
    kept, purged_store = keeping.stored(), purging.stored()

    def days_of(store, prefix):
        return sorted({(int(key.rsplit(b"\x1f", 1)[1]) - START_MS) // DAY_MS if prefix == b"b"
                       else int(key.split(b"\x1fd")[1]) for key in store if key.startswith(prefix)})

    assert days_of(kept, b"b") == days_of(kept, b"s") == list(range(1, 151))  # nothing forgotten
    # The last receipt is day 150, the floor an hour before. Seen records are forgotten past 35 days
    # of it; buckets past 37 days, a minute and the grace hour, once a cancel window (a day) has
    # passed since they were found so. Each step waits on time as of a batch earlier, and an index
    # covers a batch: its records go with the last of them; a batch spans 1.5 days here (three 1.5-day
    # lags, against well under a second in a worker under load).
    seen_days, bucket_days = days_of(purged_store, b"s"), days_of(purged_store, b"b")
    assert seen_days == list(range(seen_days[0], 151)) and 150 - 35 - 2 <= seen_days[0] <= 150 - 35
    assert bucket_days == list(range(bucket_days[0], 151)) and 150 - 37 - 1 - 3 * 1.5 - 1 <= bucket_days[0] <= 150 - 37
    assert purging.forgotten_seen == seen_days[0] - 1  # a record per identifier, both customers in it
    assert purging.forgotten_buckets == 2 * (bucket_days[0] - 1)


def test_a_retry_inside_the_dedupe_window_of_an_event_long_past_is_still_deduped(tmp_path):
    """The record of an event received at r is kept while a retry may come: one received at
    r + window (the last instant it is a duplicate), after usage moved the floor on to it, counts nothing."""
    purging = WorkerState(tmp_path / "on", Retention(WINDOW_MS, 0, GRACE_MS))
    purging.fold(SETUP)
    first_ms = START_MS + DAY_MS
    purging.fold([w.meter_event("cus_a", "7", "retried", first_ms)])
    for day in range(2, 37):  # daily usage of others up to the retry's receipt
        purging.fold([w.meter_event("cus_b", "1", f"d{day}", START_MS + day * DAY_MS)])
    retry_ms = first_ms + WINDOW_MS
    purging.fold([w.meter_event("cus_b", "1", "late", retry_ms)])  # the latest receipt: the retry's own
    out = purging.fold([w.meter_event("cus_a", "7", "retried", retry_ms - HOUR_MS, received_at_ms=retry_ms)])
    out += purging.fold([])
    assert [f for f in out if isinstance(f, UsageBucketUpdated)] == []  # counted nothing
    # one millisecond later it is a new event with a reused identifier, and counts
    out = purging.fold([w.meter_event("cus_a", "7", "retried", retry_ms - HOUR_MS, received_at_ms=retry_ms + 1)])
    (bucket,) = [f for f in out if isinstance(f, UsageBucketUpdated)]
    assert (bucket.customer_id, bucket.bucket_start_ms, bucket.value, bucket.event_count) == \
        ("cus_a", retry_ms - HOUR_MS, Decimal(7), 1)


def test_a_frozen_test_clock_keeps_its_customers_buckets_and_an_advanced_one_lets_them_go(tmp_path):
    purging = WorkerState(tmp_path / "on", Retention(WINDOW_MS, 0, GRACE_MS))
    purging.fold(SETUP)
    purging.fold([w.meter_event("cus_c", "3", "c1", START_MS, received_at_ms=START_MS)])
    for day in range(1, 100):  # the wall clock moves on by months; the test clock stays frozen
        purging.fold([w.meter_event("cus_a", "1", f"a{day}", START_MS + day * DAY_MS)])
    purging.fold([])
    clock_buckets = [key for key in purging.stored() if key.startswith(b"bcus_c")]
    assert len(clock_buckets) == 1
    assert purging.forgotten_buckets > 0  # cus_a's, on the wall clock
    purging.fold([w.clock_advanced(CLOCK, START_MS + 40 * DAY_MS)])  # past lateness on its clock: armed
    purging.fold([])
    purging.fold([])
    assert [key for key in purging.stored() if key.startswith(b"bcus_c")] == clock_buckets
    assert any(key.startswith(ARMED_INDEX) for key in purging.stored())
    wall_ms = START_MS + 100 * DAY_MS
    purging.fold([w.meter_event("cus_a", "1", "later", wall_ms + DAY_MS + 2 * HOUR_MS)])  # a cancel window later
    purging.fold([])
    purging.fold([])
    assert [key for key in purging.stored() if key.startswith(b"bcus_c")] == []


def test_the_index_keys_sort_by_their_expiry_time():
    assert len({SEEN_INDEX, BUCKET_INDEX, ARMED_INDEX}) == 3
    keys = sorted(SEEN_INDEX + b"%013d" % ms + b":x" for ms in (5, 40, 1_767_225_600_000))
    assert [int(key[len(SEEN_INDEX):len(SEEN_INDEX) + 13]) for key in keys] == [5, 40, 1_767_225_600_000]


def test_a_large_batch_s_index_records_each_fit_in_a_kafka_message_and_together_list_every_record():
    """A 40k-event batch once made one index record of 2 MB: the broker refused it (MSG_SIZE_TOO_LARGE)
    and the worker stopped (tests/integration/streams/test_broker_failure.py found it)."""
    import pickle

    from billing.meters import MeterReading
    from billing.usage import SeenEvent
    from streams.retention import packs_and_index

    seen_dirty = {("hypernian_input_tokens", f"identifier-{n:08d}-{'x' * 40}"):
                  {f"cus_{n % 5000}": SeenEvent(n, "mtr_in", MeterReading(START_MS, START_MS + n, f"i{n}", Decimal(1)))}
                  for n in range(40_000)}
    seen_records = [(records.seen_key(key), records.dump_seen(value)) for key, value in seen_dirty.items()]
    buckets = [(f"cus_{n % 5000}", "mtr_in", START_MS + n * 1000) for n in range(40_000)]  # 11 hours
    packs, index = packs_and_index(b"incarnation:7:3", seen_dirty, seen_records, buckets, lambda customer: None,
                                   START_MS)
    assert max(len(key) + len(value) for key, value in index) < 512 * 1024
    seen_indexes = [pickle.loads(value) for key, value in index if key.startswith(SEEN_INDEX)]
    assert sorted(key for _, keys, _ in seen_indexes for key in keys) == sorted(seen_dirty)
    assert sorted(pack for _, _, packs_listed in seen_indexes for pack in packs_listed) == sorted(k for k, _, _ in packs)
    assert sorted(record for _, value, _ in packs for record in pickle.loads(value)) == sorted(seen_records)
    # each lists its pack's records, and the latest receipt among them
    for received_ms, keys, (pack_key,) in seen_indexes:
        assert received_ms == max(seen_dirty[key][next(iter(seen_dirty[key]))].reading.received_at_ms for key in keys)
    bucket_indexes = [pickle.loads(value) for key, value in index if key.startswith(BUCKET_INDEX)]
    assert sorted(key for _, keys in bucket_indexes for key in keys) == sorted(buckets)


def test_a_backlog_batch_of_many_days_is_indexed_day_by_day():
    """A worker catching up on months folds them in one batch: its index records must not wait for
    the batch's latest record (all of it would be kept until then)."""
    import pickle

    from billing.meters import MeterReading
    from billing.usage import SeenEvent
    from streams.retention import packs_and_index

    seen_dirty = {("hypernian_input_tokens", f"d{day}"):
                  {"cus_a": SeenEvent(day, "mtr_in", MeterReading(START_MS + day * DAY_MS, START_MS + day * DAY_MS + 5,
                                                                  f"d{day}", Decimal(1)))} for day in range(90)}
    seen_records = [(records.seen_key(key), records.dump_seen(value)) for key, value in seen_dirty.items()]
    buckets = [("cus_a", "mtr_in", START_MS + day * DAY_MS) for day in range(90)]
    packs, index = packs_and_index(b"i:1:0", seen_dirty, seen_records, buckets, lambda customer: None, START_MS)
    seen_times = sorted(pickle.loads(value)[0] for key, value in index if key.startswith(SEEN_INDEX))
    assert seen_times == [START_MS + day * DAY_MS + 5 for day in range(90)]
    bucket_minutes = sorted(int(key[len(BUCKET_INDEX) + 1:len(BUCKET_INDEX) + 14]) for key, _ in index
                            if key.startswith(BUCKET_INDEX))
    assert bucket_minutes == [START_MS + day * DAY_MS for day in range(90)]
    assert len(packs) == 90

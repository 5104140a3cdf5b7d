"""The worker's batch pipeline: read, decode, group by partition, fold (billing/partition.py), emit,
write state, one batch after another (streams/worker.py wires it into Faust; the design and the
exactly-once argument are in its docstring)."""


from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rocksdict import WriteBatch

from billing.customer import CustomerState, FoldConfig
from billing.facts import MeterEventCanceled, MeterEventRecorded
from billing.meter_events import is_received_within_bound, receipt_refusal
from billing.partition import UNENCODABLE_OUTPUT, PartitionProcessor, PartitionState, output_key, output_topic
from billing.usage import UsageLedger
from drawdown.settings import Settings
from streams import faust_patches
from streams import records, retention
from streams.catalog_follower import CatalogBehind, CatalogFollower
from streams.output import OutputProducer
from streams.source import SourceReader

log = logging.getLogger("drawdown.worker")

# A batch (under backlog) ends at BATCH_MAX_EVENTS facts or once it touches BATCH_MAX_CUSTOMERS
# customers (give or take a read chunk). Each touched customer costs a record write, a live balance
# and its fact per batch (~35 us), so the more events per customer a batch folds the cheaper each
# event. What a batch holds in memory (decoded facts, a dedupe record per event, touched buckets
# and customers, their snapshots, twice over while the previous batch completes) is ~6.5 KiB per
# fact in the 100k-customer backfill (measured): 100k facts peaked at 1.2 GiB there, 40k at
# ~890 MiB. With 5k customers, 40k facts per batch give ~40k events/s, 100k ~45k.
BATCH_MAX_EVENTS = 40_000
BATCH_MAX_CUSTOMERS = 10_000
# ... and gather for at least this long: with many customers each touched record is written about
# once per event either way, so a short window costs little and keeps freshness (p99 < 1 s).
BATCH_WINDOW_S = 0.05
CATALOG_REFRESH_S = 5.0
CATALOG_PATIENCE_S = 120.0  # a catalog unreadable this long (not a leader moving) stops the worker
YIELD_EVERY_FACTS = 1_000  # the fold yields this often, so that acks are served and state written
# Records kept decoded per partition between batches (beyond those a batch touches): what bounds
# the worker's memory (x 6 partitions). A customer costs a few KiB decoded and ~20 us to load again; a seen event
# is read once per event and rarely again; a live minute bucket is hot for a minute.
CACHED_CUSTOMERS = 5_000
CACHED_SEEN = 10_000
CACHED_BUCKETS = 20_000
FULL_COLLECTION_EVERY_S = 600.0  # see BatchPipeline._freeze_survivors
RESEEK_AFTER_S = 15.0  # a seek whose offset has not come back by then is issued again


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One batch's changed records of one table partition: pickled, ready for store and changelog."""

    table: Any
    partition: int
    db: Any  # the partition's rocksdict (Faust's store)
    changelog_topic: str
    items: list[tuple[bytes, bytes]]  # for the local store
    changelog_items: list[tuple[bytes, bytes | None]] | None = None  # for the changelog, when not `items`
    deletes: list[bytes] = ()  # keys the local store forgets (their tombstones are in changelog_items)


def unbroken_runs(messages: list, next_offsets: dict[int, int],
                  resume_offset: Callable[[int], int]) -> tuple[dict[int, list], dict[int, tuple[int, int]]]:
    """Split confluent-kafka messages per partition into the run that continues from the
    partition's next offset (`next_offsets`, moved on in place; a partition not in it starts at
    `resume_offset(partition)`), offsets already passed included (re-reads), and where a partition
    broke off: partition -> (the offset wanted, the offset got instead). What follows a gap is
    left out: it is read again after the missing offset."""
    by_partition: dict[int, list] = defaultdict(list)
    for message in messages:
        by_partition[message.partition()].append(message)
    runs: dict[int, list] = {}
    gaps: dict[int, tuple[int, int]] = {}
    for partition, batch in by_partition.items():
        want = next_offsets.get(partition)
        if want is None:
            want = resume_offset(partition)
        kept = runs[partition] = []
        for message in batch:
            offset = message.offset()
            if offset > want:
                gaps[partition] = (want, offset)
                break
            if offset == want:
                want += 1
            kept.append(message)
        next_offsets[partition] = want
    return runs, gaps


@dataclass(frozen=True, slots=True)
class Retention:
    """How the worker's usage state is purged (streams/retention.py); None: it is not."""

    dedupe_window_ms: int
    receipt_bound_ms: int
    grace_period_ms: int


def retention_of(settings: Settings) -> Retention | None:
    if not settings.purge_state:
        return None
    return Retention(settings.dedupe_window_seconds * 1000, settings.receipt_bound_seconds * 1000,
                     settings.grace_period_seconds * 1000)


def usage_state_writes(usage_db: Any, seen: records.BatchCache, buckets: records.BatchCache,
                       customers: records.BatchCache, state: PartitionState, batch_id: bytes,
                       retention_rule: Retention | None, clocks_scanned: dict[str, int] | None = None
                       ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes | None]], list[bytes],
                                  retention.Purge]:
    """One partition's usage records of one batch: (local puts, changelog records (None: a tombstone),
    local deletes, what was purged). The batch's changed records, its index records, and what the
    purge forgets (judged before the batch's changes are taken: it never forgets a changed record).
    Seen events go to the changelog in packs (records.packed) under keys no other pack has (`batch_id`)."""
    purged = retention.Purge() if retention_rule is None else retention.purge(
        usage_db, seen, buckets, state, dedupe_window_ms=retention_rule.dedupe_window_ms,
        receipt_bound_ms=retention_rule.receipt_bound_ms, grace_period_ms=retention_rule.grace_period_ms,
        clocks_scanned=clocks_scanned)
    seen_dirty, bucket_keys = seen.dirty, list(buckets.dirty)
    seen_records, bucket_records = seen.take_dirty(), buckets.take_dirty()
    if retention_rule is None:
        packs, index = records.packs_of(seen_records, batch_id), []
    else:
        packs, index = retention.packs_and_index(batch_id, seen_dirty, seen_records, bucket_keys, _clock_of(customers),
                                                 state.latest_received_ms)
    return (seen_records + bucket_records + index + purged.puts,
            [(key, value) for key, value, _ in packs] + bucket_records + index + purged.changelog, purged.deletes, purged)


def _clock_of(customers: records.BatchCache) -> Callable[[str], str | None]:
    def clock_of(customer_id: str) -> str | None:
        state = customers.get(customer_id)
        return None if state is None else state.test_clock_id
    return clock_of


def fold_config(settings: Settings) -> FoldConfig:
    return FoldConfig(grace_period_ms=settings.grace_period_seconds * 1000,
                      live_balance_interval_ms=settings.live_balance_interval_ms,
                      low_balance_thresholds_minor=tuple(settings.low_balance_thresholds_minor))


class BatchPipeline:
    """Everything one worker process holds besides Faust: codec, catalog, per-partition processors."""

    def __init__(self, app: Any, settings: Settings, customers_table: Any, usage_table: Any) -> None:
        from schemas.codec import FactCodec

        self.app = app
        self.settings = settings
        self.codec = FactCodec(settings.schema_registry_url or None)
        self.catalog_follower = CatalogFollower(settings, self.codec)
        self.customers_table = customers_table
        self.usage_table = usage_table
        self.config = fold_config(settings)
        self.receipt_bound_ms = settings.receipt_bound_seconds * 1000  # 0: off (see _decode)
        self.retention = retention_of(settings)
        self.source_topic = settings.topic("customer-facts")
        self.topic_names = {name: settings.topic(name) for name in
                            ("invoices", "credit-balance-transactions", "usage-buckets", "live-balances",
                             "dead-letters")}
        self.output = OutputProducer(settings)
        self.processors: dict[int, PartitionProcessor] = {}
        self.caches: dict[int, tuple[records.BatchCache, records.BatchCache, records.BatchCache]] = {}
        self.batches = 0
        self.facts_in = 0
        self.clocks_scanned: dict[int, dict[str, int]] = {}  # partition -> test clock -> time at its last purge scan
        self.forgotten_seen = 0  # usage records purged (streams/retention.py), for the ready page
        self.forgotten_buckets = 0
        self.incarnation = uuid.uuid4().hex.encode()  # this process: keeps its changelog packs' keys unique
        self.ready = False
        self.source = SourceReader(settings, self.source_topic)
        # Held while a batch is folded and by rebalances: a batch never straddles two owners.
        self.batch_lock = asyncio.Lock()
        self.seeking: dict[int, int] = {}  # partition -> offset we seeked back to after a gap
        self.seeked_at: dict[int, float] = {}  # partition -> when (monotonic s) we last seeked it
        # partition -> the next offset to fold: every offset below it, from the durable offset on,
        # has been folded in this assignment (a fact re-read may lie below the state's applied offset)
        self.next_offsets: dict[int, int] = {}
        self.hooks_installed = False
        self.gaps = 0
        self.phase_seconds: dict[str, float] = defaultdict(float)  # where batch time goes (ready page)
        self.completion: asyncio.Future | None = None  # the previous batch's completion (see _complete)
        self.catalog_refresh: asyncio.Future | None = None  # a background catalog read (see _follow_catalog)
        # Recent batches: produce time of their oldest fact -> their outputs sent (ready page).
        self.batch_lags_ms: deque[float] = deque(maxlen=500)
        gc.callbacks.append(self._time_gc)
        self._gc_started = 0.0
        self._full_collection_at = time.monotonic()

    def _time_gc(self, phase: str, info: dict) -> None:
        """Collections' time per generation, on the ready page (pauses show in freshness)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.phase_seconds[f"gc{info['generation']}"] += time.perf_counter() - self._gc_started

    # --- per partition -----------------------------------------------------------------------

    def forget_partitions(self) -> None:
        """After a rebalance: rebuild each partition's index from its table on next use."""
        self.processors.clear()
        self.caches.clear()
        self.clocks_scanned.clear()
        self.seeking.clear()
        self.seeked_at.clear()
        self.next_offsets.clear()

    def install_hooks(self) -> None:
        """Keep Faust's consumer off the source topic (SourceReader reads it) and decide where
        each source partition resumes after Faust's recovery. Before Faust's fetch loop starts:
        on the first rebalance."""
        if self.hooks_installed:
            return
        self.hooks_installed = True
        faust_patches.keep_consumer_off_topic(self.app.consumer, self.source_topic, after_seek=self.assign_source)

    async def release_source(self) -> None:
        """Before a rebalance: finish the batch in hand (folded, completed) and stop reading."""
        async with self.batch_lock:
            await self.drain()
            self.source.unassign()
            self.forget_partitions()

    async def assign_source(self) -> None:
        """After an assignment (tables recovered): every source partition we own is read again
        from its state's durable_offset + 1, whatever offset Faust committed. Facts re-read that
        the state has applied change nothing (every record guards its own offset)."""
        async with self.batch_lock:
            await self.drain()
            self.forget_partitions()
            resume = {tp.partition: self._resume_offset(tp.partition) for tp in self.app.consumer.assignment()
                      if tp.topic == self.source_topic}
            self.source.assign(resume)
        log.info("assigned: reading each partition from its durable offset + 1: %s", resume)

    async def read_source(self) -> None:
        """The worker's loop: batches from the source partitions, folded one after another."""
        while True:
            started = time.perf_counter()
            generation, messages = await self.source.batch(BATCH_MAX_EVENTS, BATCH_WINDOW_S, BATCH_MAX_CUSTOMERS)
            self.phase_seconds["read_and_idle"] += time.perf_counter() - started
            async with self.batch_lock:
                if generation != self.source.generation:
                    continue  # read before a rebalance: re-read from the durable offsets by their owner
                gc.disable()  # see _freeze_survivors
                try:
                    await self.process_batch(messages)
                finally:
                    del messages
                    self._freeze_survivors()
                    gc.enable()

    def _freeze_survivors(self) -> None:
        """The cyclic collector stays off while a batch is folded, and what survives the batch
        (cached records, indexes) is then moved out of its generations (gc.freeze): the fold's
        objects are acyclic and freed by reference counting, and young collections re-walking the
        batch's decoded facts and new records cost ~10% of the worker's time (measured). Frozen
        objects are still freed by reference counting; only cyclic garbage among them would wait,
        so now and then everything is unfrozen and collected in full."""
        now = time.monotonic()
        if now - self._full_collection_at >= FULL_COLLECTION_EVERY_S:
            self._full_collection_at = now
            gc.unfreeze()
            started = time.perf_counter()
            freed = gc.collect()
            log.info("full collection: %d objects freed in %.3f s", freed, time.perf_counter() - started)
        gc.freeze()

    def _resume_offset(self, partition: int) -> int:
        raw = self._db(self.customers_table, partition).get(records.PARTITION_KEY)
        state = records.loads(raw) if raw is not None else PartitionState()
        return getattr(state, "durable_offset", -1) + 1

    def _seek(self, partition: int, offset: int) -> None:
        self.seeking[partition] = offset
        self.seeked_at[partition] = time.monotonic()
        self.source.seek(partition, offset)

    def _db(self, table: Any, partition: int) -> Any:
        return faust_patches.partition_db(table, partition)

    def _processor(self, partition: int) -> PartitionProcessor:
        processor = self.processors.get(partition)
        if processor is None:
            customers_db = self._db(self.customers_table, partition)
            usage_db = self._db(self.usage_table, partition)
            customers = records.BatchCache(customers_db, records.customer_key, max_entries=CACHED_CUSTOMERS)
            seen = records.BatchCache(usage_db, records.seen_key, max_entries=CACHED_SEEN,
                                      dump=records.dump_seen, load=records.load_seen)
            buckets = records.BatchCache(usage_db, records.bucket_key, max_entries=CACHED_BUCKETS,
                                         dump=records.dump_bucket, load=records.load_bucket)
            raw = customers_db.get(records.PARTITION_KEY)
            # reading resumes at the durable offset + 1: time as it stood there
            partition_state = records.loads(raw).resumed() if raw is not None else PartitionState()
            processor = PartitionProcessor(
                topic=self.source_topic, partition=partition, customers=customers,
                ledger=UsageLedger(seen, buckets, self.settings.dedupe_window_seconds * 1000),
                partition_state=partition_state, catalog=self.catalog_follower.catalog, config=self.config,
                existing_customers=self._stored_customers(customers_db), check_output=self.codec.encode)
            self.processors[partition] = processor
            self.caches[partition] = (customers, seen, buckets)
        processor.catalog = self.catalog_follower.catalog
        return processor

    @staticmethod
    def _stored_customers(db: Any) -> list[CustomerState]:
        """Every customer state in this partition's store (to build the due-time index)."""
        found = []
        for key, value in db.items():
            if key == records.PARTITION_KEY or key.startswith(b"__faust"):
                continue
            # Anything else here is a customer record: one we cannot read must stop the worker
            # (skipped, its customer would never be invoiced), never be passed over.
            state = records.loads(value)
            if not isinstance(state, CustomerState):
                raise TypeError(f"customers store: key {key!r} holds a {type(state).__name__}, not a CustomerState")
            found.append(state)
        return found

    # --- one batch ---------------------------------------------------------------------------

    def _without_gaps(self, messages: list) -> dict[int, list]:
        """Per partition, the messages to fold now (see unbroken_runs). The reader is assigned at
        exact offsets, so a gap means facts we never got (an offset deleted before it was folded,
        or a fetch gone wrong): we seek back to the missing offset and skip the rest until it
        comes (re-reads are harmless: every record ignores offsets it has applied)."""
        runs, gaps = unbroken_runs(messages, self.next_offsets, self._resume_offset)
        for partition, run in runs.items():
            if run:
                self.seeking.pop(partition, None)
        for partition, (want, got) in gaps.items():
            if self.seeking.get(partition) != want:
                log.warning("partition %s: got offset %s, expected %s: re-reading from %s", partition, got, want, want)
                self._seek(partition, want)
                self.gaps += 1
            elif time.monotonic() - self.seeked_at.get(partition, 0.0) > RESEEK_AFTER_S:
                log.warning("partition %s: offset %s still not re-read: seeking again", partition, want)
                self._seek(partition, want)
        return runs

    async def process_batch(self, messages: list) -> None:
        """Fold a batch, then hand its completion (acks, state writes, durability) to a background
        task that moves on while the next batch is gathered and folded."""
        clock = time.perf_counter
        started = clock()
        runs = self._without_gaps(messages)
        # The oldest fact's produce time (each partition's run is in offset order): the batch's lag.
        oldest_ms = min((run[0].timestamp()[1] for run in runs.values() if run), default=None)
        del messages[:]  # (runs holds them now, and lets go of each partition's once folded)
        if runs:
            await self._follow_catalog(False)  # the background refresh: started or taken in
        decode_seconds = 0.0
        outputs: list = []
        output_partitions: list[tuple[int, int]] = []  # (partition, index of its first output)
        folded = 0
        partitions = [partition for partition, run in runs.items() if run]
        for partition in partitions:
            run = runs.pop(partition)
            output_partitions.append((partition, len(outputs)))
            processor = self._processor(partition)
            process, meter_event = processor.process, processor.meter_event
            # Decoded a chunk at a time and folded at once: the batch's decoded facts never pile
            # up (memory), and each is folded while still in the CPU's caches.
            for start in range(0, len(run), YIELD_EVERY_FACTS):
                decode_started = clock()
                items, names_unknown = self._decode(run[start:start + YIELD_EVERY_FACTS])
                decode_seconds += clock() - decode_started
                if names_unknown:  # judged by the catalog as it is now, not as we last read it
                    await self._follow_catalog(True)
                    processor.catalog = self.catalog_follower.catalog
                for offset, value, key, fact, error in items:
                    if type(fact) is MeterEventRecorded and error is None:  # process() would do this
                        emitted = meter_event(offset, fact, value)
                    else:
                        emitted = process(offset, fact, value, key, error)
                    if emitted:
                        outputs.extend(emitted)
                folded += len(items)
                items = fact = value = None  # (the loop variables would keep the last fact alive)
                await asyncio.sleep(0)  # let the previous batch's completion move on
            outputs.extend(processor.finish_batch())
            run = None
        decoded_at = started + decode_seconds
        folded_at = clock()
        # The previous batch's completion ran while we folded: wait for the rest of it. Its state
        # is then in the local stores, so this batch's snapshot may evict what it wrote.
        await self.drain()
        waited_at = clock()
        # Snapshot this batch's state records now, as bytes: the next batch's fold mutates the
        # records in place while this one's writes wait for the broker.
        state_records = self._take_state_records(partitions)
        durable_offsets = {partition: self.next_offsets.get(partition, 0) - 1 for partition in partitions}
        # time as of those offsets: the state of a later batch's fold is what the next record says
        times_at = {partition: (self.processors[partition].state.now_ms, dict(self.processors[partition].state.clocks),
                                self.processors[partition].state.latest_received_ms)
                    for partition in partitions}
        encode, topic_names, produce = self.codec.encode, self.topic_names, self.output.produce
        for index, output in enumerate(outputs):
            try:
                value = encode(output)
            except Exception as error:  # noqa: BLE001 - the fold checks what it derives; never die on one
                output = self._unencodable_output(output, error, index, output_partitions)
                value = encode(output)
            produce(topic_names[output_topic(output)], value, output_key(output).encode())
        del outputs
        produced_at = clock()
        if oldest_ms is not None:
            self.batch_lags_ms.append(time.time() * 1000 - oldest_ms)
        self.completion = asyncio.ensure_future(self._complete(state_records, durable_offsets, times_at))
        self.batches += 1
        self.facts_in += folded
        phases = self.phase_seconds
        phases["decode"] += decoded_at - started
        phases["fold"] += folded_at - decoded_at
        phases["wait_previous"] += waited_at - folded_at
        phases["snapshot_emit"] += produced_at - waited_at

    def _unencodable_output(self, output: object, error: Exception, index: int,
                            output_partitions: list[tuple[int, int]]) -> object:
        """A dead letter in place of a derived fact that cannot be encoded (the fold checks the facts
        it derives; this is the last guard, for those it cannot, e.g. a live balance)."""
        partition = next(partition for partition, first in reversed(output_partitions) if first <= index)
        processor = self.processors[partition]
        log.error("partition %s: %s cannot be encoded (%s): dead-lettered", partition, type(output).__name__, error)
        return processor.dead_letter(processor.state.applied_offset, b"", UNENCODABLE_OUTPUT,
                                      f"{type(output).__name__}: {type(error).__name__}: {error}",
                                      getattr(output, "customer_id", None), processor.state.now_ms)

    async def drain(self) -> None:
        """Wait until the batch in completion (if any) is durable and acknowledged."""
        completion, self.completion = self.completion, None
        if completion is not None:
            await completion

    def _decode(self, messages: list) -> tuple[list, bool]:
        """(offset, value, key, fact, error) per message; an undecodable one carries its error
        (dead-lettered by the fold), a schema registry outage raises (retry: the bytes may be
        fine). So does a meter event or cancel whose received_at the receipt rule refuses (judged
        by the record's timestamp, the broker's append time; replay/usage.py scan judges it the
        same way). And whether a fact names a meter or price the catalog does not know yet."""
        decode = self.codec.decode
        catalog = self.catalog_follower.catalog
        meter_names = catalog.meters_by_event_name
        bound_ms = self.receipt_bound_ms
        names_unknown = False
        items = []
        append = items.append
        for message in messages:
            value = message.value() or b""
            try:
                fact = decode(value)
            except Exception as error:  # UndecodableFact (SchemaRegistryUnavailable: crash, retry)
                if getattr(error, "reason_code", "schema_registry_unavailable") == "schema_registry_unavailable":
                    raise
                append((message.offset(), value, message.key(), None, error))
                continue
            fact_class = type(fact)
            if bound_ms and (fact_class is MeterEventRecorded or fact_class is MeterEventCanceled):
                appended_at_ms = message.timestamp()[1]
                if not is_received_within_bound(fact.received_at_ms, appended_at_ms, bound_ms):
                    append((message.offset(), value, message.key(), None,
                            receipt_refusal(fact.received_at_ms, appended_at_ms, bound_ms)))
                    continue
            append((message.offset(), value, message.key(), fact, None))
            if fact_class is MeterEventRecorded:
                if fact.event_name not in meter_names:
                    names_unknown = True
            elif not names_unknown and _names_unknown_price(fact, catalog):
                names_unknown = True
        return items, names_unknown

    def _take_state_records(self, partitions: list[int]) -> list[StateWrite]:
        """Every record this batch changed, pickled, with the store and changelog it goes to."""
        taken = []
        for partition in partitions:
            customers, seen, buckets = self.caches[partition]
            customer_records = customers.take_dirty()
            customer_records.append((records.PARTITION_KEY, records.dumps(self.processors[partition].state)))
            taken.append(StateWrite(self.customers_table, partition, self._db(self.customers_table, partition),
                                    self.customers_table.changelog_topic.get_topic_name(), customer_records))
            usage_db = self._db(self.usage_table, partition)
            started = time.perf_counter()
            puts, changelog, deletes, purged = usage_state_writes(
                usage_db, seen, buckets, customers, self.processors[partition].state,
                b"%s:%d:%d" % (self.incarnation, self.batches, partition), self.retention,
                self.clocks_scanned.setdefault(partition, {}))
            self.phase_seconds["purge_and_index"] += time.perf_counter() - started
            self.forgotten_seen += purged.forgotten_seen
            self.forgotten_buckets += purged.forgotten_buckets
            taken.append(StateWrite(self.usage_table, partition, usage_db,
                                    self.usage_table.changelog_topic.get_topic_name(), puts, changelog, deletes))
        return taken

    async def _complete(self, state_records: list[StateWrite], durable_offsets: dict[int, int],
                        times_at: dict[int, tuple[int, dict[str, int], int]]) -> None:
        """One batch, after its fold: (1) its output facts acknowledged by the broker, and only then
        (2) its state records sent to the changelogs and acknowledged, and only then (3) written to
        the local stores; then (4) it counts as durable (the partition's next record says so; the
        monitoring group is told). The local store never runs ahead of its changelog: a record
        written locally but lost from the changelog would be lost for good when another worker
        restores the partition, since the facts that made it are never read again. This task moves
        on whenever the next batch's fold yields (the acks arrive meanwhile). A failure here kills
        the worker: the batch is re-read after a restart."""
        try:
            output = self.output
            await output.acked()
            # The next batch's fold reads none of these keys from the stores meanwhile: what this
            # batch changed stays in the caches (BatchCache.take_dirty), nothing else changes here.
            started = time.perf_counter()
            produce = output.produce
            for write in state_records:
                topic, partition = write.changelog_topic, write.partition
                for key, value in write.items if write.changelog_items is None else write.changelog_items:
                    produce(topic, value, key, partition)
            self.phase_seconds["state_write"] += time.perf_counter() - started
            await output.acked()
            started = time.perf_counter()
            for write in state_records:
                # One atomic write per store and batch: a db.put per record cost ~6 us, an entry in
                # a WriteBatch ~1 us (measured).
                batch = WriteBatch(raw_mode=True)
                put = batch.put
                for key, value in write.items:
                    put(key, value)
                for key in write.deletes:
                    batch.delete(key)
                write.db.write(batch)
            self.phase_seconds["state_write"] += time.perf_counter() - started
            last_offsets = output.take_last_offsets()
            for write in state_records:
                offset = last_offsets.get((write.changelog_topic, write.partition))
                if offset is not None:
                    faust_patches.set_persisted_offset(write.table, write.changelog_topic, write.partition, offset)
            # Everything this batch caused is durable: the partition's next state record says so.
            # Not applied_offset: a batch of re-read facts below it vouches only for what it re-read.
            for partition, offset in durable_offsets.items():
                processor = self.processors.get(partition)
                if processor is not None:
                    processor.state.mark_durable(offset, *times_at[partition])
            self.source.commit_progress(durable_offsets)
        except asyncio.CancelledError:  # the worker stops: this batch is not durable, it is read again
            raise
        except BaseException:  # noqa: BLE001
            log.exception("batch completion failed; exiting so that the batch is re-read after a restart")
            logging.shutdown()
            os._exit(70)

    @staticmethod
    async def _catch_up_catalog(follower: CatalogFollower) -> None:
        """Read the catalog to its end, trying again while a broker is away (a leader moves within
        seconds); only a catalog still unreadable after CATALOG_PATIENCE_S stops the worker."""
        deadline = time.monotonic() + CATALOG_PATIENCE_S
        while True:
            try:
                await follower.catch_up_async()
                return
            except CatalogBehind as error:
                if time.monotonic() > deadline:
                    raise
                log.warning("catalog not readable yet, trying again: %s", error)
                await asyncio.sleep(1.0)

    async def _follow_catalog(self, names_unknown: bool) -> None:
        """Read the catalog on before the fold when a fact names something it does not know (the
        verdict on a fact must not depend on how far the catalog was read); otherwise refresh it
        in the background every CATALOG_REFRESH_S (a broker round trip must not hold up a batch)."""
        follower, refresh = self.catalog_follower, self.catalog_refresh
        if refresh is not None and refresh.done():
            self.catalog_refresh = None
            try:
                refresh.result()
            except CatalogBehind as error:  # no verdict waited for it: try again next time
                log.warning("background catalog refresh: %s", error)
        if names_unknown:
            if self.catalog_refresh is not None:  # one reader of the catalog at a time
                await asyncio.gather(self.catalog_refresh, return_exceptions=True)
                self.catalog_refresh = None
            await self._catch_up_catalog(follower)
        elif self.catalog_refresh is None and time.monotonic() - follower.caught_up_at > CATALOG_REFRESH_S:
            self.catalog_refresh = asyncio.ensure_future(follower.catch_up_async())



def _names_unknown_price(fact: object, catalog: Any) -> bool:
    """Whether a fact (a subscription's) names a price the catalog does not know yet: read the
    catalog on first (the verdict on a fact must not depend on how far the catalog was read)."""
    return any(item.price_id not in catalog.prices for item in getattr(fact, "items", ()))

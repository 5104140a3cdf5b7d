"""The projector: Kafka facts -> PostgreSQL rows, exactly once.

Each consumed batch is written in ONE transaction together with each partition's next offset
(table projection_offset). On assignment the consumer starts from the stored offsets, not from
Kafka's committed ones, so a crash anywhere either loses the whole batch (it is read again) or
keeps it with its offsets (it is not read again). The offset update is fenced with the offset we
expect to find: a zombie projector whose partitions moved to another one updates zero rows, rolls
back, and re-reads its position.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from drawdown.settings import Settings
from projections.events import lock_event_order
from projections.migrate import migrate
from projections.writers import IGNORED_FACTS, Batch
from schemas.schema_files import load_catalogue
from schemas.codec import SINGLE_OBJECT_MAGIC, FactCodec
from schemas.errors import UndecodableFact
from streams.topics import IDEMPOTENCY_KEY_HEADER, REQUEST_ID_HEADER

log = logging.getLogger("drawdown.projector")

PROJECTION = "main"
SOURCE_TOPICS = ("catalog", "customer-facts", "invoices", "credit-balance-transactions", "usage-buckets",
                 "live-balances", "dead-letters")
# Projection tables (what a rebuild empties and what must come out identical). Not `events`: a
# rebuild derives the same event ids again (projections/events.py) and keeps the ones already sent.
PROJECTION_TABLES = ("test_clocks", "meters", "products", "prices", "customers", "subscriptions",
                     "subscription_items", "credit_grants", "credit_balance_transactions", "invoices", "invoice_lines",
                     "invoice_line_credits", "invoice_items", "usage_buckets", "period_usage", "live_balances", "low_balance_alerts", "billing_alerts",
                     "billing_alert_crossings", "dead_letters",
                     "meter_event_cancel_misses")
MAX_BATCH_MESSAGES = 20000
PROGRESS_LOG_SECONDS = 30.0
# While the database is away the projector waits and retries (0.5, 1, 2, 4, 5, 5 ... s), it does not exit.
DATABASE_RETRY_FIRST_S = 0.5
DATABASE_RETRY_MAX_S = 5.0


def tune_gc() -> None:
    """Process-wide: batches allocate ~20k short-lived facts each, and the default young-generation
    threshold (700) makes the collector rescan them dozens of times a batch. Long-lived objects are
    frozen out of collection, young ones are collected less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


# What the database refuses in a record (class 22 data exceptions, class 23 constraint violations):
# that record is dead-lettered. Anything else (a lost connection) stops the batch: it is read again.
UNWRITABLE = (psycopg.DataError, psycopg.IntegrityError)
UNPROJECTABLE_FACT = "unprojectable_fact"  # no rule could turn the fact into rows
UNWRITABLE_RECORD = "unwritable_record"  # the database refuses its rows (the message says why)


class OffsetFenced(RuntimeError):
    """The stored offset is not the one this projector expected: another projector owns the partition."""


def request_of(headers: list[tuple[str, bytes]]) -> tuple[str | None, str | None] | None:
    """(Request-Id, Idempotency-Key) of the API request a record comes from, from its headers."""
    found = {name: value.decode("utf-8", "replace") for name, value in headers if value is not None}
    request_id, key = found.get(REQUEST_ID_HEADER), found.get(IDEMPOTENCY_KEY_HEADER)
    return None if request_id is None and key is None else (request_id, key)


def connect(database_url: str, schema: str, **kwargs: Any) -> psycopg.Connection:
    """A connection whose search_path is the projection's schema."""
    conn = psycopg.connect(database_url, **kwargs)
    conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(schema)))
    conn.commit()
    return conn


class Projector:
    """Projects the topics of FACTS.md into the tables of projections/migrations."""

    def __init__(self, settings: Settings, *, schema: str = "public", projection: str = PROJECTION,
                 codec: FactCodec | None = None, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.schema = schema
        self.projection = projection
        self.codec = codec or FactCodec(settings.schema_registry_url or None)
        self.topics = {settings.topic(name): name for name in SOURCE_TOPICS}
        # Skipped facts are recognised from the single-object header, without decoding their body.
        self._ignored_fingerprints = {
            fingerprint for fingerprint, fact_schema in load_catalogue().by_fingerprint.items()
            if issubclass(fact_schema.fact_class, IGNORED_FACTS)}
        self._positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset as stored
        self._conn: psycopg.Connection | None = None
        self.rows_written = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            migrate(self.settings.effective_database_url, self.schema)
            self._conn = connect(self.settings.effective_database_url, self.schema)
            # Rows and offsets commit together, so a commit lost in a database crash loses its
            # offsets too and is projected again: no need to wait for the WAL flush.
            self._conn.execute("set synchronous_commit to off")
            self._conn.commit()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _consumer(self, group: bool) -> Any:
        from confluent_kafka import Consumer

        config = {
            **self.settings.kafka_client_config(),
            "group.id": f"{self.settings.topic_prefix}.projector.{self.schema}.{self.projection}",
            # Offsets live in Postgres, in the same transaction as the rows: Kafka's are never used.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Only facts of committed producer transactions are facts.
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": 50,
            # A projector that dies hands its partitions on after 10 s, not librdkafka's 45 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        }
        if group and self.instance_id:
            # Static membership: a restarted projector takes its partitions back at once, without
            # waiting for the killed one's session to expire.
            config["group.instance.id"] = self.instance_id
        return Consumer(config)

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset, as stored in projection_offset."""
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute("select topic, partition, next_offset from projection_offset where projection = %s",
                                (self.projection,)).fetchall()
        return {(topic, partition): next_offset for topic, partition, next_offset in rows}

    def _seek_positions(self, partitions: Iterable[Any]) -> list[Any]:
        from confluent_kafka import OFFSET_BEGINNING

        stored = self.stored_offsets()
        assigned = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._positions[key] = stored.get(key, -1)  # -1: no row yet
            tp.offset = stored[key] if key in stored else OFFSET_BEGINNING
            assigned.append(tp)
        return assigned

    def run(self, stop: threading.Event, on_batch: Callable[[int], None] | None = None) -> None:
        """Project until `stop` is set, as a member of the projector consumer group."""
        self._connection()  # migrate before the first assignment reads offsets
        consumer = self._consumer(group=True)

        assigned: list[Any] = []  # what the group gave us, even if seeking to it failed

        def on_assign(consumer_: Any, partitions: list[Any]) -> None:
            assigned[:] = partitions
            consumer_.assign(self._seek_positions(partitions))

        writer = _OneInFlight(self._commit)

        def on_revoke(consumer_: Any, partitions: list[Any]) -> None:
            try:
                writer.drain()  # the batch in flight still holds these partitions' offsets
            except OffsetFenced as exc:
                log.warning("%s", exc)
            for tp in partitions:
                self._positions.pop((tp.topic, tp.partition), None)
            assigned[:] = [tp for tp in assigned if (tp.topic, tp.partition) not in
                           {(gone.topic, gone.partition) for gone in partitions}]

        consumer.subscribe(list(self.topics), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        applied_since_log, logged_at = 0, time.monotonic()
        retry_delay_s = 0.0
        try:
            while not stop.is_set():
                try:
                    if retry_delay_s:  # the database was away: start again from the stored offsets
                        consumer.assign(self._seek_positions(assigned))
                        log.info("database back; projecting again")
                        retry_delay_s = 0.0
                    # consume() waits for a full batch or the timeout: keep it short, it is the read-your-writes latency.
                    messages = consumer.consume(num_messages=MAX_BATCH_MESSAGES, timeout=0.05)
                    written = writer.submit(*self._prepare(messages)) if messages else writer.drain()
                except OffsetFenced as exc:
                    log.warning("%s; re-reading positions", exc)
                    writer.discard()
                    consumer.assign(self._seek_positions(consumer.assignment()))
                    continue
                except psycopg.OperationalError as exc:
                    # Rows and offsets commit together, so whatever the lost batch did is either all
                    # stored or not at all: wait, reconnect, and re-read from the stored offsets.
                    writer.discard()
                    self._drop_connection()
                    retry_delay_s = min(max(retry_delay_s * 2, DATABASE_RETRY_FIRST_S), DATABASE_RETRY_MAX_S)
                    log.warning("database unavailable (%s); retrying in %.1f s", str(exc).splitlines()[0], retry_delay_s)
                    stop.wait(retry_delay_s)
                    continue
                if written:
                    applied_since_log += written
                    if on_batch is not None:
                        on_batch(written)
                if time.monotonic() - logged_at >= PROGRESS_LOG_SECONDS:
                    log.info("projected %d facts in the last %.0f s; %d rows written in all", applied_since_log,
                             time.monotonic() - logged_at, self.rows_written)
                    applied_since_log, logged_at = 0, time.monotonic()
        finally:
            writer.close()
            consumer.close()
            if self._conn is not None:
                self._conn.close()

    def catch_up(self, timeout_s: float = 300.0) -> int:
        """Project every partition from its stored offset to the end offset seen at the start,
        without a consumer group (used by rebuild and by tests); returns the facts applied."""
        from confluent_kafka import TopicPartition

        consumer = self._consumer(group=False)
        try:
            metadata = consumer.list_topics(timeout=10)
            partitions = [TopicPartition(topic, partition)
                          for topic in self.topics for partition in metadata.topics[topic].partitions]
            ends = {(tp.topic, tp.partition): end_offset(consumer, tp) for tp in partitions}
            consumer.assign(self._seek_positions(partitions))
            applied = 0
            deadline = time.monotonic() + timeout_s
            writer = _OneInFlight(self._commit)
            try:
                while any(max(self._positions[key], 0) < end for key, end in ends.items()):
                    if time.monotonic() > deadline:
                        raise TimeoutError("projection did not reach the end offsets in time")
                    messages = consumer.consume(num_messages=MAX_BATCH_MESSAGES, timeout=0.5)
                    if messages:
                        applied += writer.submit(*self._prepare(messages))
                    else:
                        applied += writer.drain()
                        if self._only_gaps_left(consumer, ends):
                            break
                applied += writer.drain()
            finally:
                writer.close()
            return applied
        finally:
            consumer.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _only_gaps_left(self, consumer: Any, ends: dict[tuple[str, int], int]) -> bool:
        # Transaction markers take offsets no message carries: the consumer position tells us.
        positions = consumer.position([tp for tp in consumer.assignment()])
        return all(tp.offset < 0 or tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions)

    # --- one batch, one transaction -----------------------------------------------------------

    def project(self, messages: list[Any]) -> int:
        """Write a batch of consumed messages and their partitions' next offsets in one transaction.

        Returns the number of facts applied. Raises OffsetFenced (and writes nothing) when a stored
        offset is not the one expected.
        """
        return self._commit(*self._prepare(messages))

    def _prepare(self, messages: list[Any]) -> tuple[Batch, dict[tuple[str, int], int]]:
        """Decode a batch into rows (no database work): the CPU half of a batch."""
        batch = Batch(cancel_fan_out=self.settings.partitions, decode=self.codec.decode)
        next_offsets: dict[tuple[str, int], int] = {}
        ignored = self._ignored_fingerprints
        positions = self._positions
        add = self._add
        sources = batch.sources
        for message in messages:
            if message.error() is not None:
                if message.error().code() == -191:  # _PARTITION_EOF: not an error
                    continue
                raise RuntimeError(f"kafka: {message.error()}")
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            key = (topic, partition)
            if key not in positions:
                continue  # revoked while the batch was in flight
            next_offsets[key] = offset + 1
            value = message.value()
            if value is not None and value[:2] == SINGLE_OBJECT_MAGIC and value[2:10] in ignored:
                continue
            # The record's own timestamp, not the clock: a rebuild must write the same dead-letter row.
            headers = message.headers()  # (the API request a fact comes from: api/publisher.py)
            source = (topic, partition, offset, value or b"", message.timestamp()[1],
                      None if headers is None else request_of(headers))
            sources.append(source)
            add(batch, *source)
        return batch, next_offsets

    def _add(self, batch: Batch, topic: str, partition: int, offset: int, value: bytes, timestamp_ms: int,
             request: tuple[str | None, str | None] | None = None) -> None:
        """Collect one record's rows; one that cannot be decoded or projected becomes a dead-letter row."""
        try:
            fact = self.codec.decode(value)
        except UndecodableFact as error:
            batch.add_undecodable(topic, partition, offset, value, error.reason_code, str(error), timestamp_ms)
            return
        try:
            batch.add(fact, partition, offset, self.topics.get(topic, topic), timestamp_ms, request)
        except Exception as error:  # noqa: BLE001 - no record may stop the projector
            batch.add_undecodable(topic, partition, offset, value, UNPROJECTABLE_FACT,
                                  f"{type(error).__name__}: {error}", timestamp_ms)

    def _commit(self, batch: Batch, next_offsets: dict[tuple[str, int], int]) -> int:
        """Write the rows and the offsets in one transaction: the database half of a batch."""
        if not next_offsets:
            return 0
        conn = self._connection()
        try:
            with conn.transaction():  # rows and offsets together, or neither
                lock_event_order(conn)
                batch.write(conn)
                self._store_offsets(conn, next_offsets)
        except UNWRITABLE as error:
            log.warning("a record of the batch cannot be written (%s): writing it record by record", error)
            batch = self._write_one_by_one(conn, batch.sources, next_offsets)
        self._positions.update(next_offsets)
        self.rows_written += batch.row_count
        return batch.facts_applied

    def _write_one_by_one(self, conn: psycopg.Connection, sources: list[tuple],
                          next_offsets: dict[tuple[str, int], int]) -> Batch:
        """The batch again, each record in a savepoint: one the database refuses (a value out of a
        column's range, a NUL in a text) becomes a dead-letter row, the others are written."""
        written = Batch(cancel_fan_out=self.settings.partitions, decode=self.codec.decode)
        with conn.transaction():
            lock_event_order(conn)
            for topic, partition, offset, value, timestamp_ms, request in sources:
                single = Batch(cancel_fan_out=self.settings.partitions, decode=self.codec.decode)
                self._add(single, topic, partition, offset, value, timestamp_ms, request)
                try:
                    with conn.transaction():
                        single.write(conn)
                except UNWRITABLE as error:
                    log.error("%s[%s]@%s cannot be written: dead-lettered (%s)", topic, partition, offset, error)
                    single = Batch(cancel_fan_out=self.settings.partitions, decode=self.codec.decode)
                    single.add_undecodable(topic, partition, offset, value, UNWRITABLE_RECORD,
                                           f"{type(error).__name__}: {error}", timestamp_ms)
                    with conn.transaction():
                        single.write(conn)
                written.facts_applied += single.facts_applied
                written.statements.extend(single.statements)  # (counted in row_count)
            self._store_offsets(conn, next_offsets)
        return written

    def _store_offsets(self, conn: psycopg.Connection, next_offsets: dict[tuple[str, int], int]) -> None:
        with conn.cursor() as cursor:
            for (topic, partition), next_offset in next_offsets.items():
                expected = self._positions[(topic, partition)]
                if expected < 0:
                    cursor.execute("insert into projection_offset (projection, topic, partition, next_offset)"
                                   " values (%s, %s, %s, %s) on conflict do nothing",
                                   (self.projection, topic, partition, next_offset))
                else:
                    cursor.execute("update projection_offset set next_offset = %s where projection = %s and topic = %s"
                                   " and partition = %s and next_offset = %s",
                                   (next_offset, self.projection, topic, partition, expected))
                if cursor.rowcount != 1:
                    raise OffsetFenced(f"{topic}[{partition}]: stored offset is not {expected}")


class _OneInFlight:
    """Commits batch N on a writer thread while batch N+1 is consumed and decoded (psycopg waits
    on the socket without the GIL), at most one batch in flight, so commits stay in log order."""

    def __init__(self, commit: Callable[..., int]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._commit = commit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-writer")
        self._pending: Any = None

    def submit(self, batch: Batch, next_offsets: dict[tuple[str, int], int]) -> int:
        """Wait for the batch in flight (its facts applied are returned), then start this one."""
        applied = self.drain()
        self._pending = self._executor.submit(self._commit, batch, next_offsets)
        return applied

    def drain(self) -> int:
        """Wait for the batch in flight; raises what its commit raised."""
        pending, self._pending = self._pending, None
        return 0 if pending is None else pending.result()

    def discard(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()

    def close(self) -> None:
        self.discard()
        self._executor.shutdown(wait=True)


def end_offset(consumer: Any, tp: Any, attempts: int = 50) -> int:
    """The partition's high watermark, retried while a new topic's leader is being elected."""
    from confluent_kafka import KafkaException

    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def rebuild(settings: Settings, schema: str = "public", timeout_s: float = 600.0) -> int:
    """Empty the projection tables of `schema` and replay every topic into them up to the end
    offsets seen at the start. Stop the live projector of that schema first."""
    migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema) as conn:
        with conn.transaction():
            conn.execute("truncate " + ", ".join(PROJECTION_TABLES))
            conn.execute("delete from projection_offset where projection = %s", (PROJECTION,))
    return Projector(settings, schema=schema).catch_up(timeout_s)

"""Projector throughput: rows/s written to PostgreSQL for usage buckets and balance transactions.

Each measurement projects N facts of one kind from Kafka (consume, decode, COPY into staging,
merge, offsets in the same transaction) into an empty schema. Ceiling, side by side: a bare
binary COPY of the same rows into a plain table with the same primary key (what PostgreSQL takes
when there is no Kafka, no decoding, no merge and no offsets).
Target: >= 50,000 rows/s each. 3 rounds on each side, each side the median of its rounds.

    python -m benchmarks --only projector
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from benchmarks.harness import measurement, quick
from billing import facts as f
from drawdown.settings import Settings, with_database
from schemas.codec import FactCodec
from streams.topics import PRODUCER_PARTITIONER, ensure_topics

FACTS_PER_KIND = 100_000
QUICK_FACTS_PER_KIND = 20_000
TARGET_ROWS_PER_SECOND = 50_000
ROUNDS = 3
QUICK_ROUNDS = 2
START_MS = 1_767_225_600_000


def _bucket(index: int) -> f.UsageBucketUpdated:
    return f.UsageBucketUpdated(customer_id=f"cus_{index % 2000:06d}", meter_id="mtr_bench",
                                bucket_start_ms=START_MS + (index // 2000) * 60_000, value=Decimal(index % 977),
                                event_count=1 + index % 13, updated_at_ms=START_MS)


def _transaction(index: int) -> f.CreditBalanceTransaction:
    return f.CreditBalanceTransaction(
        transaction_id=f"cbtxn_{index:012d}", customer_id=f"cus_{index % 2000:06d}", grant_id=f"credgr_{index % 5000}",
        currency="usd", amount_minor=1 + index % 1000, type=f.TransactionType.DEBIT,
        reason=f.TransactionReason.CREDITS_APPLIED, invoice_id=f"in_{index}", invoice_line_id=f"il_{index}",
        effective_at_ms=START_MS + index)


def _produce(settings: Settings, topic: str, facts: list[Any]) -> None:
    from confluent_kafka import Producer

    codec = FactCodec(settings.schema_registry_url or None)
    producer = Producer({**settings.kafka_client_config(),
                         "enable.idempotence": True, "partitioner": PRODUCER_PARTITIONER, "linger.ms": 20,
                         "compression.type": "lz4"})
    for fact in facts:
        while True:
            try:
                producer.produce(settings.topic(topic), codec.encode(fact), fact.customer_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _bare_copy_rows_per_second(database_url: str, table: str, columns: tuple[str, ...], types: tuple[str, ...],
                               rows: list[tuple]) -> float:
    with psycopg.connect(database_url) as conn:
        conn.execute(f"create temp table bare_{table} (like {table} including all)")
        started = time.perf_counter()
        with conn.cursor().copy(f"copy bare_{table} ({', '.join(columns)}) from stdin (format binary)") as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - started)


def run(settings: Settings) -> list[dict]:
    from projections.migrate import migrate
    from projections.projector import Projector, tune_gc
    from projections.writers import TRANSACTION_COLUMNS, TRANSACTION_TYPES, USAGE_BUCKET_COLUMNS, USAGE_BUCKET_TYPES

    import gc

    thresholds = gc.get_threshold()
    tune_gc()  # as `drawdown projector` does; restored below for the benchmarks that run after this one
    database = f"bench_projector_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    rows: list[dict] = []
    facts_per_kind = QUICK_FACTS_PER_KIND if quick() else FACTS_PER_KIND
    rounds = QUICK_ROUNDS if quick() else ROUNDS
    try:
        for kind, topic, make, columns, types in (
                ("usage buckets", "usage-buckets", _bucket, USAGE_BUCKET_COLUMNS, USAGE_BUCKET_TYPES),
                ("balance transactions", "credit-balance-transactions", _transaction, TRANSACTION_COLUMNS,
                 TRANSACTION_TYPES)):
            run_settings = settings.model_copy(update={
                "topic_prefix": f"{settings.topic_prefix}-projector-{topic}",
                "database_url": with_database(settings.effective_database_url, database)})
            ensure_topics(run_settings)
            facts = [make(index) for index in range(facts_per_kind)]
            _produce(run_settings, topic, facts)
            table = "usage_buckets" if topic == "usage-buckets" else "credit_balance_transactions"
            bare_rows = [tuple(row) for row in _rows(facts, topic)]
            rows_per_second: list[float] = []
            ceiling: list[float] = []
            for round_index in range(rounds):
                schema = f"bench_{topic.replace('-', '_')}_{round_index}"
                migrate(run_settings.effective_database_url, schema)
                projector = Projector(run_settings, schema=schema)
                started = time.perf_counter()
                projector.catch_up(timeout_s=600)
                rows_per_second.append(facts_per_kind / (time.perf_counter() - started))
                with psycopg.connect(run_settings.effective_database_url, options=f"-c search_path={schema}") as conn:
                    projected = conn.execute(f"select count(*) from {table}").fetchone()[0]
                assert projected == facts_per_kind, f"{projected} rows projected, expected {facts_per_kind}"
                ceiling.append(_bare_copy_rows_per_second(
                    make_conninfo(run_settings.effective_database_url, options=f"-c search_path={schema}"),
                    table, columns, types, bare_rows))
            rows.append(measurement(f"projector: {kind} (ceiling: bare binary COPY)", "rows/s", rows_per_second,
                                    ceiling, at_least=TARGET_ROWS_PER_SECOND))
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    return rows


def _rows(facts: list[Any], topic: str) -> list[tuple]:
    if topic == "usage-buckets":
        return [(fact.customer_id, fact.meter_id, fact.bucket_start_ms, fact.value, fact.event_count,
                 fact.updated_at_ms, fact.counted_event_time_ms, fact.counted_received_at_ms, fact.counted_identifier,
                 0, index) for index, fact in enumerate(facts)]
    return [(fact.transaction_id, fact.customer_id, fact.grant_id, fact.currency, fact.amount_minor, str(fact.type),
             str(fact.reason), fact.invoice_id, fact.invoice_line_id, fact.effective_at_ms) for fact in facts]

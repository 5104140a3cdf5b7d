"""A `drawdown projector` process killed with SIGKILL at random moments, and restarted, ends with
exactly the rows of its facts: nothing lost, nothing applied twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg import sql

from billing import facts as f
from drawdown.settings import PROJECT_ROOT, database_name, with_database
from schemas.codec import encode
from streams.topics import PRODUCER_PARTITIONER

FACTS_PER_KIND = 50_000
START_MS = 1_767_225_600_000


def test_a_projector_killed_and_restarted_ends_with_exactly_its_facts_rows(topics, tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition

    settings = topics.model_copy(update={"topic_prefix": f"{topics.topic_prefix}-kill-{uuid.uuid4().hex[:6]}"})
    from streams.topics import ensure_topics

    ensure_topics(settings)
    database = f"{database_name(settings.effective_database_url)}_kill"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    database_url = with_database(settings.effective_database_url, database)
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True,
                         "partitioner": PRODUCER_PARTITIONER, "linger.ms": 20})
    rng = random.Random(11)
    expected_buckets: dict[tuple[str, int], Decimal] = {}
    for index in range(FACTS_PER_KIND):
        customer_id, minute = f"cus_{index % 300}", rng.randrange(40)  # repeated keys: the last update must win
        value = Decimal(rng.randrange(1, 10_000))
        expected_buckets[(customer_id, minute)] = value
        producer.produce(settings.topic("usage-buckets"), encode(f.UsageBucketUpdated(
            customer_id=customer_id, meter_id="mtr_kill", bucket_start_ms=START_MS + minute * 60_000, value=value,
            event_count=1, updated_at_ms=START_MS)), customer_id.encode())
        producer.produce(settings.topic("credit-balance-transactions"), encode(f.CreditBalanceTransaction(
            transaction_id=f"cbtxn_kill_{index}", customer_id=customer_id, grant_id="credgr_kill", currency="usd",
            amount_minor=1 + index % 97, type=f.TransactionType.DEBIT, reason=f.TransactionReason.CREDITS_APPLIED,
            effective_at_ms=START_MS + index)), customer_id.encode())
        producer.poll(0)
    assert producer.flush(60) == 0

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=settings.effective_kafka_bootstrap_servers,
               DATABASE_URL=database_url, DRAWDOWN_TOPIC_PREFIX=settings.topic_prefix,
               DRAWDOWN_PARTITIONS=str(settings.partitions), DRAWDOWN_STATE_DIR=str(tmp_path),
               PYTHONPATH=str(PROJECT_ROOT))

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "drawdown", "projector"], cwd=PROJECT_ROOT, env=env,
                                stdout=open(tmp_path / "projector.log", "ab"), stderr=subprocess.STDOUT)

    consumer = Consumer({**settings.kafka_client_config(), "group.id": "ends"})
    ends = {(settings.topic(topic), partition): consumer.get_watermark_offsets(
        TopicPartition(settings.topic(topic), partition), timeout=10)[1]
        for topic in ("usage-buckets", "credit-balance-transactions") for partition in range(settings.partitions)}
    consumer.close()
    total = sum(ends.values())

    def projected(conn: psycopg.Connection) -> int:
        try:
            return conn.execute("select coalesce(sum(next_offset), 0) from projection_offset").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0

    killed_at: list[int] = []
    process = None
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for _ in range(3):  # kill -9 while it is projecting, then start again
                before = projected(conn)
                process = start()
                deadline = time.monotonic() + 60
                while projected(conn) == before and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                killed_at.append(projected(conn))
            process = start()
            deadline = time.monotonic() + 120
            while projected(conn) < total:
                assert time.monotonic() < deadline, f"projection did not catch up: {projected(conn)} of {total}"
                time.sleep(0.3)
            transactions = conn.execute("select count(*), sum(amount_minor) from credit_balance_transactions"
                                        ).fetchone()
            buckets = {(customer_id, (start_ms - START_MS) // 60_000): value for customer_id, start_ms, value in
                       conn.execute("select customer_id, bucket_start_ms, value from usage_buckets").fetchall()}
        process.terminate()
        process.wait(20)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    assert any(0 < progress < total for progress in killed_at), f"no kill landed mid-run: {killed_at} of {total}"
    assert transactions == (FACTS_PER_KIND, sum(1 + index % 97 for index in range(FACTS_PER_KIND)))
    assert buckets == expected_buckets

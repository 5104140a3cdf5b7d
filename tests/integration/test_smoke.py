"""Smoke tests through the real services: the ground every other integration test stands on."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from drawdown.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def create_topic(settings: Settings, name: str, partitions: int = 1) -> None:
    admin = AdminClient(settings.kafka_client_config())
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def consume_all(settings: Settings, topic: str, count: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer({
        **settings.kafka_client_config(), "group.id": f"smoke-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    received = []
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(received) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=count, timeout=1.0):
                assert message.error() is None, message.error()
                received.append(message)
    finally:
        consumer.close()
    return received


def test_bytes_produced_to_the_broker_come_back_intact(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}-smoke.bytes-{uuid.uuid4().hex[:8]}"
    create_topic(settings, topic)
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    payloads = [bytes([i % 256]) * (i + 1) for i in range(50)]
    for payload in payloads:
        producer.produce(topic, key=b"cus_1", value=payload)
    assert producer.flush(30) == 0
    received = consume_all(settings, topic, len(payloads))
    assert [m.value() for m in received] == payloads
    assert {m.key() for m in received} == {b"cus_1"}


def test_an_avro_encoded_fact_produced_to_the_broker_is_consumed_back_intact(settings: Settings) -> None:
    from billing.facts import MeterEventRecorded
    from schemas.codec import decode, encode

    topic = f"{settings.topic_prefix}-smoke.facts-{uuid.uuid4().hex[:8]}"
    create_topic(settings, topic)
    fact = MeterEventRecorded(
        customer_id="cus_jenny", event_name="hypernian_input_tokens", identifier="evt_1",
        payload={"stripe_customer_id": "cus_jenny", "value": "3000"},
        event_time_ms=1_795_000_000_000, received_at_ms=1_795_000_000_123,
    )
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    producer.produce(topic, key=fact.customer_id.encode(), value=encode(fact))
    assert producer.flush(30) == 0
    [message] = consume_all(settings, topic, 1)
    assert decode(message.value()) == fact
    assert message.key() == b"cus_jenny"


def test_a_row_written_to_postgres_reads_back_the_same(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute("create table smoke (id text primary key, amount_minor bigint not null)")
        connection.execute("insert into smoke values (%s, %s)", ("cbtxn_1", 9_007_199_254_740_993))
        row = connection.execute("select id, amount_minor from smoke").fetchone()
    assert row == ("cbtxn_1", 9_007_199_254_740_993)

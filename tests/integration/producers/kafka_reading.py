"""Reading a whole topic back, for assertions."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from drawdown.settings import Settings


def read_records(settings: Settings, topic: str, timeout_s: float = 30.0) -> list:
    """Every record of `topic` (all partitions) up to its current end, in partition order."""
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": f"test-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        wanted = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        records, deadline_s = [], time.monotonic() + timeout_s
        positions = dict.fromkeys(wanted, 0)
        while any(positions[p] < wanted[p] for p in wanted):
            assert time.monotonic() < deadline_s, f"timed out reading {topic}: {positions} of {wanted}"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    records.append(message)
                    positions[message.partition()] = message.offset() + 1
        return sorted(records, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def own_topics(settings: Settings, tag: str):
    """Settings with a fresh topic prefix (3 partitions) whose topics exist; yields them, then
    deletes those topics (the broker is shared: leave nothing behind)."""
    import uuid as _uuid

    from streams.topics import delete_topics
    from streams.topics import ensure_topics

    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-{tag}{_uuid.uuid4().hex[:6]}",
                                      "partitions": 3})
    ensure_topics(own)
    try:
        yield own
    finally:
        delete_topics(own)

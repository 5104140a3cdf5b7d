"""The catalog as clients see it: folded (billing.catalog) from the catalog topic, for validation and replay.

The catalog topic is small, global and has one partition, so reading it from the beginning to its
end is cheap and gives the same view of the meters as the engine's global table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from functools import reduce

from billing.catalog import Catalog, evolve_catalog
from drawdown.settings import Settings


def fold_catalog(facts: Iterable[object]) -> Catalog:
    """The catalog after `facts` (catalog facts in log order; other facts change nothing)."""
    return reduce(evolve_catalog, facts, Catalog())


def read_catalog(settings: Settings, *, codec=None, timeout_s: float = 30.0) -> Catalog:
    """Read the whole catalog topic (one partition) and fold it. Undecodable records are skipped,
    as the engine dead-letters them."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.codec import FactCodec
    from schemas.errors import UndecodableFact

    codec = codec or FactCodec(settings.schema_registry_url or None)
    topic = settings.topic("catalog")
    consumer = Consumer({
        **settings.kafka_client_config(),
        "group.id": f"drawdown-catalog-reader-{uuid.uuid4().hex[:8]}",  # assign() only: never joins
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    facts = []
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)
        if high <= 0:
            return Catalog()
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        next_offset = 0
        deadline_s = time.monotonic() + timeout_s
        while next_offset < high:
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"reading {topic}: at offset {next_offset} of {high} after {timeout_s} s")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    continue
                next_offset = message.offset() + 1
                try:
                    facts.append(codec.decode(message.value()))
                except UndecodableFact:
                    continue
    finally:
        consumer.close()
    return fold_catalog(facts)

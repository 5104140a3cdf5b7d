"""The ticker: passing time as a fact. Writes TimeTicked(now) to every partition of customer-facts
about every settings.tick_interval_ms, so period ends and grant expiries fire from the log."""

from __future__ import annotations

import signal
import time

from billing.facts import TimeTicked
from drawdown.settings import Settings


def run_ticker(settings: Settings, ticks: int | None = None) -> int:
    """Tick until SIGTERM/SIGINT (or `ticks` times)."""
    from confluent_kafka import Producer

    from schemas.codec import FactCodec
    from streams.topics import ensure_topics

    ensure_topics(settings)
    codec = FactCodec(settings.schema_registry_url or None)
    topic = settings.topic("customer-facts")
    producer = Producer({**settings.kafka_client_config(),
                         "enable.idempotence": True, "linger.ms": 5})
    partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    interval_s = settings.tick_interval_ms / 1000
    sent = 0
    try:
        while not stopping and (ticks is None or sent < ticks):
            now_ms = time.time_ns() // 1_000_000
            value = codec.encode(TimeTicked(now_ms=now_ms))
            for partition in range(partitions):
                producer.produce(topic, value, key=b"", partition=partition, timestamp=now_ms)
            producer.poll(0)
            sent += 1
            time.sleep(max(0.0, interval_s - (time.time_ns() // 1_000_000 - now_ms) / 1000))
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(10)
    return 0

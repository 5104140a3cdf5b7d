"""The worker's output producer: derived facts and changelog records, acknowledged in bulk."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from drawdown.settings import Settings

ACK_POLL_S = 0.001


class OutputProducer:
    """A confluent-kafka producer for derived facts and changelog records (a C call per record,
    where aiokafka costs tens of microseconds of Python); `acked()` raises if any record failed, so
    the worker dies and the batch is re-processed."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        from streams.topics import PRODUCER_PARTITIONER

        self._producer = Producer({
            **settings.kafka_client_config(),
            "enable.idempotence": True,  # retries neither duplicate nor reorder within a partition
            "acks": "all",
            "linger.ms": 2,  # a batch is flushed at once anyway: do not wait to fill it
            "compression.type": "lz4",
            "partitioner": PRODUCER_PARTITIONER,  # keyed like Faust/Java: murmur2 of the customer id
            "on_delivery": self._on_delivery,
        })
        self._errors: list[str] = []
        self._last_offsets: dict[tuple[str, int], int] = {}

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._errors.append(f"{message.topic()}: {error}")
        else:
            key = (message.topic(), message.partition())
            if message.offset() > self._last_offsets.get(key, -1):
                self._last_offsets[key] = message.offset()

    def produce(self, topic: str, value: bytes, key: bytes, partition: int | None = None) -> None:
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def acked(self, timeout_s: float = 60.0) -> None:
        """Every record produced so far is acknowledged; raises if any failed. Delivery reports are
        served here, on the event loop's thread: from a flushing thread each report fought the
        folding thread for the GIL, and a batch's acks took seconds instead of milliseconds."""
        producer, deadline = self._producer, time.monotonic() + timeout_s
        while True:
            producer.poll(0)
            if len(producer) == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(ACK_POLL_S)
        remaining = len(producer)
        if self._errors or remaining:
            errors, self._errors = self._errors[:5], []
            raise RuntimeError(f"{remaining} records unacknowledged; delivery errors: {errors}")

    def take_last_offsets(self) -> dict[tuple[str, int], int]:
        """The last acknowledged offset per (topic, partition) since the previous call."""
        offsets, self._last_offsets = self._last_offsets, {}
        return offsets

"""Publishing commands as facts, and waiting until the projection has read them.

One idempotent confluent-kafka producer per process; a background thread serves its delivery
callbacks, so request threads only wait for their own acks.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from api import idempotency
from api.errors import ApiError
from drawdown.settings import Settings
from schemas.codec import FactCodec
from streams.topics import IDEMPOTENCY_KEY_HEADER, PRODUCER_PARTITIONER, REQUEST_ID_HEADER

Position = tuple[str, int, int]  # (topic, partition, offset)
PROJECTION = "main"

# The API request a fact comes from: its Request-Id and Idempotency-Key travel as Kafka record headers,
# so the events derived from the fact name them (Stripe's event.request), a rebuild included.
_request_headers: contextvars.ContextVar[list[tuple[str, bytes]] | None] = contextvars.ContextVar(
    "request_headers", default=None)


def bind_request(request_id: bytes, idempotency_key: bytes | None) -> contextvars.Token:
    """The request being served (Conventions binds it): the facts it publishes carry it."""
    headers = [(REQUEST_ID_HEADER, request_id)]
    if idempotency_key is not None:
        headers.append((IDEMPOTENCY_KEY_HEADER, idempotency_key[:255]))
    return _request_headers.set(headers)


def unbind_request(token: contextvars.Token) -> None:
    _request_headers.reset(token)


class PublishFailed(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=503, type="api_error", code="publish_failed")


class _Pending:
    """Acks of one publish call."""

    __slots__ = ("remaining", "positions", "error", "done")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.positions: list[Position | None] = [None] * count
        self.error: str | None = None
        self.done = threading.Event()


class Publisher:
    """Encodes facts, produces them keyed by customer id, and waits for the broker's acks."""

    def __init__(self, settings: Settings, codec: FactCodec | None = None) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.codec = codec or FactCodec(settings.schema_registry_url or None)
        self._producer = Producer({
            **settings.kafka_client_config(),
            # Retries never duplicate or reorder a fact (implies acks=all: acked = durable).
            "enable.idempotence": True,
            # murmur2 like Faust/aiokafka/Java, so a customer's facts land on one co-partitioned partition.
            "partitioner": PRODUCER_PARTITIONER,
            "linger.ms": 2,
            "compression.type": "lz4",
            "message.timeout.ms": 10_000,
        })
        self._partitions: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def close(self) -> None:
        self._stop.set()
        self._poller.join(5)
        self._producer.flush(10)

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    def partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            metadata = self._producer.list_topics(topic, timeout=10)
            self._partitions[topic] = len(metadata.topics[topic].partitions)
        return self._partitions[topic]

    def publish(self, topic_name: str, key: str, fact: Any) -> Position:
        """Produce one fact to `topic_name` (short name) keyed by `key`; its position once acked."""
        return self.publish_many(topic_name, [(key, fact, None)])[0]

    def publish_to_every_partition(self, topic_name: str, fact: Any) -> list[Position]:
        """Time facts go to every partition, each copy keyed by the empty key (FACTS.md)."""
        topic = self.topic(topic_name)
        return self.publish_many(topic_name, [("", fact, partition) for partition in range(self.partition_count(topic))])

    def publish_many(self, topic_name: str, records: Sequence[tuple[str, Any, int | None]],
                     encoded: Sequence[bytes] | None = None) -> list[Position]:
        """Produce (key, fact, partition or None) records and wait for every ack; raises PublishFailed."""
        topic = self.topic(topic_name)
        values = encoded if encoded is not None else [self.codec.encode(fact) for _, fact, _ in records]
        pending = _Pending(len(records))
        idempotency.note_published()  # from here on, a retry of this request must not make new facts
        headers = _request_headers.get()
        if headers is not None:
            produce = self._producer.produce

            def produce_with_headers(*args: Any, **kwargs: Any) -> None:
                produce(*args, headers=headers, **kwargs)
        else:
            produce_with_headers = self._producer.produce
        for index, ((key, _, partition), value) in enumerate(zip(records, values)):
            def delivered(error: Any, message: Any, index: int = index) -> None:
                if error is not None:
                    pending.error = str(error)
                else:
                    pending.positions[index] = (message.topic(), message.partition(), message.offset())
                pending.remaining -= 1  # callbacks run on the one poller thread
                if pending.remaining == 0:
                    pending.done.set()
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    produce_with_headers(topic, value, key.encode(), on_delivery=delivered, **kwargs)
                    break
                except BufferError:
                    time.sleep(0.005)  # the local queue is full: the poller drains it
        if not pending.done.wait(15):
            raise PublishFailed("Kafka did not acknowledge the request in time; retry with the same Idempotency-Key")
        if pending.error is not None:
            raise PublishFailed(f"Kafka refused the request: {pending.error}")
        return [position for position in pending.positions if position is not None]


def wait_until_projected(pool: Any, positions: Iterable[Position], timeout_ms: int) -> bool:
    """Wait until the projection has passed every position (read-your-writes); False on timeout."""
    wanted: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        wanted[(topic, partition)] = max(wanted.get((topic, partition), -1), offset)
    if not wanted:
        return True
    topics = sorted({topic for topic, _ in wanted})
    deadline = time.monotonic() + timeout_ms / 1000
    delay_s = 0.002
    while True:
        with pool.connection() as conn:
            rows = conn.execute("select topic, partition, next_offset from projection_offset"
                                " where projection = %s and topic = any(%s)", (PROJECTION, topics)).fetchall()
        stored = {(row["topic"], row["partition"]): row["next_offset"] for row in rows}
        if all(stored.get(key, 0) > offset for key, offset in wanted.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.025)

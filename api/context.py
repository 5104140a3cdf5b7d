"""What every request handler needs: settings, the projection's pool, the publisher, caches."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError
from api.publisher import Position, Publisher, wait_until_projected
from drawdown.settings import Settings


class ProjectionLagging(ApiError):
    def __init__(self) -> None:
        super().__init__("The request was accepted but is not readable yet; retry the read in a moment.",
                         status=503, type="api_error", code="projection_lagging")


@dataclass
class ApiContext:
    settings: Settings
    pool: Any
    publisher: Publisher
    keys: Any
    _meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_name -> meter row
    _meters_loaded_at: float = 0.0
    _meters_lock: threading.Lock = field(default_factory=threading.Lock)
    _admin: Any = None
    _consumer: Any = None
    _consumer_lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, positions: list[Position]) -> None:
        """Read-your-writes: block (bounded) until the projection has passed `positions`."""
        if not wait_until_projected(self.pool, positions, self.settings.read_your_writes_timeout_ms):
            raise ProjectionLagging()

    def worker_committed_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The stream workers' durable offsets + 1 of `partitions`: every fact below it has its outputs
        and state acknowledged (committed to the group streams.source.progress_group names)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient

        from streams.source import progress_group

        if self._admin is None:
            self._admin = AdminClient(self.settings.kafka_client_config())
        request = ConsumerGroupTopicPartitions(progress_group(self.settings),
                                              [TopicPartition(topic, partition) for topic, partition in partitions])
        try:
            answer = self._admin.list_consumer_group_offsets([request], request_timeout=5)
            result = next(iter(answer.values())).result(timeout=5)
        except Exception:  # no group yet, broker busy: not committed, so still advancing
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.error is None}

    def end_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """High watermarks of every partition of `topics`."""
        from confluent_kafka import Consumer, TopicPartition

        with self._consumer_lock:
            if self._consumer is None:
                self._consumer = Consumer({**self.settings.kafka_client_config(),
                                           "group.id": f"{self.settings.topic_prefix}.api-watermarks",
                                           "enable.auto.commit": False})
            ends = {}
            for topic in topics:
                for partition in range(self.publisher.partition_count(topic)):
                    ends[(topic, partition)] = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=5)[1]
            return ends

    def meters_by_event_name(self, max_age_s: float = 1.0) -> dict[str, dict[str, Any]]:
        """Every meter by event name, cached for a second (meter events validate against it)."""
        if time.monotonic() - self._meters_loaded_at > max_age_s:
            with self._meters_lock:
                if time.monotonic() - self._meters_loaded_at > max_age_s:
                    with self.pool.connection() as conn:
                        rows = conn.execute("select * from meters").fetchall()
                    self._meters = {row["event_name"]: row for row in rows}
                    self._meters_loaded_at = time.monotonic()
        return self._meters

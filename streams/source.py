"""The worker's source: its customer-facts partitions, read with confluent-kafka, not through Faust.

Faust owns the group (which partitions this worker has) and the tables' recovery; the facts
themselves are read here, in batches parsed in C. Faust's per-message path (aiokafka's fetcher in
a thread of its own, an Event per message, the conductor, the stream's acks) cost more than our
whole fold and fought it for the GIL. Where to resume is never Faust's committed offset but each
partition record's durable offset (streams/pipeline.py): the worker assigns the partitions here at
that offset once Faust has recovered the tables.

The reader commits durable offsets to a group of its own (`<prefix>.worker.source`), which never
joins as a member: for lag monitoring (kafka-consumer-groups --describe) and for the API, which
reports a test clock "ready" once every partition is durable past its advance. Never read back.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Mapping
from typing import Any

from drawdown.settings import Settings

log = logging.getLogger("drawdown.worker.source")

IDLE_POLL_S = 0.002  # nothing buffered: look again this soon (librdkafka fetches meanwhile)
CHUNK_MESSAGES = 2_000  # a batch bounded by its keys is read in chunks this big
_MESSAGE_KEY = operator.methodcaller("key")
PROGRESS_RETRY_S = 1.0  # an unacknowledged progress commit is sent again after this long


def progress_group(settings: Settings) -> str:
    """The group the workers commit their durable offsets to (read by the API: test clock status)."""
    return f"{settings.topic_prefix}.worker.source"


class SourceReader:
    """The source partitions this worker owns, read from explicit offsets, in batches."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self._consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": progress_group(settings),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # An assigned offset below the log start (deleted by retention) is a gap the worker
            # reports (streams/output.py); start from the earliest fact there is.
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,  # freshness: a quiet partition's fetch returns within 50 ms
            "queued.max.messages.kbytes": 32_768,
            "on_commit": self._on_commit,
        })
        self._progress: dict[int, int] = {}  # partition -> durable offset + 1, as told to the group
        self._committed: dict[int, int] = {}  # ... as the group acknowledged it
        self._progress_sent_at = 0.0
        # Bumped on every (un)assignment: a batch gathered under an older one is not folded.
        self.generation = 0
        self.partitions: frozenset[int] = frozenset()

    def assign(self, offsets: Mapping[int, int]) -> None:
        """Read exactly these partitions, each from its offset (replaces the whole assignment)."""
        from confluent_kafka import TopicPartition

        self._consumer.assign([TopicPartition(self.topic, partition, offset) for partition, offset in offsets.items()])
        self.partitions = frozenset(offsets)
        self.generation += 1
        self._forget_progress()

    def unassign(self) -> None:
        if self.partitions:
            self._consumer.unassign()
        self.partitions = frozenset()
        self.generation += 1
        self._forget_progress()

    def _forget_progress(self) -> None:
        """A partition we no longer own is another worker's to report: never commit it again
        (a late retry of ours would move its progress back)."""
        self._progress = {p: o for p, o in self._progress.items() if p in self.partitions}
        self._committed = {p: o for p, o in self._committed.items() if p in self.partitions}

    def seek(self, partition: int, offset: int) -> None:
        """Read the partition again from `offset` (librdkafka drops what it had buffered past it)."""
        from confluent_kafka import TopicPartition

        self._consumer.seek(TopicPartition(self.topic, partition, offset))

    def commit_progress(self, durable_offsets: Mapping[int, int]) -> None:
        """Tell the progress group how far each partition is durable (asynchronous: a commit that
        fails is tried again while the reader idles, see _retry_progress)."""
        for partition, offset in durable_offsets.items():
            if offset + 1 > self._progress.get(partition, 0):
                self._progress[partition] = offset + 1
        self._commit(self._progress)

    def _commit(self, progress: Mapping[int, int]) -> None:
        from confluent_kafka import TopicPartition

        self._progress_sent_at = time.monotonic()
        offsets = [TopicPartition(self.topic, partition, offset) for partition, offset in progress.items()]
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as error:  # noqa: BLE001 - progress only: never fails a batch
                log.warning("progress commit failed (tried again shortly): %s", error)

    def _on_commit(self, error: Any, partitions: list) -> None:
        if error is not None:
            log.warning("progress commit failed (tried again shortly): %s", error)
            return
        for tp in partitions:
            if tp.error is None and tp.offset > self._committed.get(tp.partition, -1):
                self._committed[tp.partition] = tp.offset

    def _retry_progress(self) -> None:
        """While idle: commit again what was not acknowledged (the last batch before a quiet spell
        has no later batch to carry its progress)."""
        behind = {p: o for p, o in self._progress.items() if self._committed.get(p, -1) < o}
        if behind and time.monotonic() - self._progress_sent_at > PROGRESS_RETRY_S:
            self._commit(behind)

    async def batch(self, max_messages: int, window_s: float, max_keys: int | None = None) -> tuple[int, list]:
        """The next batch and the assignment generation it was read under: whatever is buffered,
        up to `max_messages`, gathered for at least `window_s` after its first message (each
        touched customer is then written once per window, not once per trickle). With `max_keys`,
        the batch also ends once its messages carry that many distinct keys (customers), give or
        take a chunk of CHUNK_MESSAGES: what a batch holds in memory grows with the customers it
        touches, its cost per event shrinks with the events per customer."""
        consume = self._consumer.consume
        batch: list = []
        keys: set = set()
        generation = self.generation
        first_at = 0.0
        while len(batch) < max_messages:
            if generation != self.generation:  # (un)assigned while we waited: start over
                batch, keys, generation = [], set(), self.generation
            want = max_messages - len(batch) if max_keys is None else min(max_messages - len(batch), CHUNK_MESSAGES)
            messages = consume(want, 0) if self.partitions else []
            if messages:
                if not batch:
                    first_at = time.monotonic()
                batch.extend(self._without_errors(messages))
                if max_keys is not None:
                    keys.update(map(_MESSAGE_KEY, messages))
                    if len(keys) >= max_keys:
                        break
                continue
            if batch and time.monotonic() - first_at >= window_s:
                break
            if not batch:
                self._retry_progress()
            await asyncio.sleep(IDLE_POLL_S)
        return generation, batch

    @staticmethod
    def _without_errors(messages: list) -> list:
        from confluent_kafka import KafkaException

        if all(message.error() is None for message in messages):
            return messages
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.fatal():
                raise KafkaException(error)
            else:  # e.g. a broker connection dropped: librdkafka retries by itself
                log.warning("source consumer: %s", error)
        return kept

    def close(self) -> None:
        self._consumer.close()

    def __repr__(self) -> str:
        return f"SourceReader({self.topic!r}, partitions={sorted(self.partitions)}, generation={self.generation})"


def message_fields(message: Any) -> tuple[int, int, bytes, bytes | None]:
    """(partition, offset, value, key) of a confluent-kafka message."""
    return message.partition(), message.offset(), message.value() or b"", message.key()


def wait_until_durable_to_the_end(settings: Settings, timeout_s: float = 240) -> None:
    """Wait until the workers' progress group says every customer-facts partition is durable to its
    end (every fact folded, its outputs and state acknowledged): only then are the derived topics
    final. Outputs alone cannot tell: after a restart, a worker re-reading from its durable offsets
    re-emits facts an earlier incarnation already sent, and may be stopped halfway."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from streams.source import progress_group

    topic = settings.topic("customer-facts")
    probe = Consumer({**settings.kafka_client_config(), "group.id": "unused-progress-probe"})
    admin = AdminClient(settings.kafka_client_config())
    try:
        ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(settings.partitions)}
        deadline = time.monotonic() + timeout_s
        durable: dict[int, int] = {}
        while time.monotonic() < deadline:
            request = ConsumerGroupTopicPartitions(progress_group(settings),
                                                   [TopicPartition(topic, p) for p in range(settings.partitions)])
            answer = admin.list_consumer_group_offsets([request], request_timeout=10)
            durable = {tp.partition: tp.offset for tp in answer[progress_group(settings)].result().topic_partitions}
            if all(durable.get(p, -1) >= end for p, end in ends.items()):
                return
            time.sleep(0.5)
        raise AssertionError(f"workers not durable to the end in {timeout_s}s (see the worker's log): durable {durable}, ends {ends}")
    finally:
        probe.close()

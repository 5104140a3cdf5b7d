"""The catalog, followed by every worker: a plain reader of the one-partition catalog topic.

Why not a Faust GlobalTable: a meter event must be judged against every catalog fact acknowledged
before it was produced (the API publishes a meter before accepting its events). A global table is
filled asynchronously, so a worker could dead-letter a good event as `no_meter` depending on timing
(and faust#212 reports standby gaps for global tables). Reading the topic up to its high watermark
whenever an event names something unknown makes the verdict a function of the log.
"""

from __future__ import annotations

import logging
import time

from billing.catalog import Catalog, evolve_catalog
from drawdown.settings import Settings

log = logging.getLogger("drawdown.catalog")


class CatalogBehind(RuntimeError):
    """The catalog topic could not be read to its end in time."""


class CatalogFollower:
    """Keeps a Catalog folded from the catalog topic; `catch_up()` reads to the high watermark."""

    def __init__(self, settings: Settings, codec: object) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._topic = settings.topic("catalog")
        self._codec = codec
        self._consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": f"{settings.topic_prefix}.catalog-follower",  # never commits: assign() only
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        self._partition = TopicPartition(self._topic, 0, OFFSET_BEGINNING)
        self._consumer.assign([self._partition])
        self.next_offset = 0
        self.catalog = Catalog()
        self.caught_up_at = 0.0

    def catch_up(self, timeout_s: float = 10.0) -> Catalog:
        """Read every catalog fact up to the current end of the topic; returns the catalog."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, 0), timeout=timeout_s)
        except KafkaException as error:  # a broker down or its leadership moving: worth another try
            raise CatalogBehind(f"catalog topic {self._topic!r}: no end offset ({error.args[0]})") from error
        deadline = time.monotonic() + timeout_s
        while self.next_offset < high and time.monotonic() < deadline:
            for message in self._consumer.consume(500, timeout=0.5):
                if message.error():
                    continue
                try:
                    self.catalog = evolve_catalog(self.catalog, self._codec.decode(message.value()))
                except Exception as error:  # noqa: BLE001 - a bad catalog record cannot stop billing
                    log.error("catalog offset %s skipped (%s): %s", message.offset(), type(error).__name__, error)
                self.next_offset = message.offset() + 1
        if self.next_offset < high:
            # A partial catalog would judge facts against an older catalog than the log says:
            # never go on with one (the worker stops and is restarted).
            raise CatalogBehind(f"catalog topic {self._topic!r} read to offset {self.next_offset} of {high} in "
                                f"{timeout_s:.0f} s: is the broker reachable and the topic readable?")
        self.caught_up_at = time.monotonic()
        return self.catalog

    async def catch_up_async(self) -> Catalog:
        """catch_up() in a thread: the broker round trips must not stall the event loop."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.catch_up)

    def close(self) -> None:
        self._consumer.close()

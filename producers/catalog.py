"""The meter catalog as clients see it: folded from the catalog topic, for validation and replay.

The catalog topic is small, global and has one partition, so reading it from the beginning to its
end is cheap and gives the same view of the meters as the engine's global table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from billing.facts import MeterDeactivated, MeterDefined, MeterDisplayNameChanged, MeterReactivated
from drawdown.settings import Settings


@dataclass(frozen=True, slots=True)
class MeterCatalog:
    """Meters by id, the active meter of each event name, and which meters are inactive."""

    meters_by_id: Mapping[str, MeterDefined] = field(default_factory=lambda: MappingProxyType({}))
    inactive_meter_ids: frozenset[str] = frozenset()

    @property
    def meters_by_event_name(self) -> Mapping[str, MeterDefined]:
        """Event name -> meter (the latest definition wins when two meters share a name)."""
        return {meter.event_name: meter for meter in self.meters_by_id.values()}

    @classmethod
    def of(cls, meters: Iterable[MeterDefined], inactive_meter_ids: Iterable[str] = ()) -> MeterCatalog:
        return cls(MappingProxyType({meter.meter_id: meter for meter in meters}), frozenset(inactive_meter_ids))


def fold_catalog(facts: Iterable[object]) -> MeterCatalog:
    """The meter catalog after `facts` (catalog facts in log order; others are ignored)."""
    meters: dict[str, MeterDefined] = {}
    inactive: set[str] = set()
    for fact in facts:
        if isinstance(fact, MeterDefined):
            meters[fact.meter_id] = fact
        elif isinstance(fact, MeterDisplayNameChanged) and fact.meter_id in meters:
            old = meters[fact.meter_id]
            meters[fact.meter_id] = MeterDefined(
                meter_id=old.meter_id, display_name=fact.display_name, event_name=old.event_name,
                aggregation=old.aggregation, customer_payload_key=old.customer_payload_key,
                value_payload_key=old.value_payload_key, event_time_window=old.event_time_window,
                created_at_ms=old.created_at_ms)
        elif isinstance(fact, MeterDeactivated):
            inactive.add(fact.meter_id)
        elif isinstance(fact, MeterReactivated):
            inactive.discard(fact.meter_id)
    return MeterCatalog(MappingProxyType(meters), frozenset(inactive))


def read_catalog(settings: Settings, *, codec=None, timeout_s: float = 30.0) -> MeterCatalog:
    """Read the whole catalog topic (one partition) and fold it. Undecodable records are skipped,
    as the engine dead-letters them."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.codec import FactCodec
    from schemas.errors import UndecodableFact

    codec = codec or FactCodec(settings.schema_registry_url or None)
    topic = settings.topic("catalog")
    consumer = Consumer({
        "bootstrap.servers": settings.effective_kafka_bootstrap_servers,
        "group.id": f"drawdown-catalog-reader-{uuid.uuid4().hex[:8]}",  # assign() only: never joins
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    facts = []
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)
        if high <= 0:
            return MeterCatalog()
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

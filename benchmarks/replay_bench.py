"""Replay throughput: meter events scanned, validated, deduplicated and aggregated per second.

Ceiling, measured side by side in the same run: a bare consume + decode loop (confluent-kafka
consume(10,000) and the codec's decode) over exactly the same partition ranges. The replay side
is the whole `replay_usage` call (planning by offsets_for_times included, catalog given), so the
ratio is what the engine's fold (billing.meter_events + billing.usage) and the grouping cost on
top of reading. Rounds alternate the order and keep the best of each side.
Targets: >= 200,000 events/s and >= 0.8 of the ceiling.

Replay folds partitions in parallel processes by default (one per core); the ceiling is the one
bare loop the target names. So that the parallelism hides nothing, a second row gives replay in a
single process against the same ceiling: what the fold costs per event on top of reading.

    python -m benchmarks --only replay
"""

from __future__ import annotations

import gc
import os
import time
import uuid

from billing.facts import CustomerCreated
from drawdown.settings import Settings
from producers.catalog import fold_catalog
from producers.producer import FactProducer
from producers.replay import CONSUME_BATCH_RECORDS, plan_ranges, replay_usage
from streams.topics import ensure_topics

TARGET_EVENTS_PER_SECOND = 200_000
TARGET_RATIO = 0.8
EVENTS = 300_000
ROUNDS = 3
MINUTE_MS = 60_000


def _produce_events(settings: Settings) -> None:
    from benchmarks.producer_bench import CUSTOMERS, METER, sample_payloads

    payloads = sample_payloads(EVENTS)
    customers = sorted({payload["stripe_customer_id"] for payload in payloads})
    assert len(customers) <= CUSTOMERS
    with FactProducer(settings, catalog=fold_catalog([METER])) as producer:
        producer.send(METER)
        for customer_id in customers:
            producer.send(CustomerCreated(customer_id=customer_id, created_at_ms=0))
        for payload in payloads:
            producer.send_meter_event(METER.event_name, payload)


def bare_consume_and_decode(settings: Settings, start_ms: int, end_ms: int, codec) -> int:
    """The ceiling: read the same ranges replay reads and decode every record; returns the count."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic("customer-facts")
    consumer = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                         "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024})
    try:
        partitions = range(len(consumer.list_topics(topic, timeout=30).topics[topic].partitions))
        ranges = [r for r in plan_ranges(consumer, topic, partitions, start_ms, end_ms, with_history=False)
                  if r.record_count > 0]
        total = sum(r.record_count for r in ranges)
        consumer.assign([TopicPartition(topic, r.partition, r.first_offset) for r in ranges])
        decode, read = codec.decode, 0
        while read < total:
            for message in consumer.consume(num_messages=max(1, min(CONSUME_BATCH_RECORDS, total - read)), timeout=1):
                if message.error() is None:
                    decode(message.value())
                    read += 1
        return read
    finally:
        consumer.close()


def _timed(run) -> tuple[float, object]:
    gc.collect()
    started_s = time.perf_counter()
    value = run()
    return time.perf_counter() - started_s, value


def run(settings: Settings) -> list[dict]:
    from benchmarks.producer_bench import METER
    from schemas.codec import FactCodec

    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-replay"})
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - 10 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    _produce_events(settings)
    end_ms = (int(time.time() * 1000) // MINUTE_MS + 2) * MINUTE_MS
    codec = FactCodec(settings.schema_registry_url or None)
    catalog = fold_catalog([METER])
    best = {"parallel": 0.0, "single": 0.0, "ceiling": 0.0}
    processes = {"parallel": None, "single": 1}
    events = None
    for round_number in range(ROUNDS):
        sides = ("parallel", "single", "ceiling") if round_number % 2 == 0 else ("ceiling", "single", "parallel")
        for side in sides:
            if side == "ceiling":
                seconds, read = _timed(lambda: bare_consume_and_decode(settings, start_ms, end_ms, codec))
                best[side] = max(best[side], read / seconds)
                continue
            seconds, result = _timed(lambda: replay_usage(settings, start_ms, end_ms, catalog=catalog, codec=codec,
                                                          processes=processes[side]))
            events = result.meter_events
            if sum(row.event_count for row in result.rows) != EVENTS:
                raise RuntimeError(f"replay counted {sum(r.event_count for r in result.rows)} of {EVENTS} events")
            best[side] = max(best[side], result.records_read / seconds)
    ceiling = best["ceiling"]
    ratio = best["parallel"] / ceiling
    return [{
        "name": f"replay: {events:,} meter events scanned and aggregated ({os.cpu_count()} processes)",
        "unit": "events/s",
        "measured": best["parallel"],
        "ceiling": ceiling,
        "ratio": ratio,
        "target": f">= {TARGET_EVENTS_PER_SECOND:,} events/s and >= {TARGET_RATIO} of consume+decode",
        "passed": best["parallel"] >= TARGET_EVENTS_PER_SECOND and ratio >= TARGET_RATIO,
    }, {
        "name": "replay in one process (fold cost on top of reading; informational)",
        "unit": "events/s",
        "measured": best["single"],
        "ceiling": ceiling,
        "ratio": best["single"] / ceiling,
        "target": "informational (the row above carries the targets)",
        "passed": True,
    }]


if __name__ == "__main__":
    from drawdown.settings import get_settings

    for row in run(get_settings().model_copy(update={"topic_prefix": f"bench-replay-manual-{uuid.uuid4().hex[:6]}"})):
        print(row)

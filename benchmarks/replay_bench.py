"""Replay throughput: meter events scanned, validated, deduplicated and aggregated per second.

Ceiling, measured side by side in the same run: a bare consume + decode loop (confluent-kafka
consume(10,000) with replay's consumer settings, and the codec's decode) over exactly the ranges
replay plans, planned the same way. The replay side is the whole `replay_usage` call (planning by
offsets_for_times included, catalog and codec given), so the ratio is what the engine's fold
(billing.meter_events + billing.usage) and the grouping cost on top of reading.

Same process count on both sides: replay in N processes (one per core) is compared with N bare
loops, split by replay's own _split and run by its own process machinery (the same fork server,
with the same modules preloaded before the first round); replay in one process with one bare loop
in this process. Rounds alternate the order; each side is the median of its rounds.
Targets: N processes >= 200,000 events/s and >= 0.8 of the N-process ceiling; one process
>= 0.8 of the one-process ceiling.

    python -m benchmarks --only replay
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from dataclasses import dataclass

from benchmarks.harness import measurement, quick
from billing.facts import CustomerCreated
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from producers.producer import FactProducer
from replay.usage import (
    CONSUME_BATCH_RECORDS,
    PartitionRange,
    _PartialResult,
    _run_in_processes,
    _split,
    plan_ranges,
    replay_usage,
)
from streams.topics import ensure_topics

TARGET_EVENTS_PER_SECOND = 200_000
TARGET_RATIO = 0.8
EVENTS = 300_000
ROUNDS = 3
QUICK_EVENTS = 60_000
QUICK_ROUNDS = 2
MINUTE_MS = 60_000


def _produce_events(settings: Settings, events: int) -> None:
    from benchmarks.producer_bench import CUSTOMERS, METER, sample_payloads

    payloads = sample_payloads(events)
    customers = sorted({payload["stripe_customer_id"] for payload in payloads})
    assert len(customers) <= CUSTOMERS
    with FactProducer(settings, catalog=fold_catalog([METER])) as producer:
        producer.send(METER)
        for customer_id in customers:
            producer.send(CustomerCreated(customer_id=customer_id, created_at_ms=0))
        for payload in payloads:
            producer.send_meter_event(METER.event_name, payload)


def bare_consume_and_decode(settings: Settings, ranges: list[PartitionRange], codec) -> int:
    """The ceiling's loop: read the ranges as replay's scan does (same consumer settings) and decode
    every record; returns the count."""
    from confluent_kafka import Consumer, TopicPartition

    wanted = [r for r in ranges if r.record_count > 0]
    total = sum(r.record_count for r in wanted)
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "isolation.level": "read_committed",
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024})
    try:
        consumer.assign([TopicPartition(settings.topic("customer-facts"), r.partition, r.first_offset)
                         for r in wanted])
        decode, read = codec.decode, 0
        while read < total:
            for message in consumer.consume(num_messages=max(1, min(CONSUME_BATCH_RECORDS, total - read)), timeout=1):
                if message.error() is None:
                    decode(message.value())
                    read += 1
        return read
    finally:
        consumer.close()


@dataclass(frozen=True)
class BareJob:
    """The ceiling's work for one group of ranges, in the shape of replay's job so that replay's own
    process machinery runs it (a child makes its codec, as replay's children do)."""

    settings: Settings

    def run(self, ranges: list[PartitionRange], progress=None, codec=None) -> _PartialResult:
        if codec is None:
            from schemas.codec import FactCodec

            codec = FactCodec(self.settings.schema_registry_url or None)
        return _PartialResult((), bare_consume_and_decode(self.settings, ranges, codec), 0, {})


def bare_ceiling(settings: Settings, start_ms: int, end_ms: int, codec, processes: int) -> int:
    """Everything replay_usage does but the fold: plan the ranges, split them over `processes`, read
    and decode; returns the records read."""
    from confluent_kafka import Consumer

    topic = settings.topic("customer-facts")
    planner = Consumer({**settings.kafka_client_config(),
                        "group.id": f"bench-ceiling-plan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        partitions = range(len(planner.list_topics(topic, timeout=30).topics[topic].partitions))
        ranges = plan_ranges(planner, topic, partitions, start_ms, end_ms)
    finally:
        planner.close()
    processes = max(1, min(processes, len(ranges)))  # as replay_usage caps it
    job = BareJob(settings)
    if processes == 1:
        return job.run(ranges, None, codec).read
    return _run_in_processes(job, _split(ranges, processes), None).read


def start_fork_server() -> None:
    """Setup, outside the timing: the fork server both sides' children come from, with replay and
    this module preloaded (else the ceiling's children would import this module on the clock)."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(["replay.usage", "benchmarks.replay_bench"])
    forkserver.ensure_running()


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
    events = QUICK_EVENTS if quick() else EVENTS
    rounds = QUICK_ROUNDS if quick() else ROUNDS
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - 10 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    _produce_events(settings, events)
    end_ms = (int(time.time() * 1000) // MINUTE_MS + 2) * MINUTE_MS
    codec = FactCodec(settings.schema_registry_url or None)
    catalog = fold_catalog([METER])
    parallel = max(2, os.cpu_count() or 1)  # at least two: the row is about splitting the work
    start_fork_server()
    rates: dict[tuple[str, int], list[float]] = {(side, n): [] for side in ("replay", "ceiling") for n in (parallel, 1)}
    meter_events = None
    for round_number in range(rounds):
        order = [(side, n) for n in (parallel, 1) for side in ("replay", "ceiling")]
        for side, processes in (order if round_number % 2 == 0 else order[::-1]):
            if side == "ceiling":
                seconds, read = _timed(lambda: bare_ceiling(settings, start_ms, end_ms, codec, processes))
            else:
                seconds, result = _timed(lambda: replay_usage(settings, start_ms, end_ms, catalog=catalog, codec=codec,
                                                              processes=processes))
                counted = sum(row.event_count for row in result.rows)
                if counted != events:
                    raise RuntimeError(f"replay in {processes} processes counted {counted} of {events} events")
                read, meter_events = result.records_read, result.meter_events
            rates[(side, processes)].append(read / seconds)
    return [
        measurement(f"replay: {meter_events:,} meter events scanned and aggregated ({parallel} processes; "
                    f"ceiling: {parallel} bare loops split the same way)", "events/s",
                    rates[("replay", parallel)], rates[("ceiling", parallel)],
                    at_least=TARGET_EVENTS_PER_SECOND, min_ratio=TARGET_RATIO),
        measurement("replay in one process (ceiling: one bare consume+decode loop)", "events/s",
                    rates[("replay", 1)], rates[("ceiling", 1)], min_ratio=TARGET_RATIO),
    ]

"""Producer SDK throughput: Avro-encoded, validated meter events from one process to the broker.

The SDK side is what a user calls for many events: FactProducer.send_meter_events, BATCH_EVENTS
at a time, validation on, then flush() (every event acknowledged).
Ceiling, measured side by side in the same run: bare confluent-kafka producing the same events
already encoded (the exact bytes the SDK sent, same keys and timestamps, same producer
configuration and poll cadence) to the same topic and flushing, so the ratio is what the SDK's
Python work (validate, encode, key) costs.

Both sides are timed alike: the producer is made and warmed up (one record sent and flushed:
metadata fetched, connection open) before the clock starts, the clock stops when flush()
returns, and the producer is torn down (the SDK's through its reference cycle, collected) after
it. The garbage collector stays on, as in a user's process, with the benchmark's own data frozen
out of it. Rounds alternate the order; each side is the median of its rounds.
Targets: >= 150,000 events/s and >= 0.6 of the ceiling.

Both sides end bound by librdkafka and the broker (compression, acks=all) rather than by
Python, so the two can come out close; above 1.05 the harness calls the ceiling broken.

    python -m benchmarks --only producer
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import measurement, quick
from billing.facts import MeterAggregation, MeterDefined, MeterEventRecorded
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from producers.producer import POLL_EVERY_RECORDS, PRODUCER_CONFIG, FactProducer, wall_clock_ms
from streams.topics import ensure_topics

TARGET_EVENTS_PER_SECOND = 150_000
TARGET_RATIO = 0.6
EVENTS_PER_ROUND = 200_000
ROUNDS = 5
QUICK_EVENTS_PER_ROUND = 50_000
QUICK_ROUNDS = 3
BATCH_EVENTS = 1_000  # events per send_meter_events call: a client flushing its buffer
CUSTOMERS = 1_000

METER = MeterDefined(meter_id="mtr_bench_tokens", display_name="Tokens", event_name="llm_input_tokens",
                     aggregation=MeterAggregation.SUM, created_at_ms=0)


def sample_payloads(count: int, seed: int = 7) -> list[dict[str, str]]:
    """Typical LLM token events: a customer and a token count, as the ingest API receives them."""
    rng = random.Random(seed)
    customers = [f"cus_{rng.getrandbits(48):012x}" for _ in range(CUSTOMERS)]
    return [{"stripe_customer_id": rng.choice(customers), "value": str(rng.randint(1, 4000))} for _ in range(count)]


def _timed(run: Callable[[], float]) -> tuple[float, float]:
    """(seconds of run(), what it returns: its seconds spent enqueueing). The heap built so far (the
    payloads, the encoded values) is frozen out of the collector: what it scans then is what the
    side itself allocates, as in a user's process."""
    gc.collect()
    gc.freeze()
    try:
        started_s = time.perf_counter()
        enqueue_s = run()
        return time.perf_counter() - started_s, enqueue_s
    finally:
        gc.unfreeze()


class RecordingClock:
    """The SDK's clock, remembered (one now_ms per batch) to rebuild the exact bytes it sent."""

    def __init__(self) -> None:
        self.arrivals_ms: list[int] = []

    def __call__(self) -> int:
        now_ms = wall_clock_ms()
        self.arrivals_ms.append(now_ms)
        return now_ms


def open_sdk_producer(settings: Settings, payloads: list[dict[str, str]]) -> tuple[FactProducer, RecordingClock]:
    """Setup, outside the timing: the SDK's producer, warmed up by one event sent and flushed."""
    clock = RecordingClock()
    producer = FactProducer(settings, catalog=fold_catalog([METER]), now_ms=clock)
    producer.send_meter_events(METER.event_name, payloads[:1])
    if not producer.flush().ok:
        raise RuntimeError("SDK producer: warm-up event not acknowledged")
    clock.arrivals_ms.clear()
    return producer, clock


def produce_with_sdk(producer: FactProducer, payloads: list[dict[str, str]], sent: list) -> float:
    """The timed SDK side: every payload through the batch API (validation on), BATCH_EVENTS at a
    time as a client flushing its buffer would, then flush; returns the seconds spent enqueueing.
    `sent` gets (payloads, identifiers) per batch."""
    started_s = time.perf_counter()
    send = producer.send_meter_events
    for start in range(0, len(payloads), BATCH_EVENTS):
        batch = payloads[start:start + BATCH_EVENTS]
        sent.append((batch, send(METER.event_name, batch)))
    enqueue_s = time.perf_counter() - started_s
    result = producer.flush()
    if not result.ok:
        raise RuntimeError(f"SDK producer: not every event acknowledged: {result}")
    return enqueue_s


def sent_events(sent: list, arrivals_ms: list[int]) -> list[MeterEventRecorded]:
    """The events as the SDK sent them."""
    return [
        MeterEventRecorded(customer_id=payload["stripe_customer_id"], event_name=METER.event_name,
                           identifier=identifier, payload=payload, event_time_ms=arrived_ms, received_at_ms=arrived_ms)
        for (batch, identifiers), arrived_ms in zip(sent, arrivals_ms, strict=True)
        for payload, identifier in zip(batch, identifiers, strict=True)
    ]


def open_raw_producer(settings: Settings, key: bytes, value: bytes, timestamp_ms: int) -> Any:
    """Setup, outside the timing: bare confluent-kafka with the SDK's configuration (failure reports
    only, through a callback, as the SDK asks), warmed up by one record sent and flushed."""
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_client_config(), **PRODUCER_CONFIG,
                         "delivery.report.only.error": True, "on_delivery": lambda error, message: None})
    producer.produce(settings.topic("customer-facts"), value, key, timestamp=timestamp_ms)
    if producer.flush(60) != 0:
        raise RuntimeError("raw producer: warm-up record not acknowledged")
    return producer


def produce_raw(producer: Any, topic: str, keys: list[bytes], values: list[bytes], timestamps_ms: list[int]) -> float:
    """The timed ceiling: produce the pre-encoded records, polling every POLL_EVERY_RECORDS as the
    SDK does, then flush; returns the seconds spent enqueueing."""
    produce, poll = producer.produce, producer.poll
    started_s = time.perf_counter()
    for start in range(0, len(values), POLL_EVERY_RECORDS):
        for index in range(start, min(start + POLL_EVERY_RECORDS, len(values))):
            while True:
                try:
                    produce(topic, values[index], keys[index], timestamp=timestamps_ms[index])
                    break
                except BufferError:
                    poll(0.05)  # as the SDK's backpressure does
        poll(0)
    enqueue_s = time.perf_counter() - started_s
    if producer.flush(60) != 0:
        raise RuntimeError("raw producer: records left after flush")
    return enqueue_s


def _tear_down() -> None:
    """Outside the timing, once the caller has dropped its producer: the SDK's sits in a reference
    cycle (its librdkafka handle holds its on_delivery method), so collect it now, not in the next
    timed side; the raw one is destroyed as its last reference goes."""
    gc.collect()


def run(settings: Settings) -> list[dict]:
    from schemas.codec import FactCodec

    ensure_topics(settings)
    events = QUICK_EVENTS_PER_ROUND if quick() else EVENTS_PER_ROUND
    rounds = QUICK_ROUNDS if quick() else ROUNDS
    payloads = sample_payloads(events)
    codec = FactCodec(settings.schema_registry_url or None)
    topic = settings.topic("customer-facts")
    sdk_s: list[float] = []
    raw_s: list[float] = []
    sdk_enqueue_s: list[float] = []
    raw_enqueue_s: list[float] = []
    keys = values = timestamps_ms = None
    for round_number in range(rounds):
        for side in (("sdk", "raw") if round_number % 2 == 0 else ("raw", "sdk")):
            if side == "sdk":
                producer, clock = open_sdk_producer(settings, payloads)
                sent: list = []
                seconds, enqueue_s = _timed(lambda: produce_with_sdk(producer, payloads, sent))
                producer = None
                _tear_down()
                sdk_s.append(seconds)
                sdk_enqueue_s.append(enqueue_s)
                if keys is None:  # the ceiling sends exactly these bytes (round 0 runs the SDK first)
                    events_sent = sent_events(sent, clock.arrivals_ms)
                    keys = [event.customer_id.encode() for event in events_sent]
                    values = codec.encode_many(events_sent)
                    timestamps_ms = [event.received_at_ms for event in events_sent]
            else:
                producer = open_raw_producer(settings, keys[0], values[0], timestamps_ms[0])
                seconds, enqueue_s = _timed(lambda: produce_raw(producer, topic, keys, values, timestamps_ms))
                producer = None
                _tear_down()
                raw_s.append(seconds)
                raw_enqueue_s.append(enqueue_s)
    return [
        measurement("producer SDK: validated Avro meter events to Kafka, acknowledged (1 process)", "events/s",
                    [events / seconds for seconds in sdk_s], [events / seconds for seconds in raw_s],
                    at_least=TARGET_EVENTS_PER_SECOND, min_ratio=TARGET_RATIO),
        # The Python cost alone: both sides up to (not including) the flush. End to end, both are
        # bound by librdkafka and the broker; this row shows what the SDK's own work costs.
        measurement("producer SDK: enqueue rate before the flush (Python cost)", "events/s",
                    [events / seconds for seconds in sdk_enqueue_s], [events / seconds for seconds in raw_enqueue_s],
                    info="the end-to-end row above carries the targets"),
    ]

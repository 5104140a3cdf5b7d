"""Producer SDK throughput: Avro-encoded, validated meter events from one process to the broker.

Ceiling, measured side by side in the same run: bare confluent-kafka producing the same events
already encoded (same bytes, same keys, same producer configuration) to the same topic, so the
ratio is what the SDK's Python work (build, validate, encode, key) costs. Rounds alternate the
order and keep the best of each side (the least disturbed on a shared machine).
Targets: >= 150,000 events/s and >= 0.6 of the ceiling.

    python -m benchmarks --only producer
"""

from __future__ import annotations

import gc
import random
import time
from typing import Any

from billing.facts import MeterAggregation, MeterDefined
from drawdown.settings import Settings
from producers.catalog import fold_catalog
from producers.producer import PRODUCER_CONFIG, FactProducer
from streams.topics import ensure_topics

TARGET_EVENTS_PER_SECOND = 150_000
TARGET_RATIO = 0.6
EVENTS_PER_ROUND = 200_000
ROUNDS = 3
CUSTOMERS = 1_000

METER = MeterDefined(meter_id="mtr_bench_tokens", display_name="Tokens", event_name="llm_input_tokens",
                     aggregation=MeterAggregation.SUM, created_at_ms=0)


def sample_payloads(count: int, seed: int = 7) -> list[dict[str, str]]:
    """Typical LLM token events: a customer and a token count, as the ingest API receives them."""
    rng = random.Random(seed)
    customers = [f"cus_{rng.getrandbits(48):012x}" for _ in range(CUSTOMERS)]
    return [{"stripe_customer_id": rng.choice(customers), "value": str(rng.randint(1, 4000))} for _ in range(count)]


def _timed(run: Any) -> float:
    gc.collect()
    gc.disable()  # a full collection in the middle of one side only would decide the ratio
    try:
        started_s = time.perf_counter()
        run()
        return time.perf_counter() - started_s
    finally:
        gc.enable()


def produce_with_sdk(settings: Settings, payloads: list[dict[str, str]]) -> list:
    """Send every payload through the SDK (validation on) and flush; the events as sent."""
    sent = []
    append = sent.append
    with FactProducer(settings, catalog=fold_catalog([METER])) as producer:
        send = producer.send_meter_event
        for payload in payloads:
            append(send("llm_input_tokens", payload))
    return sent


def produce_raw(settings: Settings, keys: list[bytes], values: list[bytes], timestamps_ms: list[int]) -> None:
    """The ceiling: bare confluent-kafka, same configuration, pre-encoded values."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers, **PRODUCER_CONFIG,
                         "delivery.report.only.error": True, "on_delivery": lambda error, message: None})
    produce, poll = producer.produce, producer.poll
    topic = settings.topic("customer-facts")
    for index, value in enumerate(values):
        while True:
            try:
                produce(topic, value, keys[index], timestamp=timestamps_ms[index])
                break
            except BufferError:
                poll(0.05)
        if index % 1000 == 0:
            poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("raw producer: records left after flush")


def run(settings: Settings) -> list[dict]:
    from schemas.codec import FactCodec

    ensure_topics(settings)
    payloads = sample_payloads(EVENTS_PER_ROUND)
    codec = FactCodec(settings.schema_registry_url or None)
    best_sdk_s = best_raw_s = float("inf")
    keys = values = timestamps_ms = None
    for round_number in range(ROUNDS):
        sides = ["sdk", "raw"] if round_number % 2 == 0 else ["raw", "sdk"]
        for side in sides:
            if side == "sdk":
                sent: list = []
                seconds = _timed(lambda: sent.extend(produce_with_sdk(settings, payloads)))
                best_sdk_s = min(best_sdk_s, seconds)
                if keys is None:  # the ceiling sends exactly these bytes
                    keys = [event.customer_id.encode() for event in sent]
                    values = codec.encode_many(sent)
                    timestamps_ms = [event.received_at_ms for event in sent]
            elif keys is not None:
                best_raw_s = min(best_raw_s, _timed(lambda: produce_raw(settings, keys, values, timestamps_ms)))
    if best_raw_s == float("inf"):  # the raw side ran first in every round: impossible with ROUNDS >= 2
        raise RuntimeError("no ceiling measured")
    measured = EVENTS_PER_ROUND / best_sdk_s
    ceiling = EVENTS_PER_ROUND / best_raw_s
    ratio = measured / ceiling
    return [{
        "name": "producer SDK: validated Avro meter events to Kafka (1 process)",
        "unit": "events/s",
        "measured": measured,
        "ceiling": ceiling,
        "ratio": ratio,
        "target": f">= {TARGET_EVENTS_PER_SECOND:,} events/s and >= {TARGET_RATIO} of raw confluent-kafka",
        "passed": measured >= TARGET_EVENTS_PER_SECOND and ratio >= TARGET_RATIO,
    }]


if __name__ == "__main__":
    from drawdown.settings import get_settings

    for row in run(get_settings().model_copy(update={"topic_prefix": "bench-producer-manual"})):
        print(row)

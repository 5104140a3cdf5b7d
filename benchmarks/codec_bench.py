"""Micro-benchmark of the fact codec on the hot fact, MeterEventRecorded (not a test).

Each measurement runs the codec and its ceiling, bare fastavro `schemaless_writer` /
`schemaless_reader` of the same record with the same parsed schema (a fresh BytesIO each time,
as the codec needs too), interleaved in short batches (alternating the order, so that both sides
meet the same noise) and summarised by the median batch of each.
Target: >= 200,000 records/s each way on one core, and >= 0.8 of the ceiling.

    python -m benchmarks --only codec
"""

from __future__ import annotations

import timeit
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from benchmarks.harness import measurement, quick
from billing.facts import MeterEventRecorded
from schemas.schema_files import load_catalogue
from schemas.codec import FactCodec, to_avro

TARGET_RECORDS_PER_SECOND = 200_000
TARGET_RATIO = 0.8
BATCH_RECORDS = 4_000
ROUNDS = 40
QUICK_ROUNDS = 6

# A typical LLM token meter event as the ingest API receives it.
SAMPLE_FACT = MeterEventRecorded(
    customer_id="cus_NffrFeUfNV2Hib",
    event_name="llm_input_tokens",
    identifier="req_8f14e45fceea167a5a36dedd4bea2543",
    payload={"stripe_customer_id": "cus_NffrFeUfNV2Hib", "value": "1843", "model": "gpt-4.1-mini"},
    event_time_ms=1_763_900_000_123,
    received_at_ms=1_763_900_000_456,
)


def _records_per_second_per_batch(statements: list[str], namespace: dict[str, Any], rounds: int) -> list[list[float]]:
    """Records/s of each statement, one figure per batch, measured interleaved.

    Statements run inline in timeit's compiled loop, so neither side pays a wrapper call.
    """
    timers = [timeit.Timer(statement, globals=namespace) for statement in statements]
    rates: list[list[float]] = [[] for _ in timers]
    for round_number in range(rounds):
        order = list(range(len(timers)))
        if round_number % 2:  # alternate the order so no statement always follows the same one
            order.reverse()
        for index in order:
            rates[index].append(BATCH_RECORDS / timers[index].timeit(BATCH_RECORDS))
    return rates


def _measurement(name: str, codec_rates: list[float], ceiling_rates: list[float]) -> dict[str, Any]:
    return measurement(name, "records/s", codec_rates, ceiling_rates, at_least=TARGET_RECORDS_PER_SECOND,
                       min_ratio=TARGET_RATIO)


def _mock_registry_codec() -> FactCodec:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return FactCodec(registry_client=SchemaRegistryClient.new_client({"url": "mock://codec-bench"}))


def run() -> list[dict[str, Any]]:
    """Measure encode and decode of MeterEventRecorded in both framings against bare fastavro."""
    schema = load_catalogue().current[MeterEventRecorded].parsed
    record = to_avro(SAMPLE_FACT)
    stream = BytesIO()
    schemaless_writer(stream, schema, record)
    body = stream.getvalue()
    namespace: dict[str, Any] = {
        "BytesIO": BytesIO,
        "schemaless_writer": schemaless_writer,
        "schemaless_reader": schemaless_reader,
        "schema": schema,
        "record": record,
        "body": body,
        "fact": SAMPLE_FACT,
    }
    ceilings = {
        "encode": "stream = BytesIO(); schemaless_writer(stream, schema, record); stream.getvalue()",
        "decode": "schemaless_reader(BytesIO(body), schema, None)",
    }
    candidates: dict[str, str] = {}
    for framing, codec in (("single-object", FactCodec()), ("confluent", _mock_registry_codec())):
        framed = codec.encode(SAMPLE_FACT)
        assert codec.decode(framed) == SAMPLE_FACT and framed.endswith(body)
        tag = framing.replace("-", "_")
        namespace[f"{tag}_codec"], namespace[f"{tag}_framed"] = codec, framed
        candidates[f"codec encode MeterEventRecorded ({framing})"] = f"{tag}_codec.encode(fact)"
        candidates[f"codec decode MeterEventRecorded ({framing})"] = f"{tag}_codec.decode({tag}_framed)"
    names = [*candidates, *ceilings]
    rates = dict(zip(names, _records_per_second_per_batch([*candidates.values(), *ceilings.values()], namespace,
                                                          QUICK_ROUNDS if quick() else ROUNDS), strict=True))
    return [
        _measurement(name, rates[name], rates["encode" if " encode " in name else "decode"]) for name in candidates
    ]

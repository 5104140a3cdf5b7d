"""Micro-benchmark of the fact codec on the hot fact, MeterEventRecorded (not a test).

Each measurement runs the codec and its ceiling, bare fastavro `schemaless_writer` /
`schemaless_reader` of the same record with the same parsed schema (a fresh BytesIO each time,
as the codec needs too), interleaved in short batches (alternating the order) and keeps the best
batch of each: on a shared 2-core machine the best batch is the least disturbed one, and
interleaving exposes both sides to the same noise.
Target: >= 200,000 records/s each way on one core, and >= 0.8 of the ceiling.

    python -m benchmarks.codec_bench
"""

from __future__ import annotations

import timeit
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from billing.facts import MeterEventRecorded
from schemas.catalogue import load_catalogue
from schemas.codec import FactCodec, to_avro

TARGET_RECORDS_PER_SECOND = 200_000
TARGET_RATIO = 0.8
BATCH_RECORDS = 4_000
ROUNDS = 40

# A typical LLM token meter event as the ingest API receives it.
SAMPLE_FACT = MeterEventRecorded(
    customer_id="cus_NffrFeUfNV2Hib",
    event_name="llm_input_tokens",
    identifier="req_8f14e45fceea167a5a36dedd4bea2543",
    payload={"stripe_customer_id": "cus_NffrFeUfNV2Hib", "value": "1843", "model": "gpt-4.1-mini"},
    event_time_ms=1_763_900_000_123,
    received_at_ms=1_763_900_000_456,
)


def _best_seconds_per_record(statements: list[str], namespace: dict[str, Any]) -> list[float]:
    """Best (least disturbed) batch time per record of each statement, measured interleaved.

    Statements run inline in timeit's compiled loop, so neither side pays a wrapper call.
    """
    timers = [timeit.Timer(statement, globals=namespace) for statement in statements]
    best = [float("inf")] * len(timers)
    for round_number in range(ROUNDS):
        order = list(range(len(timers)))
        if round_number % 2:  # alternate the order so no statement always follows the same one
            order.reverse()
        for index in order:
            best[index] = min(best[index], timers[index].timeit(BATCH_RECORDS) / BATCH_RECORDS)
    return best


def _measurement(name: str, codec_seconds: float, ceiling_seconds: float) -> dict[str, Any]:
    measured = 1 / codec_seconds
    ceiling = 1 / ceiling_seconds
    ratio = measured / ceiling
    return {
        "name": name,
        "unit": "records/s",
        "measured": round(measured),
        "ceiling": round(ceiling),
        "ratio": round(ratio, 3),
        "target": f">= {TARGET_RECORDS_PER_SECOND}/s and ratio >= {TARGET_RATIO}",
        "passed": measured >= TARGET_RECORDS_PER_SECOND and ratio >= TARGET_RATIO,
    }


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
    seconds = dict(zip(names, _best_seconds_per_record([*candidates.values(), *ceilings.values()], namespace)))
    return [
        _measurement(name, seconds[name], seconds["encode" if " encode " in name else "decode"]) for name in candidates
    ]


if __name__ == "__main__":
    for result in run():
        print(
            f"{result['name']:<52} {result['measured']:>9,} {result['unit']}  ceiling {result['ceiling']:>9,}"
            f"  ratio {result['ratio']:.3f}  {'PASS' if result['passed'] else 'FAIL'} ({result['target']})"
        )

"""The raw log, read back from Kafka and decoded with fastavro and the schemas/*.avsc files alone.

Framing (README, DESIGN "Wire format"): Avro single-object encoding, C3 01 + the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form + the Avro
body. A fact comes out as (record name, plain dict); enums are their symbol strings, decimals
their canonical strings. No schema registry (the tests run without one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form
from io import BytesIO

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAGIC = b"\xc3\x01"


def _inline_shared_types(schema: object, shared: dict, defined: set) -> object:
    """The schema with each reference to a type of schemas/_named_types written out at its first
    use (the fingerprint is over the full definition)."""
    if isinstance(schema, str):
        if schema in shared and schema not in defined:
            defined.add(schema)
            return shared[schema]
        return schema
    if isinstance(schema, list):
        return [_inline_shared_types(branch, shared, defined) for branch in schema]
    if isinstance(schema, dict):
        return {key: _inline_shared_types(value, shared, defined) if key in ("type", "items", "values", "fields")
                else value for key, value in schema.items()}
    return schema


def _load_schemas() -> dict[bytes, tuple[str, dict]]:
    """fingerprint -> (record name, parsed schema), for every schema file and its history."""
    shared = {}
    for path in sorted((SCHEMAS_DIR / "_named_types").glob("*.avsc")):
        schema = json.loads(path.read_text())
        shared[f"{schema['namespace']}.{schema['name']}"] = schema
    by_fingerprint = {}
    for path in sorted(SCHEMAS_DIR.glob("*.avsc")) + sorted((SCHEMAS_DIR / "history").glob("*.avsc")):
        schema = _inline_shared_types(json.loads(path.read_text()), shared, set())
        canonical = to_parsing_canonical_form(schema)
        key = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        by_fingerprint[key] = (schema["name"], parse_schema(schema, _write_hint=False))
    return by_fingerprint


SCHEMAS = _load_schemas()


def decode(data: bytes) -> tuple[str, dict]:
    """(record name, fields) of one single-object-encoded fact; ValueError if it is not one."""
    if data[:2] != MAGIC or data[2:10] not in SCHEMAS:
        raise ValueError("not a single-object-encoded fact of a known schema")
    name, schema = SCHEMAS[data[2:10]]
    return name, schemaless_reader(BytesIO(data[10:]), schema, None)


def read_records(kafka: Mapping[str, Any], topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """partition -> [(offset, value)] of every record now on `topic`, in offset order. `kafka`: the
    client configuration (bootstrap servers and security: Settings.kafka_client_config())."""
    consumer = Consumer({**kafka, "group.id": "unused-oracle-reader",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        records: dict[int, list[tuple[int, bytes]]] = {partition: [] for partition in partitions}
        last: dict[int, int] = {}  # partition -> offset of its last record now
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                last[partition] = high - 1
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in last])
        unread = set(last)
        while unread:
            messages = consumer.consume(10_000, timeout=0.2)
            if not messages:  # a partition whose last offset holds no record (a control record) is read too
                for position in consumer.position([TopicPartition(topic, p) for p in unread]):
                    if position.offset > last[position.partition]:
                        unread.discard(position.partition)
            for message in messages:
                if message.error() is None and message.offset() <= last[message.partition()]:
                    records[message.partition()].append((message.offset(), message.value()))
                    if message.offset() == last[message.partition()]:
                        unread.discard(message.partition())
    finally:
        consumer.close()
    return records


def read_facts(kafka: Mapping[str, Any], topic: str) -> dict[int, list[tuple[int, str | None, dict | bytes]]]:
    """partition -> [(offset, record name or None when undecodable, fields or the raw bytes)]."""
    facts = {}
    for partition, rows in read_records(kafka, topic).items():
        decoded = []
        for offset, value in rows:
            try:
                name, fields = decode(value)
                decoded.append((offset, name, fields))
            except Exception:  # noqa: BLE001 - an undecodable record is a fact of the log too
                decoded.append((offset, None, value))
        facts[partition] = decoded
    return facts

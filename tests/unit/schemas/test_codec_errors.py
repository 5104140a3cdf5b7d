from __future__ import annotations

from io import BytesIO

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.facts import ALL_FACTS, MeterDefined, MeterEventRecorded, UsageBucketUpdated
from schemas.schema_files import load_catalogue
from schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, FactCodec, to_avro
from schemas.errors import (
    CorruptFact,
    EmptyFact,
    FactCodecError,
    SchemaRegistryUnavailable,
    TruncatedFact,
    UndecodableFact,
    UnencodableFact,
    UnknownMagicByte,
    UnknownSchemaFingerprint,
    UnknownSchemaId,
)
from tests.unit.schemas.fact_strategies import fact_strategy

CODEC = FactCodec()
SAMPLE = MeterEventRecorded(
    customer_id="cus_1", event_name="tokens", identifier="evt_1", payload={"value": "7"}, event_time_ms=1, received_at_ms=2
)
SAMPLE_FRAMED = CODEC.encode(SAMPLE)


def single_object(fact_class: type, record: dict) -> bytes:
    """A single-object frame around `record` written with fact_class's current schema."""
    fact_schema = load_catalogue().current[fact_class]
    body = BytesIO()
    schemaless_writer(body, fact_schema.parsed, record)
    return SINGLE_OBJECT_MAGIC + fact_schema.fingerprint + body.getvalue()


@pytest.mark.parametrize("empty", [b"", None], ids=["no_bytes", "tombstone"])
def test_an_empty_value_is_an_empty_fact(empty):
    with pytest.raises(EmptyFact) as raised:
        CODEC.decode(empty)
    assert raised.value.reason_code == "empty_fact"


@pytest.mark.parametrize("value", [b"\x01" + SAMPLE_FRAMED[1:], b"{\"json\": true}", b"\xc3\x02" + SAMPLE_FRAMED[2:]])
def test_a_value_with_neither_magic_is_an_unknown_magic_byte(value):
    with pytest.raises(UnknownMagicByte) as raised:
        CODEC.decode(value)
    assert raised.value.reason_code == "unknown_magic_byte"


def test_a_single_object_fingerprint_of_no_known_schema_is_an_unknown_schema_fingerprint():
    with pytest.raises(UnknownSchemaFingerprint) as raised:
        CODEC.decode(SINGLE_OBJECT_MAGIC + b"\x00" * 8 + SAMPLE_FRAMED[10:])
    assert raised.value.reason_code == "unknown_schema_fingerprint"


def test_a_schema_id_the_registry_does_not_know_is_an_unknown_schema_id(registry_codec):
    with pytest.raises(UnknownSchemaId) as raised:
        registry_codec.decode(CONFLUENT_MAGIC + (4242).to_bytes(4, "big") + SAMPLE_FRAMED[10:])
    assert raised.value.reason_code == "unknown_schema_id"
    assert raised.value.__cause__ is not None  # the registry's 404


def test_confluent_framing_without_a_registry_is_an_unknown_schema_id():
    with pytest.raises(UnknownSchemaId):
        CODEC.decode(CONFLUENT_MAGIC + (1).to_bytes(4, "big") + SAMPLE_FRAMED[10:])


def test_a_schema_id_of_a_schema_that_is_not_a_fact_is_an_unknown_schema_id(registry_client, registry_codec):
    from confluent_kafka.schema_registry import Schema

    foreign = '{"type": "record", "name": "Other", "namespace": "elsewhere", "fields": []}'
    foreign_id = registry_client.register_schema("elsewhere.Other", Schema(foreign, "AVRO"))

    with pytest.raises(UnknownSchemaId):
        registry_codec.decode(CONFLUENT_MAGIC + foreign_id.to_bytes(4, "big"))


class UnreachableRegistry:
    def get_schema(self, schema_id):
        raise ConnectionRefusedError("registry down")

    def register_schema(self, subject, schema):
        raise ConnectionRefusedError("registry down")


def test_an_unreachable_registry_is_retryable_not_a_dead_letter():
    codec = FactCodec(registry_client=UnreachableRegistry())

    with pytest.raises(SchemaRegistryUnavailable) as decoding:
        codec.decode(CONFLUENT_MAGIC + (1).to_bytes(4, "big") + SAMPLE_FRAMED[10:])
    with pytest.raises(SchemaRegistryUnavailable):
        codec.encode(SAMPLE)

    assert not isinstance(decoding.value, UndecodableFact)
    assert decoding.value.reason_code == "schema_registry_unavailable"


@pytest.mark.parametrize("header", [b"\xc3", SINGLE_OBJECT_MAGIC + b"\x01\x02\x03", b"\x00", b"\x00\x00\x01"])
def test_a_value_shorter_than_its_header_is_a_truncated_fact(header):
    with pytest.raises(TruncatedFact) as raised:
        CODEC.decode(header)
    assert raised.value.reason_code == "truncated_fact"


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=[fact_class.__name__ for fact_class in ALL_FACTS])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_any_fact_cut_anywhere_in_its_body_is_a_truncated_fact(fact_class, data):
    framed = CODEC.encode(data.draw(fact_strategy(fact_class)))
    cut = data.draw(st.integers(min_value=10, max_value=len(framed) - 1))

    with pytest.raises(TruncatedFact) as raised:
        CODEC.decode(framed[:cut])
    assert isinstance(raised.value.__cause__, (EOFError, IndexError))  # raised from fastavro's error


def test_bytes_after_the_record_make_a_corrupt_fact():
    with pytest.raises(CorruptFact) as raised:
        CODEC.decode(SAMPLE_FRAMED + b"\x00")
    assert raised.value.reason_code == "corrupt_fact"


def test_invalid_utf8_in_a_string_is_a_corrupt_fact():
    body = bytearray(SAMPLE_FRAMED)
    body[11:13] = b"\xff\xfe"  # inside customer_id "cus_1"

    with pytest.raises(CorruptFact) as raised:
        CODEC.decode(bytes(body))
    assert isinstance(raised.value.__cause__, UnicodeDecodeError)


def test_an_enum_index_beyond_the_symbols_is_a_corrupt_fact():
    fact = MeterDefined(meter_id="m", display_name="d", event_name="e", aggregation="sum", created_at_ms=0)
    framed = bytearray(CODEC.encode(fact))
    enum_offset = 10 + 6  # after three one-character strings (length byte + character each)
    assert framed[enum_offset] == 0  # "sum" is symbol 0
    framed[enum_offset] = 40  # zigzag 20: no such symbol

    with pytest.raises(CorruptFact):
        CODEC.decode(bytes(framed))


@pytest.mark.parametrize("not_canonical", ["1e5", "NaN", "+1", " 1", "1.", ".5", "abc", ""])
def test_a_decimal_field_that_is_not_a_canonical_decimal_string_is_a_corrupt_fact(not_canonical):
    record = {"customer_id": "c", "meter_id": "m", "bucket_start_ms": 0, "value": not_canonical, "event_count": 1, "updated_at_ms": 0}

    with pytest.raises(CorruptFact):
        CODEC.decode(single_object(UsageBucketUpdated, record))


def test_a_value_that_is_not_a_fact_cannot_be_encoded():
    with pytest.raises(UnencodableFact):
        CODEC.encode({"customer_id": "c"})


def test_a_field_holding_the_wrong_type_cannot_be_encoded():
    broken = MeterEventRecorded(
        customer_id=None, event_name="e", identifier="i", event_time_ms=0, received_at_ms=0  # type: ignore[arg-type]
    )

    with pytest.raises(UnencodableFact) as raised:
        CODEC.encode(broken)
    assert raised.value.__cause__ is not None


def test_every_codec_error_shares_one_root_with_a_distinct_reason_code():
    error_classes = [
        UndecodableFact, EmptyFact, UnknownMagicByte, UnknownSchemaFingerprint, UnknownSchemaId,
        TruncatedFact, CorruptFact, UnencodableFact, SchemaRegistryUnavailable,
    ]  # fmt: skip

    assert all(issubclass(error_class, FactCodecError) for error_class in error_classes)
    assert len({error_class.reason_code for error_class in error_classes}) == len(error_classes)


def test_to_avro_of_the_sample_is_what_the_error_tests_assume():
    # The byte offsets used above (customer_id at 11..) depend on this layout.
    assert to_avro(SAMPLE)["customer_id"] == "cus_1" and SAMPLE_FRAMED[10] == 2 * len("cus_1")

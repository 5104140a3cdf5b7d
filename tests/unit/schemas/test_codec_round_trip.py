from __future__ import annotations

import json
from decimal import Decimal
from io import BytesIO

import avro.schema
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.facts import (
    ALL_FACTS,
    CustomerCreated,
    MeterEventRecorded,
    SubscriptionCreated,
    SubscriptionItem,
    SubscriptionItemsChanged,
    UsageBucketUpdated,
)
from schemas.schema_files import load_catalogue
from schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    FactCodec,
    decimal_from_avro,
    decimal_to_avro,
    from_avro,
    to_avro,
)
from schemas.errors import EmptyFact, UnencodableFact
from tests.unit.schemas.fact_strategies import DECIMALS, fact_strategy

# One registry for the whole module: hypothesis runs many examples per test.
REGISTRY_CODEC = FactCodec(registry_client=SchemaRegistryClient.new_client({"url": "mock://round-trip"}))
SINGLE_OBJECT_CODEC = FactCodec()
FACT_NAMES = [fact_class.__name__ for fact_class in ALL_FACTS]

SAMPLE = MeterEventRecorded(
    customer_id="cus_ü",
    event_name="llm_tokens",
    identifier="evt_1",
    payload={"value": "12", "stripe_customer_id": "cus_ü"},
    event_time_ms=1_763_900_000_000,
    received_at_ms=1_763_900_000_001,
)


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
@pytest.mark.parametrize("codec", [SINGLE_OBJECT_CODEC, REGISTRY_CODEC], ids=["single_object", "confluent"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_fact_survives_encode_then_decode_unchanged(fact_class, codec, data):
    fact = data.draw(fact_strategy(fact_class))

    decoded = codec.decode(codec.encode(fact))

    assert type(decoded) is fact_class
    assert decoded == fact
    assert repr(decoded) == repr(fact)  # exact Decimal digits, enum members, dict order


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_single_object_header_is_magic_then_the_avro_reference_fingerprint(fact_class, data):
    fact_schema = load_catalogue().current[fact_class]
    fact = data.draw(fact_strategy(fact_class))

    framed = SINGLE_OBJECT_CODEC.encode(fact)

    # Cross-checked against Apache avro's own CRC-64-AVRO (little-endian, as the spec frames it).
    reference_fingerprint = avro.schema.parse(fact_schema.schema_json).fingerprint("CRC-64-AVRO")
    assert framed[:10] == SINGLE_OBJECT_MAGIC + reference_fingerprint


def test_confluent_framing_is_magic_zero_then_the_big_endian_id_under_the_record_name_subject(registry_client):
    codec = FactCodec(registry_client=registry_client)

    framed = codec.encode(SAMPLE)

    registered = registry_client.get_latest_version("drawdown.facts.MeterEventRecorded")
    assert framed[:5] == CONFLUENT_MAGIC + registered.schema_id.to_bytes(4, "big")
    assert codec.schema_ids[MeterEventRecorded] == registered.schema_id


class CountingRegistry:
    """Delegates to a registry client and counts the calls that reach it."""

    def __init__(self, client):
        self.client = client
        self.calls: list[str] = []

    def register_schema(self, subject, schema):
        self.calls.append(f"register {subject}")
        return self.client.register_schema(subject, schema)

    def lookup_schema(self, subject, schema):
        self.calls.append(f"lookup {subject}")
        return self.client.lookup_schema(subject, schema)

    def get_schema(self, schema_id):
        self.calls.append(f"get {schema_id}")
        return self.client.get_schema(schema_id)


def test_schema_ids_are_asked_of_the_registry_once_per_class_and_once_per_id(registry_client):
    producer_registry = CountingRegistry(registry_client)
    consumer_registry = CountingRegistry(registry_client)
    producer = FactCodec(registry_client=producer_registry)
    consumer = FactCodec(registry_client=consumer_registry)

    framed = [producer.encode(SAMPLE) for _ in range(3)]
    decoded = [consumer.decode(value) for value in framed]

    assert decoded == [SAMPLE] * 3
    assert producer_registry.calls == ["register drawdown.facts.MeterEventRecorded"]
    assert consumer_registry.calls == [f"get {producer.schema_ids[MeterEventRecorded]}"]


def test_a_codec_that_does_not_auto_register_looks_up_the_existing_id(registry_client):
    registering = FactCodec(registry_client=registry_client)
    registered_id = int.from_bytes(registering.encode(SAMPLE)[1:5], "big")
    looking_up = FactCodec(registry_client=registry_client, auto_register=False)

    assert looking_up.encode(SAMPLE)[1:5] == registered_id.to_bytes(4, "big")


def test_a_codec_that_does_not_auto_register_refuses_a_fact_whose_schema_is_not_registered(registry_client):
    codec = FactCodec(registry_client=registry_client, auto_register=False)

    with pytest.raises(UnencodableFact):
        codec.encode(SAMPLE)


def test_either_codec_decodes_the_other_framing_when_both_know_the_registry(registry_client):
    with_registry = FactCodec(registry_client=registry_client)
    without_registry = FactCodec()
    registry_framed = with_registry.encode(SAMPLE)
    with_registry_reader = FactCodec(registry_client=registry_client)

    assert with_registry.decode(without_registry.encode(SAMPLE)) == SAMPLE
    assert with_registry_reader.decode(registry_framed) == SAMPLE


def test_an_older_schema_version_decodes_into_the_current_class_with_defaults():
    v1 = load_catalogue().versions[CustomerCreated][0]
    assert v1.version == 1 and "test_clock_id" not in {field["name"] for field in v1.schema["fields"]}
    body = BytesIO()
    v1_record = {"customer_id": "cus_1", "name": "Ada", "email": None, "created_at_ms": 5, "metadata": {"k": "v"}}
    schemaless_writer(body, v1.parsed, v1_record)

    decoded = SINGLE_OBJECT_CODEC.decode(SINGLE_OBJECT_MAGIC + v1.fingerprint + body.getvalue())

    assert decoded == CustomerCreated(customer_id="cus_1", name="Ada", created_at_ms=5, metadata={"k": "v"})
    assert decoded.test_clock_id is None


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_subscription_created_with_items_decodes_into_items_with_empty_metadata(version):
    # v1 and v2 wrote SubscriptionItem without metadata (their history files inline that item type).
    old = load_catalogue().versions[SubscriptionCreated][version - 1]
    record = {"subscription_id": "sub_1", "customer_id": "cus_1", "currency": "usd", "billing_cycle_anchor_ms": 5,
              "created_at_ms": 5, "test_clock_id": None,
              "items": [{"item_id": "si_1", "price_id": "price_1", "quantity": 3}]}
    if version == 2:
        record["metadata"] = {"plan": "pro"}
    body = BytesIO()
    schemaless_writer(body, old.parsed, record)

    decoded = SINGLE_OBJECT_CODEC.decode(SINGLE_OBJECT_MAGIC + old.fingerprint + body.getvalue())

    assert decoded.items == (SubscriptionItem(item_id="si_1", price_id="price_1", quantity=3),)
    assert decoded.items[0].metadata == {}
    assert decoded.metadata == ({"plan": "pro"} if version == 2 else {})


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_subscription_items_changed_decodes_into_items_with_empty_metadata(version):
    old = load_catalogue().versions[SubscriptionItemsChanged][version - 1]
    record = {"subscription_id": "sub_1", "customer_id": "cus_1", "changed_at_ms": 7,
              "items": [{"item_id": "si_1", "price_id": "price_1", "quantity": 1},
                        {"item_id": "si_2", "price_id": "price_2", "quantity": 2}]}
    if version == 2:
        record["effective_from_ms"] = 100
    body = BytesIO()
    schemaless_writer(body, old.parsed, record)

    decoded = SINGLE_OBJECT_CODEC.decode(SINGLE_OBJECT_MAGIC + old.fingerprint + body.getvalue())

    assert [(item.item_id, item.quantity, item.metadata) for item in decoded.items] == [("si_1", 1, {}), ("si_2", 2, {})]
    assert decoded.effective_from_ms == (100 if version == 2 else None)


def test_decode_many_yields_facts_and_errors_in_order():
    values = [SINGLE_OBJECT_CODEC.encode(SAMPLE), b"", SINGLE_OBJECT_CODEC.encode(SAMPLE)]

    results = SINGLE_OBJECT_CODEC.decode_many(values)

    assert results[0] == SAMPLE and results[2] == SAMPLE
    assert isinstance(results[1], EmptyFact)


def test_encode_many_frames_each_fact_like_encode():
    assert SINGLE_OBJECT_CODEC.encode_many([SAMPLE, SAMPLE]) == [SINGLE_OBJECT_CODEC.encode(SAMPLE)] * 2


@given(value=DECIMALS)
def test_decimals_travel_as_canonical_strings_and_come_back_with_the_same_digits(value):
    text = decimal_to_avro(value)

    assert "E" not in text and "e" not in text and "+" not in text
    assert repr(decimal_from_avro(text)) == repr(Decimal(text))
    assert decimal_from_avro(text) == value


def test_a_tiny_decimal_is_written_without_an_exponent():
    assert decimal_to_avro(Decimal("1E-12")) == "0.000000000001"


@pytest.mark.parametrize("not_a_decimal", [0.1, 1, Decimal("NaN"), Decimal("Infinity")])
def test_a_decimal_field_refuses_floats_ints_and_non_finite_values(not_a_decimal):
    fact = UsageBucketUpdated(
        customer_id="c", meter_id="m", bucket_start_ms=0, value=not_a_decimal, event_count=1, updated_at_ms=0
    )

    with pytest.raises(UnencodableFact) as raised:
        SINGLE_OBJECT_CODEC.encode(fact)
    assert raised.value.reason_code == "unencodable_fact"


def test_to_avro_and_from_avro_are_inverse_and_from_avro_does_not_keep_the_callers_dict():
    record = to_avro(SAMPLE)

    fact = from_avro(MeterEventRecorded, record)
    record["customer_id"] = "changed"

    assert fact == SAMPLE
    assert json.dumps(to_avro(fact), sort_keys=True) == json.dumps(to_avro(SAMPLE), sort_keys=True)


@pytest.mark.parametrize(
    ("registry_url", "magic"), [("", SINGLE_OBJECT_MAGIC), ("mock://default-codec", CONFLUENT_MAGIC)], ids=["none", "mock"]
)
def test_the_module_level_codec_frames_by_the_configured_registry_url(monkeypatch, registry_url, magic):
    from drawdown.settings import get_settings
    from schemas import codec as codec_module

    monkeypatch.setenv("SCHEMA_REGISTRY_URL", registry_url)
    monkeypatch.setattr(codec_module, "_default_codec", None)
    get_settings.cache_clear()
    try:
        framed = codec_module.encode(SAMPLE)

        assert framed.startswith(magic)
        assert codec_module.decode(framed) == SAMPLE
    finally:
        get_settings.cache_clear()

from __future__ import annotations

import copy
import json

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from billing.facts import ALL_FACTS, CustomerCreated, SubscriptionCreated, SubscriptionItemsChanged
from schemas.schema_files import load_catalogue

VERSION_PAIRS = [
    pytest.param(older, newer, id=f"{newer.fact_class.__name__}-v{older.version}-to-v{newer.version}")
    for fact_class in ALL_FACTS
    for older, newer in zip(load_catalogue().versions[fact_class], load_catalogue().versions[fact_class][1:])
]


def compatibility(reader_schema: dict, writer_schema: dict) -> SchemaCompatibilityType:
    """Can a reader with reader_schema read data written with writer_schema (Apache avro's check)?"""
    reader = avro.schema.parse(json.dumps(reader_schema))
    writer = avro.schema.parse(json.dumps(writer_schema))
    return ReaderWriterCompatibilityChecker().get_compatibility(reader, writer).compatibility


def test_the_schema_history_holds_at_least_one_older_version():
    assert VERSION_PAIRS, "no schemas/history/*.v<N>.avsc: the BACKWARD check below would check nothing"


@pytest.mark.parametrize(("older", "newer"), VERSION_PAIRS)
def test_every_schema_version_is_backward_compatible_with_its_predecessor(older, newer):
    # BACKWARD: consumers on the newer schema read everything written with the older one.
    assert compatibility(reader_schema=newer.schema, writer_schema=older.schema) is SchemaCompatibilityType.compatible


def test_the_check_rejects_a_new_required_field_without_a_default():
    current = load_catalogue().current[CustomerCreated].schema
    breaking = copy.deepcopy(current)
    breaking["fields"].append({"name": "tax_id", "type": "string", "doc": "Required, no default: breaks old data."})

    assert compatibility(reader_schema=breaking, writer_schema=current) is SchemaCompatibilityType.incompatible


def test_the_check_rejects_changing_a_field_type_incompatibly():
    current = load_catalogue().current[CustomerCreated].schema
    breaking = copy.deepcopy(current)
    next(field for field in breaking["fields"] if field["name"] == "created_at_ms")["type"] = "string"

    assert compatibility(reader_schema=breaking, writer_schema=current) is SchemaCompatibilityType.incompatible


# Fingerprints of versions already written to logs: a stored fact names its schema by fingerprint, so
# an older version's must never change (e.g. through a shared named type it refers to: the history
# files inline SubscriptionItem as it was when they were current).
STORED_FINGERPRINTS = {
    (SubscriptionCreated, 1): "72397cdacfdffa33",
    (SubscriptionCreated, 2): "bac9072455cd6a2b",
    (SubscriptionItemsChanged, 1): "9a56463f6082f101",
    (SubscriptionItemsChanged, 2): "0b563194d52733ec",
}


@pytest.mark.parametrize(("fact_class", "version"), list(STORED_FINGERPRINTS),
                         ids=[f"{cls.__name__}-v{version}" for cls, version in STORED_FINGERPRINTS])
def test_an_older_version_keeps_the_fingerprint_its_stored_facts_carry(fact_class, version):
    older = load_catalogue().versions[fact_class][version - 1]

    assert older.version == version
    assert older.fingerprint.hex() == STORED_FINGERPRINTS[fact_class, version]

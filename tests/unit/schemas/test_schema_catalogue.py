from __future__ import annotations

import dataclasses
import json
import typing
from decimal import Decimal

import pytest

from billing.facts import ALL_FACTS
from schemas.schema_files import NAMESPACE, SCHEMAS_DIR, load_catalogue, snake_case

FACT_NAMES = [fact_class.__name__ for fact_class in ALL_FACTS]


def records_with_classes(schema: dict, fact_class: type):
    """(record schema, its Python class) for the fact and every nested record, depth first."""
    yield schema, fact_class
    hints = typing.get_type_hints(fact_class)
    for field in schema["fields"]:
        nested = _nested_record(field["type"])
        if nested is not None:
            nested_class = next(
                argument
                for argument in [hints[field["name"]], *typing.get_args(hints[field["name"]])]
                if dataclasses.is_dataclass(argument)
            )
            yield from records_with_classes(nested, nested_class)


def _nested_record(avro_type):
    if isinstance(avro_type, list):
        return next(filter(None, map(_nested_record, avro_type)), None)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "record":
            return avro_type
        return _nested_record(avro_type.get("items"))
    return None


def test_every_fact_class_has_exactly_one_current_schema_file_and_every_file_a_class():
    expected = {f"{snake_case(fact_class.__name__)}.avsc" for fact_class in ALL_FACTS}

    on_disk = {path.name for path in SCHEMAS_DIR.glob("*.avsc")}

    assert on_disk == expected
    assert len(expected) == len(ALL_FACTS) == len(load_catalogue().current)


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
def test_each_schema_is_the_class_record_in_the_drawdown_namespace(fact_class):
    on_disk = json.loads((SCHEMAS_DIR / f"{snake_case(fact_class.__name__)}.avsc").read_text())

    assert on_disk["type"] == "record"
    assert on_disk["name"] == fact_class.__name__
    assert on_disk["namespace"] == NAMESPACE


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
def test_field_names_match_the_class_in_order_at_every_depth(fact_class):
    schema = load_catalogue().current[fact_class].schema

    for record, record_class in records_with_classes(schema, fact_class):
        assert [field["name"] for field in record["fields"]] == [
            field.name for field in dataclasses.fields(record_class)
        ], record["name"]
        assert record["name"] == record_class.__name__


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
def test_every_record_and_field_is_documented(fact_class):
    schema = load_catalogue().current[fact_class].schema

    for record, _ in records_with_classes(schema, fact_class):
        assert record.get("doc"), record["name"]
        for field in record["fields"]:
            assert field.get("doc"), f"{record['name']}.{field['name']}"


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
def test_field_types_follow_the_catalogue_conventions(fact_class):
    schema = load_catalogue().current[fact_class].schema

    for record, record_class in records_with_classes(schema, fact_class):
        hints = typing.get_type_hints(record_class)
        defaults = {field.name: field for field in dataclasses.fields(record_class)}
        for field in record["fields"]:
            name, avro_type, hint = field["name"], field["type"], hints[field["name"]]
            where = f"{record['name']}.{name}"
            if hint is Decimal:
                assert avro_type == "string" and "canonical decimal" in field["doc"].lower(), where
            if name.endswith(("_ms", "_minor")):
                assert avro_type in ("long", ["null", "long"]), where
            if defaults[name].default is None:  # optional: a null-first union defaulting to null
                assert avro_type[0] == "null" and field["default"] is None, where
            if defaults[name].default_factory is not dataclasses.MISSING:  # maps
                assert avro_type == {"type": "map", "values": "string"} and field["default"] == {}, where


@pytest.mark.parametrize("fact_class", ALL_FACTS, ids=FACT_NAMES)
def test_schema_defaults_equal_the_class_defaults(fact_class):
    schema = load_catalogue().current[fact_class].schema

    for record, record_class in records_with_classes(schema, fact_class):
        for field, schema_field in zip(dataclasses.fields(record_class), record["fields"], strict=True):
            if field.default is not dataclasses.MISSING:
                expected = list(field.default) if isinstance(field.default, tuple) else field.default
                assert schema_field["default"] == expected, f"{record['name']}.{field.name}"
            elif field.default_factory is dataclasses.MISSING:
                assert "default" not in schema_field, f"{record['name']}.{field.name}"

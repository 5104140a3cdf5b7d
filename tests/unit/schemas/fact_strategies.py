"""hypothesis strategies for every fact class, derived from its type hints and its Avro schema
(an Avro `int` field gets 32-bit values, a `long` field 64-bit ones)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from decimal import Decimal
from functools import cache
from typing import Any

from hypothesis import strategies as st

from schemas.schema_files import load_catalogue

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Any unicode text the wire can hold (hypothesis never draws lone surrogates by default).
TEXT = st.text(max_size=30)
DECIMALS = st.integers(min_value=0, max_value=12).flatmap(
    lambda places: st.decimals(allow_nan=False, allow_infinity=False, places=places)
)


def _avro_int_fields(schema: Any, found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """(record name, field name) of every Avro `int` field, at any depth."""
    if isinstance(schema, list):
        for branch in schema:
            _avro_int_fields(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                if field["type"] == "int" or (isinstance(field["type"], list) and "int" in field["type"]):
                    found.add((schema["name"].rpartition(".")[2], field["name"]))
                _avro_int_fields(field["type"], found)
        else:
            _avro_int_fields(schema.get("items"), found)
            _avro_int_fields(schema.get("values"), found)
    return found


@cache
def _int32_fields() -> frozenset[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for fact_schema in load_catalogue().current.values():
        _avro_int_fields(fact_schema.schema, found)
    return frozenset(found)


def _for_hint(owner: type, field_name: str, hint: Any) -> st.SearchStrategy[Any]:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return TEXT
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INT32 if (owner.__name__, field_name) in _int32_fields() else INT64
    if hint is bytes:
        return st.binary(max_size=40)
    if hint is Decimal:
        return DECIMALS
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(hint)
    if dataclasses.is_dataclass(hint):
        return fact_strategy(hint)
    if origin is Mapping:
        return st.dictionaries(TEXT, TEXT, max_size=4)
    if origin is tuple:
        return st.lists(_for_hint(owner, field_name, arguments[0]), max_size=3).map(tuple)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return st.none() | _for_hint(owner, field_name, inner)
    raise TypeError(f"no strategy for {hint!r}")


@cache
def fact_strategy(fact_class: type) -> st.SearchStrategy[Any]:
    """Valid instances of `fact_class` (or of a nested type), every field drawn."""
    hints = typing.get_type_hints(fact_class)
    return st.builds(
        fact_class,
        **{field.name: _for_hint(fact_class, field.name, hints[field.name]) for field in dataclasses.fields(fact_class)},
    )

"""The fact schemas on disk, loaded once: every version of every fact's .avsc, self-contained.

Layout of schemas/:
- `<snake_case_of_class>.avsc`: the current schema of one fact (record name = class name).
- `_named_types/<snake_case>.avsc`: named types used by more than one fact (SubscriptionItem);
  facts refer to them by full name. Types used by one fact only are defined inline there.
- `history/<snake_case>.v<N>.avsc`: older versions, oldest first; the current file is the newest
  version (N + 1 of the highest history file).

Every schema is made self-contained on load (each named type inlined at its first use), because
the parsing canonical form, the CRC-64-AVRO fingerprint and the schema registry all need the
full definition, not a reference to another file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from billing.facts import ALL_FACTS

SCHEMAS_DIR = Path(__file__).resolve().parent
NAMED_TYPES_DIR = SCHEMAS_DIR / "_named_types"
HISTORY_DIR = SCHEMAS_DIR / "history"
NAMESPACE = "drawdown.facts"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_HISTORY_FILE = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")


@dataclass(frozen=True, slots=True, eq=False)
class FactSchema:
    """One version of one fact's schema."""

    fact_class: type
    version: int  # 1 = oldest; the highest is the current schema
    path: Path
    schema: Mapping[str, Any]  # self-contained JSON schema (named types inlined)
    parsed: Mapping[str, Any]  # fastavro parse_schema() result: parse once, reuse
    canonical_form: str  # Avro parsing canonical form
    fingerprint: bytes  # CRC-64-AVRO of the canonical form, 8 bytes little-endian (as on the wire)

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}.{self.fact_class.__name__}"

    @property
    def schema_json(self) -> str:
        """The self-contained schema as JSON text (what the schema registry stores)."""
        return json.dumps(self.schema, ensure_ascii=False)


@dataclass(frozen=True, slots=True, eq=False)
class SchemaCatalogue:
    """Every schema version of every fact, indexed the ways the codec needs."""

    current: Mapping[type, FactSchema]  # fact class -> newest schema
    versions: Mapping[type, tuple[FactSchema, ...]]  # fact class -> all versions, oldest first
    by_fingerprint: Mapping[bytes, FactSchema]
    by_full_name: Mapping[str, type]  # "drawdown.facts.MeterEventRecorded" -> class


def snake_case(class_name: str) -> str:
    """MeterEventRecorded -> meter_event_recorded (the .avsc file stem)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def full_name(schema: Mapping[str, Any], enclosing_namespace: str | None = None) -> str:
    """Full name of a named Avro type, resolving its namespace as the spec says."""
    name = schema["name"]
    if "." in name:
        return name
    namespace = schema.get("namespace", enclosing_namespace)
    return f"{namespace}.{name}" if namespace else name


def self_contained(schema: Any, named_types: Mapping[str, Mapping[str, Any]]) -> Any:
    """Copy of `schema` with each reference to a shared named type replaced by its definition at
    its first use (later uses stay references, as Avro requires)."""
    defined: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            name = node if "." in node else f"{namespace}.{node}"
            if name in defined:
                return node
            if name not in named_types:
                raise ValueError(f"unknown named type {node!r}")
            return walk(copy.deepcopy(named_types[name]), namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        node = dict(node)
        kind = node["type"]
        if kind in ("record", "error", "enum", "fixed"):
            name = full_name(node, namespace)
            if name in defined:
                raise ValueError(f"named type {name} defined twice")
            defined.add(name)
            inner_namespace = name.rpartition(".")[0] or None
            if kind in ("record", "error"):
                node["fields"] = [
                    {**field, "type": walk(field["type"], inner_namespace)} for field in node["fields"]
                ]
        elif kind == "array":
            node["items"] = walk(node["items"], namespace)
        elif kind == "map":
            node["values"] = walk(node["values"], namespace)
        else:
            node["type"] = walk(kind, namespace)
        return node

    return walk(schema, None)


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def _fact_schema(fact_class: type, version: int, path: Path, named_types: Mapping[str, Any]) -> FactSchema:
    schema = self_contained(_read_json(path), named_types)
    name = full_name(schema)
    if name != f"{NAMESPACE}.{fact_class.__name__}":
        raise ValueError(f"{path}: record {name} does not match class {fact_class.__name__}")
    canonical_form = to_parsing_canonical_form(schema)
    return FactSchema(
        fact_class=fact_class,
        version=version,
        path=path,
        schema=schema,
        parsed=parse_schema(schema),  # a fresh name space per version: versions share names
        canonical_form=canonical_form,
        fingerprint=bytes.fromhex(fingerprint(canonical_form, "CRC-64-AVRO")),
    )


@cache
def load_catalogue(schemas_dir: Path = SCHEMAS_DIR) -> SchemaCatalogue:
    """Load, inline and parse every schema version once (cached per directory)."""
    named_types = {
        full_name(schema): schema
        for schema in map(_read_json, sorted((schemas_dir / "_named_types").glob("*.avsc")))
    }
    history: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted((schemas_dir / "history").glob("*.avsc")):
        match = _HISTORY_FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: history files are named <fact>.v<N>.avsc")
        history.setdefault(match["stem"], []).append((int(match["version"]), path))

    versions: dict[type, tuple[FactSchema, ...]] = {}
    for fact_class in ALL_FACTS:
        stem = snake_case(fact_class.__name__)
        older = sorted(history.pop(stem, []))
        if [number for number, _ in older] != list(range(1, len(older) + 1)):
            raise ValueError(f"history of {stem} must be v1..vN without gaps")
        paths = [path for _, path in older] + [schemas_dir / f"{stem}.avsc"]
        versions[fact_class] = tuple(
            _fact_schema(fact_class, number, path, named_types) for number, path in enumerate(paths, start=1)
        )
    if history:
        raise ValueError(f"history files of unknown facts: {sorted(history)}")

    by_fingerprint: dict[bytes, FactSchema] = {}
    for fact_schema in (version for chain in versions.values() for version in chain):
        if fact_schema.fingerprint in by_fingerprint:
            raise ValueError(f"{fact_schema.path} has the fingerprint of {by_fingerprint[fact_schema.fingerprint].path}")
        by_fingerprint[fact_schema.fingerprint] = fact_schema
    return SchemaCatalogue(
        current={fact_class: chain[-1] for fact_class, chain in versions.items()},
        versions=versions,
        by_fingerprint=by_fingerprint,
        by_full_name={f"{NAMESPACE}.{fact_class.__name__}": fact_class for fact_class in ALL_FACTS},
    )

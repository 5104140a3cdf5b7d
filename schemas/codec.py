"""Facts to bytes and back: the only place where a fact meets Avro.

Two framings, one decoder:
- Avro single-object encoding (default): C3 01 + 8-byte little-endian CRC-64-AVRO fingerprint of
  the schema's parsing canonical form + schemaless Avro body. The fingerprint is resolved against
  every schema version in schemas/ (older versions are read into the current class).
- Confluent Schema Registry framing (when a registry is configured): 00 + 4-byte big-endian schema
  id + body. Subjects follow the record-name strategy ("drawdown.facts.MeterEventRecorded"),
  because one topic carries several fact types.

Fact <-> Avro dict conversion is generated once per class (see `_Converters`), so the hot path
does no reflection.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from billing.facts import Fact, MeterEventRecorded
from schemas.schema_files import FactSchema, SchemaCatalogue, full_name, load_catalogue
from schemas.errors import (
    CorruptFact,
    EmptyFact,
    SchemaRegistryUnavailable,
    TruncatedFact,
    UndecodableFact,
    UnencodableFact,
    UnknownMagicByte,
    UnknownSchemaFingerprint,
    UnknownSchemaId,
)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SINGLE_OBJECT_HEADER_BYTES = 10  # magic (2) + fingerprint (8)
CONFLUENT_HEADER_BYTES = 5  # magic (1) + schema id (4)

_ToAvro = Callable[[Any], dict[str, Any]]
_FromAvro = Callable[[dict[str, Any]], Any]
# What decoding one frame header needs: header length, writer schema, reader schema (None: the
# writer's is current), builder.
_Reader = tuple[int, Mapping[str, Any], Mapping[str, Any] | None, _FromAvro]
# What encoding one fact class needs: frame header, schema, converter.
_Writer = tuple[bytes, Mapping[str, Any], _ToAvro]


# --- decimals: canonical strings on the wire ---------------------------------------------------

_CANONICAL_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def decimal_to_avro(value: Decimal) -> str:
    """Canonical decimal string: optional '-', digits, optional '.digits'; no exponent."""
    if type(value) is not Decimal or not value.is_finite():
        raise ValueError(f"expected a finite Decimal, got {value!r}")  # never float, never int
    return format(value, "f")


def decimal_from_avro(text: str) -> Decimal:
    """Inverse of decimal_to_avro; rejects anything that is not a canonical decimal string."""
    if _CANONICAL_DECIMAL.fullmatch(text) is None:
        raise ValueError(f"not a canonical decimal string: {text[:40]!r}")
    return Decimal(text)


# --- fact <-> Avro dict, generated once per class ----------------------------------------------


class _Converters:
    """Generates and caches `to_avro(fact) -> dict` and `from_avro(dict) -> fact` per class.

    The functions are compiled from source once, so a conversion is a straight-line sequence of
    attribute reads and dict lookups. `from_avro` does not call the dataclass `__init__` (frozen,
    so it goes through `object.__setattr__` per field: ~0.78 us for MeterEventRecorded): it fills
    the slots of `object.__new__(cls)` through the slot descriptors (~0.32 us), or, for a class
    without slots (MeterEventRecorded, see billing/facts.py), adopts the record dict as the
    instance's __dict__ (~0.17 us). A class that defines `__post_init__` (a validation) is built
    through its constructor instead, so that check is never skipped.
    """

    def __init__(self) -> None:
        self._to: dict[type, _ToAvro] = {}
        self._from: dict[type, _FromAvro] = {}

    def to_avro(self, cls: type) -> _ToAvro:
        if cls not in self._to:
            self._to[cls] = self._compile(cls, to_avro=True)
        return self._to[cls]

    def from_avro(self, cls: type) -> _FromAvro:
        if cls not in self._from:
            self._from[cls] = self._compile(cls, to_avro=False)
        return self._from[cls]

    def _compile(self, cls: type, *, to_avro: bool) -> Callable[..., Any]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a fact class")
        hints = typing.get_type_hints(cls)
        names: dict[str, Any] = {"_cls": cls, "_new": object.__new__}
        lines: list[str] = []
        fields = dataclasses.fields(cls)
        if to_avro:
            items = ", ".join(
                f"{field.name!r}: {self._out(hints[field.name], f'fact.{field.name}', names)}" for field in fields
            )
            lines = ["def to_avro(fact):", f"    return {{{items}}}"]
            function_name = "to_avro"
        elif hasattr(cls, "__post_init__"):
            arguments = ", ".join(
                f"{field.name}={self._in(hints[field.name], f'record[{field.name!r}]', names)}" for field in fields
            )
            lines = ["def from_avro(record):", f"    return _cls({arguments})"]
            function_name = "from_avro"
        elif hasattr(cls, "__slots__"):
            lines = ["def from_avro(record):", "    fact = _new(_cls)"]
            for field in fields:
                names[f"_set_{field.name}"] = cls.__dict__[field.name].__set__  # the slot descriptor
                value = self._in(hints[field.name], f"record[{field.name!r}]", names)
                lines.append(f"    _set_{field.name}(fact, {value})")
            lines.append("    return fact")
            function_name = "from_avro"
        else:
            # Adopt the record dict (fastavro's, ours alone) as the instance's __dict__: its keys
            # are exactly the fields, because the reader schema is the class's current schema.
            names["_setattr"] = object.__setattr__
            lines = ["def from_avro(record):"]
            for field in fields:
                value = self._in(hints[field.name], f"record[{field.name!r}]", names)
                if value != f"record[{field.name!r}]":
                    lines.append(f"    record[{field.name!r}] = {value}")
            lines += ["    fact = _new(_cls)", "    _setattr(fact, '__dict__', record)", "    return fact"]
            function_name = "from_avro"
        source = "\n".join(lines)
        exec(compile(source, f"<{function_name} {cls.__name__}>", "exec"), names)  # noqa: S102 - our own generated source
        return names[function_name]

    def _out(self, hint: Any, expression: str, names: dict[str, Any]) -> str:
        """Python expression turning `expression` (a fact value) into its Avro value."""
        if hint in (str, int, bool, bytes) or typing.get_origin(hint) is Mapping:
            return expression
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return expression  # StrEnum members are the Avro symbols
        if hint is Decimal:
            names["_decimal_to_avro"] = decimal_to_avro
            return f"_decimal_to_avro({expression})"
        if dataclasses.is_dataclass(hint):
            names[f"_to_{hint.__name__}"] = self.to_avro(hint)
            return f"_to_{hint.__name__}({expression})"
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple:
            item = self._out(arguments[0], "item", names)
            return expression if item == "item" else f"[{item} for item in {expression}]"
        if origin in (typing.Union, types.UnionType):
            (inner,) = [argument for argument in arguments if argument is not type(None)]
            converted = self._out(inner, "value", names)
            if converted == "value":
                return expression
            return f"(None if (value := {expression}) is None else {converted})"
        raise TypeError(f"no Avro mapping for {hint!r}")

    def _in(self, hint: Any, expression: str, names: dict[str, Any]) -> str:
        """Python expression turning `expression` (an Avro value) into the fact's value."""
        if hint in (str, int, bool, bytes) or typing.get_origin(hint) is Mapping:
            return expression
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            names[f"_{hint.__name__}"] = {member.value: member for member in hint}  # faster than hint(value)
            return f"_{hint.__name__}[{expression}]"
        if hint is Decimal:
            names["_decimal_from_avro"] = decimal_from_avro
            return f"_decimal_from_avro({expression})"
        if dataclasses.is_dataclass(hint):
            names[f"_from_{hint.__name__}"] = self.from_avro(hint)
            return f"_from_{hint.__name__}({expression})"
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple:
            item = self._in(arguments[0], "item", names)
            return f"tuple({expression})" if item == "item" else f"tuple([{item} for item in {expression}])"
        if origin in (typing.Union, types.UnionType):
            (inner,) = [argument for argument in arguments if argument is not type(None)]
            converted = self._in(inner, "value", names)
            if converted == "value":
                return expression
            return f"(None if (value := {expression}) is None else {converted})"
        raise TypeError(f"no Avro mapping for {hint!r}")


_CONVERTERS = _Converters()


def to_avro(fact: Fact) -> dict[str, Any]:
    """The Avro record (a dict) of a fact."""
    return _CONVERTERS.to_avro(type(fact))(fact)


def from_avro(fact_class: type, record: Mapping[str, Any]) -> Fact:
    """The fact of class `fact_class` from its Avro record (a dict as fastavro returns it)."""
    field_names = [field.name for field in dataclasses.fields(fact_class)]
    if sorted(record) != sorted(field_names):
        raise ValueError(f"{fact_class.__name__} has fields {field_names}, the record has {list(record)}")
    return _CONVERTERS.from_avro(fact_class)(dict(record))  # a copy: a fact may adopt the dict


# --- meter events from plain values: the producer's hot path ---------------------------------

# The current MeterEventRecorded schema as the hand-written encoder below lays it out. Any other
# layout (the schema evolved) makes encode_meter_events fall back to encode() of built facts.
_METER_EVENT_LAYOUT = (("customer_id", "string"), ("event_name", "string"), ("identifier", "string"),
                       ("payload", ("map", "string")), ("event_time_ms", "long"), ("received_at_ms", "long"))
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_MAP_END = b"\x00"


def _avro_long(value: int) -> bytes:
    """Avro's long encoding: zigzag, then a little-endian base-128 varint."""
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise ValueError(f"not an Avro long: {value!r}")
    rest = (value << 1) ^ (value >> 63)
    out = bytearray()
    while rest > 0x7F:
        out.append((rest & 0x7F) | 0x80)
        rest >>= 7
    out.append(rest)
    return bytes(out)


# Events of one millisecond share their timestamps' bytes (typed: True must not pass for 1).
_avro_time = functools.lru_cache(maxsize=1024, typed=True)(_avro_long)

# Length (and map count) prefixes up to 1 KiB, looked up instead of computed; a longer string
# raises IndexError, which sends the batch down the general path.
_PREFIX = tuple(_avro_long(length) for length in range(1024))


def _layout(schema: Mapping[str, Any]) -> tuple:
    def type_of(avro_type: Any) -> Any:
        if isinstance(avro_type, Mapping) and avro_type.get("type") == "map":
            return ("map", avro_type.get("values"))
        return avro_type

    return tuple((field["name"], type_of(field["type"])) for field in schema.get("fields", ()))


# --- the codec -----------------------------------------------------------------------------------


class FactCodec:
    """Encodes facts to framed Avro bytes and decodes either framing back to facts.

    Without a registry, encode() writes single-object encoding. With one (a URL, or a client for
    tests), encode() writes Confluent framing and registers (or, with auto_register=False, looks
    up) each fact's current schema under its record-name subject on first use. decode() reads
    both framings either way; Confluent-framed bytes need a registry to resolve their id.
    Schema ids are cached both ways, so the registry is asked once per id and once per class.
    """

    def __init__(
        self,
        registry_url: str | None = None,
        *,
        registry_client: Any = None,
        auto_register: bool = True,
        catalogue: SchemaCatalogue | None = None,
    ) -> None:
        if registry_client is None and registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient  # only when configured

            registry_client = SchemaRegistryClient.new_client({"url": registry_url})
        self._registry = registry_client
        self._auto_register = auto_register
        self._catalogue = catalogue or load_catalogue()
        self._writers: dict[type, _Writer] = {}
        # Frame header -> reader, for both framings (see decode).
        self._readers_by_header: dict[bytes, _Reader] = {
            SINGLE_OBJECT_MAGIC + version.fingerprint: self._reader(
                SINGLE_OBJECT_HEADER_BYTES, version.parsed, version.fact_class
            )
            for version in self._catalogue.by_fingerprint.values()
        }
        self.schema_ids: dict[type, int] = {}  # fact class -> registry id of its current schema
        if registry_client is None:
            for fact_class, fact_schema in self._catalogue.current.items():
                header = SINGLE_OBJECT_MAGIC + fact_schema.fingerprint
                self._writers[fact_class] = (header, fact_schema.parsed, _CONVERTERS.to_avro(fact_class))

        # encode_meter_events writes the bytes itself only while the schema is the one it knows.
        self._meter_event_layout_known = (
            _layout(self._catalogue.current[MeterEventRecorded].schema) == _METER_EVENT_LAYOUT)

    @property
    def uses_registry(self) -> bool:
        """True when encode() writes Confluent Schema Registry framing."""
        return self._registry is not None

    # --- encoding ------------------------------------------------------------------------------

    def encode(self, fact: Fact) -> bytes:
        """Framed Avro bytes of one fact. Raises UnencodableFact, SchemaRegistryUnavailable."""
        header, schema, fact_to_avro = self._writers.get(type(fact)) or self._writer(type(fact))
        stream = BytesIO()
        stream.write(header)
        try:
            schemaless_writer(stream, schema, fact_to_avro(fact))
        except Exception as exc:  # fastavro boundary: any failure means this value does not fit
            raise UnencodableFact(f"{type(fact).__name__}: {exc}") from exc
        return stream.getvalue()

    def encode_many(self, facts: Iterable[Fact]) -> list[bytes]:
        """encode() of each fact, in order."""
        encode = self.encode
        return [encode(fact) for fact in facts]

    def encode_meter_events(
        self,
        event_name: str,
        customer_ids: Sequence[str],
        identifiers: Sequence[str],
        payloads: Sequence[Mapping[str, str]],
        received_at_ms: int,
        event_times_ms: Sequence[int] | None = None,
    ) -> list[bytes]:
        """encode() of MeterEventRecorded(customer_id=customer_ids[i], event_name=event_name,
        identifier=identifiers[i], payload=payloads[i], event_time_ms=event_times_ms[i],
        received_at_ms=received_at_ms) for each i, without building the facts: the same bytes,
        several times faster (the producer's hot path). `event_times_ms` None: each event
        happened at `received_at_ms`. Raises UnencodableFact, SchemaRegistryUnavailable.
        """
        header = (self._writers.get(MeterEventRecorded) or self._writer(MeterEventRecorded))[0]
        if self._meter_event_layout_known:
            try:
                return _meter_event_values(header, event_name, customer_ids, identifiers, payloads,
                                           received_at_ms, event_times_ms)
            except Exception:  # noqa: BLE001 - anything unusual: the general path decides (and explains)
                pass
        encode = self.encode
        return [
            encode(MeterEventRecorded(customer_id=customer_id, event_name=event_name, identifier=identifier,
                                      payload=payload, event_time_ms=event_time_ms, received_at_ms=received_at_ms))
            for customer_id, identifier, payload, event_time_ms in zip(
                customer_ids, identifiers, payloads,
                [received_at_ms] * len(payloads) if event_times_ms is None else event_times_ms, strict=True)
        ]

    def _writer(self, fact_class: type) -> _Writer:
        fact_schema = self._catalogue.current.get(fact_class)
        if fact_schema is None:
            raise UnencodableFact(f"{fact_class!r} is not a fact class")
        schema_id = self._register(fact_schema)
        header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        writer = self._writers[fact_class] = (header, fact_schema.parsed, _CONVERTERS.to_avro(fact_class))
        self._readers_by_header[header] = self._reader(CONFLUENT_HEADER_BYTES, fact_schema.parsed, fact_class)
        return writer

    def _register(self, fact_schema: FactSchema) -> int:
        from confluent_kafka.schema_registry import Schema

        schema = Schema(fact_schema.schema_json, "AVRO")
        try:
            if self._auto_register:
                schema_id = self._registry.register_schema(fact_schema.full_name, schema)
            else:
                schema_id = self._registry.lookup_schema(fact_schema.full_name, schema).schema_id
        except Exception as exc:
            if _is_not_found(exc):
                raise UnencodableFact(f"{fact_schema.full_name} is not registered") from exc
            raise SchemaRegistryUnavailable(f"registering {fact_schema.full_name}: {exc}") from exc
        self.schema_ids[fact_schema.fact_class] = schema_id
        return schema_id

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, data: bytes) -> Fact:
        """The fact in framed Avro bytes (either framing).

        Raises an UndecodableFact subclass (dead-letter it: see its reason_code) or
        SchemaRegistryUnavailable (retry).
        """
        # One dict holds the headers of both framings (10 bytes C3 01 + fingerprint, 5 bytes
        # 00 + schema id; they cannot collide), so the hot path is one slice and one lookup.
        try:
            reader = self._readers_by_header.get(data[:10]) or self._readers_by_header.get(data[:5])
        except TypeError:  # None (a tombstone) or not bytes at all
            raise EmptyFact(f"not bytes: {type(data).__name__}") from None
        header_bytes, writer_schema, reader_schema, fact_from_avro = reader or self._resolve_header(data)
        stream = BytesIO(data)
        stream.seek(header_bytes)
        try:
            record = schemaless_reader(stream, writer_schema, reader_schema)
        except Exception as exc:  # fastavro boundary: untrusted bytes fail in many ways
            raise _body_error(exc, read_to_the_end=stream.tell() >= len(data)) from exc
        if stream.tell() != len(data):
            raise CorruptFact(f"{len(data) - stream.tell()} bytes after the record")
        try:
            return fact_from_avro(record)
        except (KeyError, ValueError, InvalidOperation) as exc:
            raise CorruptFact(f"record does not make a fact: {exc}") from exc

    def decode_many(self, values: Iterable[bytes]) -> list[Fact | UndecodableFact]:
        """decode() of each value, in order; an undecodable value yields its error in its place
        (so one bad record does not fail a batch: the caller dead-letters it)."""
        decode = self.decode
        results: list[Fact | UndecodableFact] = []
        append = results.append
        for value in values:
            try:
                append(decode(value))
            except UndecodableFact as error:
                append(error)
        return results

    def _resolve_header(self, data: bytes) -> _Reader:
        """The reader of a header not seen yet (a new schema id), or the header's error."""
        if data[:1] != CONFLUENT_MAGIC or len(data) < CONFLUENT_HEADER_BYTES:
            raise _header_error(data)
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_BYTES], "big")
        reader = self._readers_by_header[data[:CONFLUENT_HEADER_BYTES]] = self._registry_reader(schema_id)
        return reader

    def _registry_reader(self, schema_id: int) -> _Reader:
        if self._registry is None:
            raise UnknownSchemaId(f"schema id {schema_id}: no schema registry is configured")
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise UnknownSchemaId(f"schema id {schema_id} is not in the registry") from exc
            raise SchemaRegistryUnavailable(f"looking up schema id {schema_id}: {exc}") from exc
        try:
            writer_schema = json.loads(registered.schema_str)
            canonical_form = to_parsing_canonical_form(writer_schema)
            fact_class = self._catalogue.by_full_name.get(full_name(writer_schema))
        except Exception as exc:
            raise UnknownSchemaId(f"schema id {schema_id} is not a fact schema") from exc
        if fact_class is None:
            raise UnknownSchemaId(f"schema id {schema_id} is not a fact schema")
        # The writer's schema, resolved into the current class; reuse our parse when it is ours.
        known = self._catalogue.by_fingerprint.get(bytes.fromhex(fingerprint(canonical_form, "CRC-64-AVRO")))
        writer_parsed = known.parsed if known is not None else parse_schema(writer_schema)
        return self._reader(CONFLUENT_HEADER_BYTES, writer_parsed, fact_class)

    def _reader(self, header_bytes: int, writer_schema: Mapping[str, Any], fact_class: type) -> _Reader:
        current = self._catalogue.current[fact_class].parsed
        reader_schema = None if writer_schema is current else current  # None: no resolution step
        return (header_bytes, writer_schema, reader_schema, _CONVERTERS.from_avro(fact_class))


def _meter_event_values(header: bytes, event_name: str, customer_ids: Sequence[str], identifiers: Sequence[str],
                        payloads: Sequence[Mapping[str, str]], received_at_ms: int,
                        event_times_ms: Sequence[int] | None) -> list[bytes]:
    """The framed bytes of each meter event, written field by field in schema order (see
    _METER_EVENT_LAYOUT): strings are a length prefix and UTF-8; the payload map is one block (its
    count, then key and value of each entry) closed by a zero count; longs are zigzag varints.
    Raises on anything the fast layout does not cover; the caller then takes the general path."""
    if not len(customer_ids) == len(identifiers) == len(payloads):
        raise ValueError("customer_ids, identifiers and payloads differ in length")
    prefix = _PREFIX
    name = event_name.encode()
    name_field = prefix[len(name)] + name
    received = _avro_time(received_at_ms)
    if event_times_ms is None:
        tails = [_MAP_END + received + received] * len(payloads)
    else:
        if len(event_times_ms) != len(payloads):
            raise ValueError("event_times_ms and payloads differ in length")
        tails = [_MAP_END + _avro_time(event_time_ms) + received for event_time_ms in event_times_ms]
    values = []
    append = values.append
    for customer_id, identifier, payload, tail in zip(customer_ids, identifiers, payloads, tails):
        customer = customer_id.encode()
        identifier_bytes = identifier.encode()
        if payload:
            parts = [header, prefix[len(customer)], customer, name_field, prefix[len(identifier_bytes)],
                     identifier_bytes, prefix[len(payload)]]
            for key, value in payload.items():
                key_bytes = key.encode()
                value_bytes = value.encode()
                parts += (prefix[len(key_bytes)], key_bytes, prefix[len(value_bytes)], value_bytes)
        else:  # an empty map is its closing zero count alone
            parts = [header, prefix[len(customer)], customer, name_field, prefix[len(identifier_bytes)],
                     identifier_bytes]
        parts.append(tail)
        append(b"".join(parts))
    return values


def _body_error(exc: Exception, *, read_to_the_end: bool) -> UndecodableFact:
    """The error for a body fastavro could not read."""
    # Reading past the end surfaces as EOFError, or as IndexError inside a varint.
    if isinstance(exc, (EOFError, IndexError)) and read_to_the_end:
        return TruncatedFact(f"body ends early: {exc}")
    return CorruptFact(f"body does not decode: {type(exc).__name__}: {exc}")


def _header_error(data: bytes) -> UndecodableFact:
    """The error for bytes whose header does not lead to a known schema."""
    if not data:
        return EmptyFact("no bytes")
    if data[:2] == SINGLE_OBJECT_MAGIC:
        if len(data) < SINGLE_OBJECT_HEADER_BYTES:
            return TruncatedFact(f"{len(data)} bytes: shorter than a single-object header")
        return UnknownSchemaFingerprint(f"fingerprint {data[2:10].hex()} is no known schema version")
    if data == SINGLE_OBJECT_MAGIC[:1]:
        return TruncatedFact("1 byte: shorter than a single-object header")
    if data[:1] == CONFLUENT_MAGIC:
        return TruncatedFact(f"{len(data)} bytes: shorter than a Confluent header")
    return UnknownMagicByte(f"first bytes {data[:2].hex()}")


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "http_status_code", None) == 404


# --- the process-wide codec ----------------------------------------------------------------------

_default_codec: FactCodec | None = None


def default_codec() -> FactCodec:
    """The process's codec: Confluent framing if settings name a schema registry URL, else
    single-object encoding. Built on first use."""
    global _default_codec
    if _default_codec is None:
        from drawdown.settings import get_settings

        _default_codec = FactCodec(get_settings().schema_registry_url or None)
    return _default_codec


def encode(fact: Fact) -> bytes:
    """Framed Avro bytes of one fact, with the process's codec (see default_codec)."""
    return (_default_codec or default_codec()).encode(fact)


def decode(data: bytes) -> Fact:
    """The fact in framed Avro bytes of either framing, with the process's codec."""
    return (_default_codec or default_codec()).decode(data)

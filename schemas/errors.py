"""Errors of the schemas package: one root, names that say what is wrong, stable reason codes.

Stream workers turn every `UndecodableFact` into a dead letter whose reason_code is the error's
`reason_code`. `SchemaRegistryUnavailable` is deliberately not an `UndecodableFact`: the bytes may
be fine, the registry is down, so the worker must retry rather than dead-letter.
"""

from __future__ import annotations


class FactCodecError(Exception):
    """Root of every error raised by schemas/. `reason_code` is stable snake_case."""

    reason_code = "fact_codec_error"


# --- decoding: the bytes cannot become a fact (dead-letter them) --------------------------------


class UndecodableFact(FactCodecError):
    """The bytes cannot be decoded into a fact."""

    reason_code = "undecodable_fact"


class EmptyFact(UndecodableFact):
    """The record value is empty (or a tombstone)."""

    reason_code = "empty_fact"


class UnknownMagicByte(UndecodableFact):
    """The first byte is neither Confluent's 0x00 nor single-object encoding's C3 01."""

    reason_code = "unknown_magic_byte"


class UnknownSchemaFingerprint(UndecodableFact):
    """Single-object encoding with a CRC-64-AVRO fingerprint of no known schema version."""

    reason_code = "unknown_schema_fingerprint"


class UnknownSchemaId(UndecodableFact):
    """Confluent framing with a schema id the registry does not know, or not of a fact."""

    reason_code = "unknown_schema_id"


class TruncatedFact(UndecodableFact):
    """The bytes end before the header or the record does."""

    reason_code = "truncated_fact"


class CorruptFact(UndecodableFact):
    """The bytes do not decode under their schema, or decode to values a fact cannot hold."""

    reason_code = "corrupt_fact"


# --- encoding and the registry --------------------------------------------------------------------


class UnencodableFact(FactCodecError):
    """A value cannot be encoded: not a fact class, or a field the schema cannot hold."""

    reason_code = "unencodable_fact"


class SchemaRegistryUnavailable(FactCodecError):
    """The schema registry could not answer (network, 5xx): retry, do not dead-letter."""

    reason_code = "schema_registry_unavailable"

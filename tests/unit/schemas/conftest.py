from __future__ import annotations

import itertools

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas.codec import FactCodec

_registry_names = itertools.count()


@pytest.fixture
def registry_client():
    """A fresh in-memory schema registry (mock:// clients do not share state)."""
    return SchemaRegistryClient.new_client({"url": f"mock://drawdown-test-{next(_registry_names)}"})


@pytest.fixture
def registry_codec(registry_client) -> FactCodec:
    return FactCodec(registry_client=registry_client)

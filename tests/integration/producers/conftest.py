"""Fixtures for the producer SDK tests: topics of their own, a meter catalog, a reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from billing.catalog import Catalog
from billing.facts import MeterAggregation, MeterDefined
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from schemas.codec import FactCodec
from tests.integration.producers.kafka_reading import own_topics, read_records


@pytest.fixture(scope="module")
def producer_settings(settings: Settings) -> Iterator[Settings]:
    """This module's own topics (3 partitions), created."""
    yield from own_topics(settings, "p")


@pytest.fixture(scope="module")
def tokens_meter() -> MeterDefined:
    return MeterDefined(meter_id="mtr_tokens", display_name="LLM tokens", event_name="llm_tokens",
                        aggregation=MeterAggregation.SUM, created_at_ms=1_700_000_000_000)


@pytest.fixture(scope="module")
def catalog(tokens_meter: MeterDefined) -> Catalog:
    return fold_catalog([tokens_meter])


@pytest.fixture(scope="module")
def codec() -> FactCodec:
    return FactCodec()


@pytest.fixture
def records(producer_settings: Settings) -> Callable[..., list]:
    """records(short_topic_name) -> every record of that topic (all partitions), as Kafka messages."""
    return lambda name, **kwargs: read_records(producer_settings, producer_settings.topic(name), **kwargs)

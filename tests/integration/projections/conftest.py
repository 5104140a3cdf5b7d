"""Fixtures for projector tests: the session's topics, a fact producer, a fresh schema per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drawdown.settings import Settings
from schemas.codec import encode
from streams.topics import PRODUCER_PARTITIONER, ensure_topics


@pytest.fixture(scope="session")
def topics(settings: Settings) -> Settings:
    """Settings with topics of these tests' own (they publish fake derived facts and garbage that
    other suites reading the session's topics must not see)."""
    own = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "-projections"})
    ensure_topics(own)
    return own


@pytest.fixture()
def publish(topics: Settings) -> Iterator[Callable[..., tuple[int, int]]]:
    """publish(topic_short_name, fact, key=..., partition=...) -> (partition, offset), acked."""
    from confluent_kafka import Producer

    producer = Producer({**topics.kafka_client_config(), "enable.idempotence": True,
                         "partitioner": PRODUCER_PARTITIONER, "linger.ms": 0})

    def publish_(topic: str, fact: Any, key: str = "", partition: int | None = None) -> tuple[int, int]:
        delivered: list[Any] = []
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topics.topic(topic), encode(fact), key.encode(), on_delivery=lambda err, msg: delivered.append(
            (err, msg)), **kwargs)
        producer.flush(10)
        error, message = delivered[0]
        assert error is None, error
        return message.partition(), message.offset()

    yield publish_
    producer.flush(10)


@pytest.fixture()
def schema() -> str:
    """A PostgreSQL schema of this test's own, so each test's projection starts empty."""
    return f"projection_test_{uuid.uuid4().hex[:8]}"

"""Services for the tests, chosen in this order:

1. environment variables: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL;
2. testcontainers, when a Docker engine answers;
3. the embedded local stack (deploy/local.py): started if it is not running, stopped at the end
   of the session if this session started it.

A test that needs Kafka or Postgres never skips: a missing service is an error that says why.
Each session works in its own topic prefix and its own database, so it cannot see (or disturb)
a running `make up` engine or another session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from drawdown.settings import Settings, with_database


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no SDK: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def local_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_settings: Settings) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from deploy import local

    started_here = not local.kafka_running(local_settings)
    bootstrap = local.start_kafka(local_settings)
    yield bootstrap
    if started_here:
        local.stop_recorded(local_settings, "kafka")


@pytest.fixture(scope="session")
def postgres_server_url(local_settings: Settings) -> Iterator[str]:
    """URL of a real PostgreSQL server's default database."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15") as container:
            yield container.get_connection_url(driver=None)
        return
    from deploy import local

    started_here = not local.pid_alive(local.postgres_pid(local_settings)) if local.postgres_bin_dir() else True
    url = local.start_postgres(local_settings)
    yield url
    if started_here:
        local.stop_postgres(local_settings)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str, session_id: str) -> Iterator[str]:
    """A database of this session's own, dropped at the end."""
    import psycopg
    from psycopg import sql

    name = f"drawdown_test_{session_id}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield with_database(postgres_server_url, name)
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def settings(kafka_bootstrap: str, database_url: str, session_id: str, local_settings: Settings,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for the engine under test: real services, this session's topics and database.
    The receipt bound is off (0): the tests publish history with its own times (January 2026)
    straight to Kafka, whose append times are now (the e2e engine, fed by the API, runs with the
    default). The session's topics (and those of prefixes derived from its own) are deleted at the
    end, unless DRAWDOWN_KEEP_TEST_TOPICS is set."""
    from streams.topics import delete_topics

    settings = local_settings.model_copy(update={
        "kafka_bootstrap_servers": kafka_bootstrap,
        "database_url": database_url,
        "topic_prefix": f"test-{session_id}",
        "worker_data_dir": tmp_path_factory.mktemp("worker"),
        "receipt_bound_seconds": 0,
    })
    yield settings
    if not os.environ.get("DRAWDOWN_KEEP_TEST_TOPICS"):  # set it to look into a failed run's topics
        delete_topics(settings)

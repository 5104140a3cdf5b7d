"""The API in-process (FastAPI TestClient) against the real Kafka and PostgreSQL, with the
projector running in a thread, so that read-your-writes is real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from drawdown.settings import PROJECT_ROOT, Settings, database_name, with_database
from tests.processes import wait_until_serving


@contextmanager
def own_engine(settings: Settings, database_url: str, suffix: str) -> Iterator[Settings]:
    """`settings` with topics (prefix + suffix) and a database (name + "_" + suffix) of their own,
    the database dropped at the end."""
    import psycopg
    from psycopg import sql

    from projections.migrate import migrate
    from streams.topics import ensure_topics

    own_database = f"{database_name(database_url)}_{suffix}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(own_database)))
    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-{suffix}",
                                      "database_url": with_database(database_url, own_database),
                                      "read_your_writes_timeout_ms": 15_000})
    try:
        ensure_topics(own)
        migrate(own.effective_database_url)
        yield own
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(own_database)))


@contextmanager
def running_projector(settings: Settings) -> Iterator[Any]:
    """The live projector (schema public) in a background thread."""
    from projections.projector import Projector

    instance = Projector(settings)
    stop = threading.Event()
    thread = threading.Thread(target=instance.run, args=(stop,), name="projector", daemon=True)
    thread.start()
    try:
        yield instance
    finally:
        stop.set()
        thread.join(30)


@contextmanager
def started_app(settings: Settings) -> Iterator[Any]:
    from api.app import create_app

    application = create_app(settings)
    with TestClient(application):  # runs the lifespan: pool, publisher
        yield application


@pytest.fixture(scope="session")
def engine_settings(settings: Settings, database_url: str) -> Iterator[Settings]:
    """The session's settings with topics and a database of the API tests' own: they publish
    stand-in worker facts that other suites reading the session's topics must not see."""
    with own_engine(settings, database_url, "api") as own:
        yield own


@pytest.fixture(scope="session")
def projector(engine_settings: Settings) -> Iterator[Any]:
    """The live projector (schema public) in a background thread for the whole session."""
    with running_projector(engine_settings) as instance:
        yield instance


@pytest.fixture(scope="session")
def app(engine_settings: Settings, projector: Any) -> Iterator[Any]:
    with started_app(engine_settings) as application:
        yield application


@pytest.fixture(scope="session")
def secret_key(engine_settings: Settings) -> str:
    from api.auth import create_key

    return create_key(engine_settings.effective_database_url)


@pytest.fixture(scope="session")
def read_only_key(engine_settings: Settings) -> str:
    from api.auth import create_key

    return create_key(engine_settings.effective_database_url, read_only=True)


@pytest.fixture(scope="session")
def client(app: Any, secret_key: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {secret_key}"}) as test_client:
        yield test_client


@pytest.fixture()
def worker_fact(app: Any) -> Callable[..., None]:
    """Publish a derived fact as the stream workers would (keyed by its customer), and wait until
    the projection has it: stands in for the workers in API tests."""

    def publish(topic: str, fact: Any) -> None:
        ctx = app.state.ctx
        ctx.wait([ctx.publisher.publish(topic, fact.customer_id, fact)])

    return publish


@pytest.fixture(scope="session")
def settings(settings: Settings, local_settings: Settings) -> Settings:
    """tests/conftest.py's settings, with the receipt bound on at its default (as in production):
    the e2e engine is fed by the API, which stamps received_at itself, as every e2e test does."""
    return settings.model_copy(update={"receipt_bound_seconds": local_settings.receipt_bound_seconds})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def api_base(app: Any) -> Iterator[str]:
    """The in-process app served over real HTTP (the SDK needs a socket)."""
    with serving(app) as base:
        yield base


@contextmanager
def serving(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def worker(engine_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """The real stream worker (`python -m drawdown worker`, a subprocess) on the API tests' topics."""
    with running_worker(engine_settings, tmp_path) as process:
        yield process


@contextmanager
def running_worker(engine_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """`python -m drawdown worker` with `engine_settings` (its security settings too), stopped at the end."""
    web_port = free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=engine_settings.effective_kafka_bootstrap_servers,
               DATABASE_URL=engine_settings.effective_database_url, DRAWDOWN_TOPIC_PREFIX=engine_settings.topic_prefix,
               DRAWDOWN_PARTITIONS=str(engine_settings.partitions),
               DRAWDOWN_GRACE_PERIOD_SECONDS=str(engine_settings.grace_period_seconds),
               DRAWDOWN_WORKER_DATA_DIR=str(tmp_path / "worker"), DRAWDOWN_WORKER_WEB_PORT=str(web_port),
               DRAWDOWN_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1", PYTHONPATH=str(PROJECT_ROOT),
               **engine_settings.kafka_security_env())
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "drawdown", "worker", "--loglevel", "info"],
                                   cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(process, f"http://127.0.0.1:{web_port}/drawdown/ready/", log_path, 120, "worker",
                           poll_s=0.3)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

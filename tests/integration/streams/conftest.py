"""Stream worker fixtures: real workers as subprocesses (`python -m drawdown worker`), a producer of
input facts, and a reader of the derived topics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drawdown.settings import PROJECT_ROOT, Settings
from streams.source import wait_until_durable_to_the_end  # noqa: F401 - the tests import it from here

WORKER_READY_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess's Settings() equal `settings` (what matters here)."""
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.effective_kafka_bootstrap_servers,
        **settings.kafka_security_env(),
        "DATABASE_URL": settings.database_url,
        "DRAWDOWN_TOPIC_PREFIX": settings.topic_prefix,
        "DRAWDOWN_PARTITIONS": str(settings.partitions),
        "DRAWDOWN_REPLICATION_FACTOR": str(settings.replication_factor),
        "DRAWDOWN_GRACE_PERIOD_SECONDS": str(settings.grace_period_seconds),
        "DRAWDOWN_DEDUPE_WINDOW_SECONDS": str(settings.dedupe_window_seconds),
        "DRAWDOWN_RECEIPT_BOUND_SECONDS": str(settings.receipt_bound_seconds),
        "DRAWDOWN_PURGE_STATE": str(settings.purge_state).lower(),
        "DRAWDOWN_LIVE_BALANCE_INTERVAL_MS": str(settings.live_balance_interval_ms),
        "DRAWDOWN_LOW_BALANCE_THRESHOLDS_MINOR": str(list(settings.low_balance_thresholds_minor)),
        "DRAWDOWN_TICK_INTERVAL_MS": str(settings.tick_interval_ms),
        "DRAWDOWN_WORKER_DATA_DIR": str(settings.worker_data_dir),
        "DRAWDOWN_WORKER_WEB_PORT": str(settings.worker_web_port),
        "DRAWDOWN_STATE_DIR": str(settings.state_dir),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    })
    return env


class WorkerProcess:
    """One `drawdown worker` subprocess with its own data dir and web port; log in `log_path`."""

    def __init__(self, settings: Settings, name: str, base_dir: Path) -> None:
        self.name = name
        self.settings = settings.model_copy(update={
            "worker_data_dir": base_dir / name, "worker_web_port": free_port()})
        self.log_path = base_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "drawdown", "worker", "--loglevel", "info"],
                                        cwd=PROJECT_ROOT, env=settings_env(self.settings), stdout=log,
                                        stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.settings.worker_web_port}/drawdown/ready/"
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, \
                f"worker {self.name} exited; log: {self.log_path}\n{self.log_tail()}"
            if self.ready():
                return self
            time.sleep(0.3)
        raise AssertionError(f"worker {self.name} not ready in {timeout_s}s\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status(self) -> dict:
        import json

        try:
            url = f"http://127.0.0.1:{self.settings.worker_web_port}/drawdown/ready/"
            with urllib.request.urlopen(url, timeout=1) as response:
                return json.loads(response.read())
        except OSError:
            return {}

    def wait_processing(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> WorkerProcess:
        """Wait until the worker has folded at least one batch (it owns partitions and works)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            if self.status().get("batches", 0) > 0:
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} processed nothing in {timeout_s}s\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 20) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


class OutputReader:
    """Reads every derived topic from the beginning and keeps the decoded facts."""

    TOPICS = ("invoices", "credit-balance-transactions", "usage-buckets", "live-balances", "dead-letters")

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from schemas.codec import FactCodec

        self.codec = FactCodec(settings.schema_registry_url or None)
        self.consumer = Consumer({**settings.kafka_client_config(),
                                  "group.id": "unused-test-reader", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(settings.topic(name), p, OFFSET_BEGINNING)
                              for name in self.TOPICS for p in range(settings.partitions)])
        self.facts: list = []

    def poll(self, timeout_s: float = 0.5) -> None:
        for message in self.consumer.consume(5000, timeout=timeout_s):
            if not message.error():
                self.facts.append(self.codec.decode(message.value()))

    def wait_for(self, predicate: Callable[[list], object], timeout_s: float = 60) -> list:
        """Poll until `predicate(facts)` is truthy; returns the facts."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if predicate(self.facts):
                return self.facts
        raise AssertionError(f"timed out; {len(self.facts)} facts: {self.facts[-10:]}")

    def settle(self, quiet_s: float = 2.0) -> list:
        """Poll until nothing new arrives for `quiet_s`."""
        count, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < quiet_s:
            self.poll(0.3)
            if len(self.facts) != count:
                count, last_change = len(self.facts), time.monotonic()
        return self.facts

    def of(self, fact_class: type, customer_id: str | None = None) -> list:
        return [f for f in self.facts if isinstance(f, fact_class)
                and (customer_id is None or getattr(f, "customer_id", None) == customer_id)]

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="session")
def stream_settings(settings: Settings) -> Settings:
    """This session's settings with a short grace period (tests move test clocks past it)."""
    from streams.topics import ensure_topics

    stream = settings.model_copy(update={"grace_period_seconds": 3600, "live_balance_interval_ms": 0})
    ensure_topics(stream)
    return stream


@pytest.fixture(scope="session")
def worker(stream_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the session's shared topics."""
    process = WorkerProcess(stream_settings, "worker-main", tmp_path_factory.mktemp("workers")).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture()
def producer(stream_settings: Settings) -> Iterator:
    from producers.producer import FactProducer

    with FactProducer(stream_settings, validate=False) as fact_producer:
        yield fact_producer


@pytest.fixture()
def outputs(stream_settings: Settings) -> Iterator[OutputReader]:
    reader = OutputReader(stream_settings)
    yield reader
    reader.close()

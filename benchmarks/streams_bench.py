"""Stream worker: throughput, freshness, memory and recovery of one real `drawdown worker` process.

1. Throughput: meter events already in customer-facts, folded by one worker with every guard on
   (validation, dedupe, offset guards, minute buckets, period usage, live balances, outputs acked
   before state writes). Ceiling, same run, same topic: a bare confluent-kafka consume + decode +
   dict-sum loop. Target >= 50,000 events/s. Two rows: live traffic (each event stamped when it
   is sent, as the SDK does: the target row) and a backfill (event times spread over 30 minutes,
   so nearly every event opens a minute bucket of its own and costs a bucket record and a
   UsageBucketUpdated fact: the worst case, reported).
2. Freshness at a steady 5,000 events/s: probe events to probe customers; latency from produce to
   the LiveBalanceChanged that reflects the probe, as the reader sees it. Target p99 < 1 s.
3. Peak RSS of the worker (VmHWM) after folding many customers x 2 meters of minute buckets.
   Target < 1 GiB. (Scaled to the events of step 1: the run must fit a 2-core shared machine.)
4. Recovery: kill -9, restart, time until the worker folds new facts again.

    python -m benchmarks --only streams
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.facts import LiveBalanceChanged
from drawdown.settings import PROJECT_ROOT, Settings
from streams import walkthrough as w
from streams.topics import ensure_topics

EVENTS = 300_000
CUSTOMERS = 5_000
EVENT_TIME_SPAN_MS = 30 * 60_000  # events spread over 30 minutes: many minute buckets per customer
STEADY_EVENTS_PER_SECOND = 5_000
STEADY_SECONDS = 12
PROBE_CUSTOMERS = 40
TARGET_EVENTS_PER_SECOND = 50_000
TARGET_P99_MS = 1000
TARGET_RSS_BYTES = 1 << 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Worker:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=self.settings.effective_kafka_bootstrap_servers,
                   DRAWDOWN_TOPIC_PREFIX=self.settings.topic_prefix, DRAWDOWN_PARTITIONS=str(self.settings.partitions),
                   DRAWDOWN_WORKER_DATA_DIR=str(self.settings.worker_data_dir),
                   DRAWDOWN_WORKER_WEB_PORT=str(self.settings.worker_web_port), PYTHONPATH=str(PROJECT_ROOT))
        # BENCH_WORKER_CMD: another worker entry point, e.g. a script that runs it under cProfile.
        command = os.environ.get("BENCH_WORKER_CMD", "-m drawdown worker").split()
        self.process = subprocess.Popen([sys.executable, *command], cwd=PROJECT_ROOT, env=env,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return time.monotonic()

    def status(self) -> dict:
        try:
            url = f"http://127.0.0.1:{self.settings.worker_web_port}/drawdown/ready/"
            with urllib.request.urlopen(url, timeout=1) as response:
                return json.loads(response.read())
        except OSError as error:
            body = getattr(error, "read", None)
            return json.loads(body()) if body else {}

    def wait(self, predicate, timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process and self.process.poll() is None, f"worker died, see {self.log_path}"
            status = self.status()
            if status and predicate(status):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"worker did not get there in {timeout_s}s: {self.status()}")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _produce_setup(settings: Settings, customers: list[str]) -> int:
    from producers.producer import FactProducer

    now_ms = time.time_ns() // 1_000_000
    with FactProducer(settings, validate=False) as producer:
        producer.send_all(w.catalog_facts())
        producer.flush()
        for customer_id in customers:
            producer.send_all(w.customer_setup(customer_id, None, start_ms=now_ms - 3_600_000,
                                               grant_minor=10_000_000))
    return len(customers) * 3


def _produce_events(settings: Settings, customers: list[str], rng: random.Random, event_time_span_ms: int) -> int:
    """EVENTS meter events; event times spread over the span before now (0: stamped when sent)."""
    from producers.producer import FactProducer

    with FactProducer(settings, validate=False) as producer:
        for n in range(EVENTS):
            name = "hypernian_output_tokens" if n % 2 else "hypernian_input_tokens"
            customer_id = rng.choice(customers)
            payload = {"stripe_customer_id": customer_id, "value": str(rng.randint(1, 99))}
            if event_time_span_ms:
                now_ms = time.time_ns() // 1_000_000
                producer.send_meter_event(name, payload, event_time_ms=now_ms - rng.randrange(event_time_span_ms))
            else:
                producer.send_meter_event(name, payload)
    return EVENTS


def _ceiling_events_per_second(settings: Settings, total: int) -> float:
    """Bare confluent-kafka: consume + decode + dict-sum over the same topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.codec import FactCodec

    codec = FactCodec(settings.schema_registry_url or None)
    consumer = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                         "group.id": f"{settings.topic_prefix}.ceiling", "enable.auto.commit": False})
    topic = settings.topic("customer-facts")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    sums: dict[tuple[str, str], Decimal] = {}
    seen = 0
    started = time.perf_counter()
    try:
        while seen < total:
            for message in consumer.consume(10_000, timeout=1):
                if message.error():
                    continue
                seen += 1
                fact = codec.decode(message.value())
                payload = getattr(fact, "payload", None)
                if payload:
                    key = (fact.customer_id, fact.event_name)
                    sums[key] = sums.get(key, Decimal(0)) + Decimal(payload["value"])
    finally:
        consumer.close()
    return seen / (time.perf_counter() - started)


def _freshness_ms(settings: Settings, worker: _Worker, customers: list[str], rng: random.Random) -> list[float]:
    """Produce a steady load with probe events; latency of each probe's LiveBalanceChanged."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    from producers.producer import FactProducer
    from schemas.codec import FactCodec

    codec = FactCodec(settings.schema_registry_url or None)
    probes = [f"cus_probe_{n}" for n in range(PROBE_CUSTOMERS)]
    now_ms = time.time_ns() // 1_000_000
    reader = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                       "group.id": f"{settings.topic_prefix}.freshness", "enable.auto.commit": False})
    reader.assign([TopicPartition(settings.topic("live-balances"), p, OFFSET_END) for p in range(settings.partitions)])
    latencies: list[float] = []
    pending: dict[str, tuple[int, float]] = {}  # probe customer -> (accrued it must reach, sent at)
    accrued_target = {probe: 0 for probe in probes}
    with FactProducer(settings, validate=False, config={"linger.ms": 1}) as producer:
        for probe in probes:
            producer.send_all(w.customer_setup(probe, None, start_ms=now_ms - 3_600_000, grant_minor=10_000_000))
        producer.flush()
        worker.wait(lambda status: status.get("facts", 0) > 0)
        time.sleep(1.0)
        reader.consume(10_000, timeout=0.5)
        started = time.monotonic()
        sent = 0
        probe_index = 0
        while time.monotonic() - started < STEADY_SECONDS:
            due = int((time.monotonic() - started) * STEADY_EVENTS_PER_SECOND)
            while sent < due:
                producer.send_meter_event("hypernian_input_tokens",
                                          {"stripe_customer_id": rng.choice(customers), "value": "1"})
                sent += 1
                if sent % 50 == 0:  # a probe every 10 ms, each probe customer every 400 ms
                    probe = probes[probe_index % PROBE_CUSTOMERS]
                    probe_index += 1
                    if probe not in pending:
                        accrued_target[probe] += 3
                        producer.send_meter_event("hypernian_input_tokens",
                                                  {"stripe_customer_id": probe, "value": "1"})
                        pending[probe] = (accrued_target[probe], time.monotonic())
            producer.poll(0)
            for message in reader.consume(1000, timeout=0.002):
                if message.error():
                    continue
                fact = codec.decode(message.value())
                if isinstance(fact, LiveBalanceChanged) and fact.customer_id in pending:
                    target, sent_at = pending[fact.customer_id]
                    if fact.accrued_usage_minor >= target:
                        latencies.append((time.monotonic() - sent_at) * 1000)
                        del pending[fact.customer_id]
    reader.close()
    return latencies


def _throughput(worker: _Worker, total: int, label: str) -> float:
    """Events/s from the first fact the worker folds past what it had to `total` facts folded."""
    ready = worker.wait(lambda status: status.get("ready"))
    first = worker.wait(lambda status: status.get("facts", 0) > ready.get("facts", 0))
    first_at = time.monotonic()
    last = worker.wait(lambda status: status.get("facts", 0) >= total, timeout_s=600)
    throughput = (last["facts"] - first["facts"]) / (time.monotonic() - first_at)
    phases = {phase: round(seconds - first.get("seconds", {}).get(phase, 0.0), 1)
              for phase, seconds in last.get("seconds", {}).items()}
    print(f"  worker, {label}: {throughput:,.0f} events/s in {last['batches'] - first['batches']} batches; "
          f"seconds per phase: {phases}", file=sys.stderr)
    return throughput


def _row(name: str, unit: str, measured: float, ceiling: float | None, target: str, passed: bool) -> dict[str, Any]:
    return {"name": name, "unit": unit, "measured": round(measured, 1),
            "ceiling": None if ceiling is None else round(ceiling, 1),
            "ratio": None if not ceiling else round(measured / ceiling, 3), "target": target, "passed": passed}


def run(settings: Settings) -> list[dict[str, Any]]:
    rng = random.Random(11)
    work_dir = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    # A sub-prefix ("<run prefix>.streams"), so the harness's clean-up of the run's topics covers ours
    # and the worker's changelog topics too.
    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}.streams",
                                           "worker_data_dir": work_dir / "worker",
                                           "worker_web_port": _free_port()})
    ensure_topics(settings)
    customers = [f"cus_bench_{n}" for n in range(CUSTOMERS)]
    total = _produce_setup(settings, customers) + _produce_events(settings, customers, rng, event_time_span_ms=0)
    ceiling = _ceiling_events_per_second(settings, total)

    worker = _Worker(settings, work_dir / "worker.log")
    rows = []
    try:
        worker.start()
        throughput = _throughput(worker, total, "live traffic")
        rows.append(_row("worker fold: live meter events, all guards on (1 worker)", "events/s", throughput, ceiling,
                         f">= {TARGET_EVENTS_PER_SECOND:,}/s", throughput >= TARGET_EVENTS_PER_SECOND))
        total += _produce_events(settings, customers, rng, event_time_span_ms=EVENT_TIME_SPAN_MS)
        throughput = _throughput(worker, total, "backfill")
        rows.append(_row("worker fold: backfill over 30 min (a minute bucket per event), all guards on", "events/s",
                         throughput, ceiling, "(worst case, reported)", True))
        rss = worker.peak_rss_bytes()
        rows.append(_row(f"worker peak RSS ({CUSTOMERS:,} customers x 2 meters, {2 * EVENTS:,} events)",
                         "MiB", rss / 2**20, None, "< 1024 MiB", rss < TARGET_RSS_BYTES))

        before = worker.status()
        latencies = sorted(_freshness_ms(settings, worker, customers, rng))
        after = worker.status()
        phases = {phase: round(seconds - before.get("seconds", {}).get(phase, 0.0), 2)
                  for phase, seconds in after.get("seconds", {}).items()}
        print(f"  worker at {STEADY_EVENTS_PER_SECOND:,} events/s: {after['batches'] - before['batches']} batches, "
              f"seconds per phase: {phases}", file=sys.stderr)
        if latencies:
            p50 = latencies[len(latencies) // 2]
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        else:
            p50 = p99 = float("inf")
        print(f"  worker's own lag over its last batches (oldest fact produced -> outputs sent): "
              f"{worker.status().get('recent_batch_lag_ms')}", file=sys.stderr)
        rows.append(_row(f"freshness p50 at {STEADY_EVENTS_PER_SECOND:,} events/s ({len(latencies)} probes)", "ms",
                         p50, None, "(p99 < 1000 ms)", p99 < TARGET_P99_MS))
        rows.append(_row(f"freshness p99 at {STEADY_EVENTS_PER_SECOND:,} events/s", "ms", p99, None,
                         f"< {TARGET_P99_MS} ms", p99 < TARGET_P99_MS))

        worker.kill()
        killed_at = worker.start()
        worker.wait(lambda status: status.get("ready"), timeout_s=120)
        ready_s = time.monotonic() - killed_at
        rows.append(_row("recovery after kill -9: restart to ready (tables recovered, partitions owned)", "s",
                         ready_s, None, "(reported)", True))
    finally:
        worker.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    from drawdown.settings import get_settings

    for result in run(get_settings()):
        print(result)

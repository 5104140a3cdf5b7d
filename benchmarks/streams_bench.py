"""Stream worker: throughput, freshness, memory and recovery of one real `drawdown worker` process.

1. Catch-up from a backlog (not live traffic: the events are all in the log before the worker
   folds them, so its batches run full): one worker with every guard on (validation, dedupe,
   offset guards, minute buckets, period usage, live balances, outputs acked before state
   writes). The worker first folds the catalog and the customers and is durable to the end; it
   is then paused (SIGSTOP) while the backlog is produced, and the clock runs from its release
   (SIGCONT: its first batch counts) until the progress group says every partition is durable
   to the end (the last batch's outputs and state acknowledged, not merely folded). Ceiling,
   same run, same records: a bare confluent-kafka consume + decode + dict-sum loop over the
   backlog's offsets. Target >= 50,000 events/s. Two rows: events stamped when sent, as the SDK
   does (the target row), and a backfill (event times spread over 30 minutes, so nearly every
   event opens a minute bucket of its own and costs a bucket record and a UsageBucketUpdated
   fact: the worst case, info).
2. Freshness at a steady 5,000 events/s: probe events to probe customers; latency from produce to
   the LiveBalanceChanged that reflects the probe, as the reader sees it. Target p99 < 1 s (p50
   info).
3. Peak RSS of the worker (VmHWM) after folding many customers x 2 meters of minute buckets.
   Target < 1 GiB. (Scaled to the events of step 1: the run must fit a 2-core shared machine.)
4. Recovery: kill -9, restart, time until the worker is ready again (info).

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

from benchmarks.harness import measurement, quick
from billing.facts import LiveBalanceChanged
from drawdown.settings import PROJECT_ROOT, Settings
from streams import walkthrough as w
from streams.topics import ensure_topics

EVENTS = 300_000
CUSTOMERS = 5_000
QUICK_EVENTS = 60_000
QUICK_CUSTOMERS = 1_000
EVENT_TIME_SPAN_MS = 30 * 60_000  # events spread over 30 minutes: many minute buckets per customer
SEND_BATCH_EVENTS = 1_000  # the backlog goes out through the batch API: the worker is paused meanwhile
STEADY_EVENTS_PER_SECOND = 5_000
STEADY_SECONDS = 12
QUICK_STEADY_SECONDS = 4
DURABLE_POLL_S = 0.1
PROBE_CUSTOMERS = 40
TARGET_EVENTS_PER_SECOND = 50_000
TARGET_P99_MS = 1000
TARGET_RSS_BYTES = 1 << 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Worker:
    def __init__(self, settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.settings, self.log_path, self.env = settings, log_path, env or {}
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=self.settings.effective_kafka_bootstrap_servers,
                   DRAWDOWN_TOPIC_PREFIX=self.settings.topic_prefix, DRAWDOWN_PARTITIONS=str(self.settings.partitions),
                   DRAWDOWN_WORKER_DATA_DIR=str(self.settings.worker_data_dir),
                   DRAWDOWN_WORKER_WEB_PORT=str(self.settings.worker_web_port), PYTHONPATH=str(PROJECT_ROOT),
                   **self.env)
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

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> float:
        self.process.send_signal(signal.SIGCONT)
        return time.monotonic()

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


def _produce_events(settings: Settings, customers: list[str], rng: random.Random, events: int,
                    event_time_span_ms: int) -> int:
    """`events` meter events, half to each meter, through the SDK's batch API (fast: the worker
    waits paused meanwhile); event times spread over the span before now (0: stamped when sent)."""
    from producers.producer import FactProducer

    with FactProducer(settings, validate=False) as producer:
        for start in range(0, events, SEND_BATCH_EVENTS):
            count = min(SEND_BATCH_EVENTS, events - start)
            for name, share in (("hypernian_input_tokens", count - count // 2), ("hypernian_output_tokens", count // 2)):
                payloads = [{"stripe_customer_id": rng.choice(customers), "value": str(rng.randint(1, 99))}
                            for _ in range(share)]
                now_ms = time.time_ns() // 1_000_000
                event_times_ms = ([now_ms - rng.randrange(event_time_span_ms) for _ in payloads]
                                  if event_time_span_ms else None)
                producer.send_meter_events(name, payloads, event_times_ms=event_times_ms)
    return events


def _tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (the worker's RocksDB stores)."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _changelog_footprint(settings: Settings) -> tuple[int, int]:
    """(records, bytes of keys and values) in the worker's two changelog topics, read to their ends."""
    from confluent_kafka import Consumer, TopicPartition

    topics = [f"{settings.topic_prefix}.worker-{table}-changelog" for table in ("customers", "usage")]
    consumer = Consumer(settings.kafka_client_config() | {"group.id": f"{settings.topic_prefix}.footprint",
                                                           "enable.auto.commit": False})
    records = payload = 0
    try:
        ends = {}
        for topic in topics:
            for partition in range(settings.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if high > low:
                    ends[(topic, partition)] = high
        consumer.assign([TopicPartition(topic, partition, 0) for topic, partition in ends])
        deadline = time.monotonic() + 120
        while ends:
            batch = consumer.consume(num_messages=10_000, timeout=1.0)
            if not batch:  # (a partition may end in a transaction marker: its position tells)
                for position in consumer.position([TopicPartition(t, p) for t, p in ends]):
                    if position.offset >= ends[(position.topic, position.partition)]:
                        ends.pop((position.topic, position.partition))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"changelogs not read to their ends in 120 s: {sorted(ends)}")
            for message in batch:
                if message.error() is not None:
                    continue
                records += 1
                payload += len(message.key() or b"") + len(message.value() or b"")
                if message.offset() + 1 >= ends.get((message.topic(), message.partition()), 0):
                    ends.pop((message.topic(), message.partition()), None)
    finally:
        consumer.close()
    return records, payload


def _end_offsets(settings: Settings) -> dict[int, int]:
    """The high watermark of every customer-facts partition."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic("customer-facts")
    probe = Consumer({**settings.kafka_client_config(),
                      "group.id": f"{settings.topic_prefix}.bench-probe"})
    try:
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(settings.partitions)}
    finally:
        probe.close()


def _wait_durable_to(settings: Settings, worker: _Worker, ends: dict[int, int], timeout_s: float = 600) -> float:
    """Wait until the worker's progress group says every partition is durable up to `ends` (every
    fact folded, its outputs and state acknowledged); returns when that was seen."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from streams.source import progress_group

    topic = settings.topic("customer-facts")
    admin = AdminClient(settings.kafka_client_config())
    request = ConsumerGroupTopicPartitions(progress_group(settings), [TopicPartition(topic, p) for p in ends])
    deadline = time.monotonic() + timeout_s
    durable: dict[int, int] = {}
    while time.monotonic() < deadline:
        assert worker.process and worker.process.poll() is None, f"worker died, see {worker.log_path}"
        try:
            answer = admin.list_consumer_group_offsets([request], request_timeout=10)
            durable = {tp.partition: tp.offset for tp in next(iter(answer.values())).result().topic_partitions}
        except Exception:  # noqa: BLE001 - no group yet: nothing durable
            durable = {}
        if all(durable.get(p, -1) >= end for p, end in ends.items()):
            return time.monotonic()
        time.sleep(DURABLE_POLL_S)
    raise TimeoutError(f"worker not durable to the end in {timeout_s}s: durable {durable}, ends {ends}")


def _catch_up(settings: Settings, worker: _Worker, produce_backlog, label: str) -> tuple[float, dict[int, int]]:
    """Pause the (idle, durable) worker, produce the backlog, release it; events/s from the release
    until the progress group is durable to the backlog's end. Also returns where the backlog
    starts, for the ceiling to read the same records."""
    starts = _end_offsets(settings)
    before = worker.status()
    worker.pause()
    try:
        events = produce_backlog()
    finally:
        released_at = worker.resume()
    ends = _end_offsets(settings)
    durable_at = _wait_durable_to(settings, worker, ends)
    after = worker.status()
    throughput = events / (durable_at - released_at)
    phases = {phase: round(seconds - before.get("seconds", {}).get(phase, 0.0), 1)
              for phase, seconds in after.get("seconds", {}).items()}
    print(f"  worker, {label}: {throughput:,.0f} events/s, {events:,} events in {durable_at - released_at:.1f} s "
          f"(release to durable), {after.get('batches', 0) - before.get('batches', 0)} batches; "
          f"seconds per phase: {phases}", file=sys.stderr)
    return throughput, starts


def _ceiling_events_per_second(settings: Settings, starts: dict[int, int], total: int) -> float:
    """Bare confluent-kafka: consume + decode + dict-sum over the same records (from `starts`)."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.codec import FactCodec

    codec = FactCodec(settings.schema_registry_url or None)
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": f"{settings.topic_prefix}.ceiling", "enable.auto.commit": False})
    topic = settings.topic("customer-facts")
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
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


def _freshness_ms(settings: Settings, worker: _Worker, customers: list[str], rng: random.Random,
                  steady_seconds: float) -> list[float]:
    """Produce a steady load with probe events; latency of each probe's LiveBalanceChanged."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    from producers.producer import FactProducer
    from schemas.codec import FactCodec

    codec = FactCodec(settings.schema_registry_url or None)
    probes = [f"cus_probe_{n}" for n in range(PROBE_CUSTOMERS)]
    now_ms = time.time_ns() // 1_000_000
    reader = Consumer({**settings.kafka_client_config(),
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
        while time.monotonic() - started < steady_seconds:
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


def run(settings: Settings) -> list[dict[str, Any]]:
    rng = random.Random(11)
    events = QUICK_EVENTS if quick() else EVENTS
    customer_count = QUICK_CUSTOMERS if quick() else CUSTOMERS
    work_dir = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    # A sub-prefix ("<run prefix>.streams"), so the harness's clean-up of the run's topics covers ours
    # and the worker's changelog topics too.
    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}.streams",
                                           "worker_data_dir": work_dir / "worker",
                                           "worker_web_port": _free_port()})
    ensure_topics(settings)
    customers = [f"cus_bench_{n}" for n in range(customer_count)]
    _produce_setup(settings, customers)

    worker = _Worker(settings, work_dir / "worker.log")
    rows = []
    try:
        worker.start()  # setup, outside the clock: boot, the catalog and the customers folded
        worker.wait(lambda status: status.get("ready"))
        _wait_durable_to(settings, worker, _end_offsets(settings))

        throughput, starts = _catch_up(settings, worker, lambda: _produce_events(settings, customers, rng, events, 0),
                                       "catch-up from backlog")
        ceiling = _ceiling_events_per_second(settings, starts, events)
        rows.append(measurement(f"worker catch-up from backlog: {events:,} meter events already in the log, "
                                f"{customer_count:,} customers, all guards on, clock to durable (1 worker)",
                                "events/s", throughput, ceiling, at_least=TARGET_EVENTS_PER_SECOND))
        throughput, starts = _catch_up(
            settings, worker, lambda: _produce_events(settings, customers, rng, events, EVENT_TIME_SPAN_MS),
            "backfill from backlog")
        ceiling = _ceiling_events_per_second(settings, starts, events)
        rows.append(measurement("worker catch-up from backlog, backfill over 30 min (a minute bucket per event)",
                                "events/s", throughput, ceiling, info="the worst case; no target"))
        rss = worker.peak_rss_bytes()
        rows.append(measurement(f"worker peak RSS ({customer_count:,} customers x 2 meters, {2 * events:,} events)",
                                "MiB", rss / 2**20, below=TARGET_RSS_BYTES / 2**20))
        disk_bytes = _tree_bytes(work_dir / "worker")
        records, payload_bytes = _changelog_footprint(settings)
        print(f"  worker state after {2 * events:,} events: {disk_bytes:,} bytes on disk; changelogs "
              f"{records:,} records, {payload_bytes:,} bytes of keys and values", file=sys.stderr)
        rows.append(measurement(f"worker state on disk per event ({2 * events:,} events, {customer_count:,} customers; "
                                "RocksDB, all within the dedupe window)", "bytes", disk_bytes / (2 * events),
                                info="sizing: per event of the last ~37 days (the soak rows show it level off)"))
        rows.append(measurement("worker changelog payload per event (keys and values, before compaction)", "bytes",
                                payload_bytes / (2 * events), info="sizing: what a restore reads back"))

        before = worker.status()
        latencies = sorted(_freshness_ms(settings, worker, customers, rng,
                                         QUICK_STEADY_SECONDS if quick() else STEADY_SECONDS))
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
        rows.append(measurement(f"freshness p50 at {STEADY_EVENTS_PER_SECOND:,} events/s ({len(latencies)} probes)",
                                "ms", p50, info="the p99 row carries the target"))
        rows.append(measurement(f"freshness p99 at {STEADY_EVENTS_PER_SECOND:,} events/s", "ms", p99,
                                below=TARGET_P99_MS))

        worker.kill()
        killed_at = worker.start()
        worker.wait(lambda status: status.get("ready"), timeout_s=120)
        ready_s = time.monotonic() - killed_at
        rows.append(measurement("recovery after kill -9: restart to ready (tables recovered, partitions owned)", "s",
                                ready_s, info="no target"))
    finally:
        worker.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    return rows

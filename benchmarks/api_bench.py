"""API benchmarks against a real `drawdown api` process (uvicorn), side by side with their ceilings.

1. GET /v1/billing/credit_balance_summary at a fixed 500 requests/s (latency measured from each
   request's scheduled start, so a slow server cannot hide queueing): achieved rate, p50, p99;
   after one unmeasured second, 3 rounds of 5 s, each figure the median of the rounds.
   Ceiling: a bare psycopg primary-key select of the same grant row (p50/p99 of sequential calls;
   the ratio is bare / measured, the fraction of the bare latency's speed the API reaches).
   Target: p99 < 20 ms at 500 requests/s with the rate held and no errors (p50 info). The
   closed-loop maximum (16 clients) is info, against bare selects/s on one connection.
2. POST /v2/billing/meter_event_stream, 100 events per request, 8 concurrent clients: events/s
   accepted and acknowledged by Kafka (acks=all). Ceiling: a bare confluent-kafka producer with the
   same configuration producing the same facts already encoded. Target: >= 20,000 events/s.

    python -m benchmarks --only api
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg
from psycopg import sql

from benchmarks.harness import measurement, quick
from drawdown.settings import PROJECT_ROOT, Settings

RATE_PER_SECOND = 500
RATE_SECONDS = 5
QUICK_RATE_SECONDS = 2
RATE_ROUNDS = 3
TARGET_P99_MS = 20.0
INGEST_SECONDS = 6
QUICK_INGEST_SECONDS = 2
INGEST_CLIENTS = 8
EVENTS_PER_REQUEST = 100
TARGET_EVENTS_PER_SECOND = 20_000
CUSTOMERS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _seed(database_url: str, event_name: str) -> tuple[str, str]:
    """Rows the reads need, written straight into the projection: a customer with a grant and
    its ledger, a meter, and customers for the ingest."""
    customer_id, grant_id = "cus_bench_balance", "credgr_bench_balance"
    now = int(time.time() * 1000)
    with psycopg.connect(database_url) as conn:
        conn.execute("insert into customers (id, name, metadata, created_ms) values (%s, 'Bench', '{}', %s)",
                     (customer_id, now))
        conn.execute("insert into credit_grants (id, customer_id, amount_minor, currency, scope_price_type,"
                     " scope_price_ids, category, priority, effective_at_ms, metadata, created_ms, updated_ms)"
                     " values (%s, %s, 1000, 'usd', 'metered', '{}', 'paid', 50, %s, '{}', %s, %s)",
                     (grant_id, customer_id, now, now, now))
        for index, (kind, reason, amount) in enumerate((("credit", "credits_granted", 1000),
                                                        ("debit", "credits_applied", 300))):
            conn.execute("insert into credit_balance_transactions (id, customer_id, grant_id, currency, amount_minor,"
                         " type, reason, effective_at_ms) values (%s, %s, %s, 'usd', %s, %s, %s, %s)",
                         (f"cbtxn_bench_{index}", customer_id, grant_id, amount, kind, reason, now + index))
        conn.execute("insert into meters (id, display_name, event_name, aggregation, customer_payload_key,"
                     " value_payload_key, status, created_ms, updated_ms) values ('mtr_bench', 'Tokens', %s, 'sum',"
                     " 'stripe_customer_id', 'value', 'active', %s, %s)", (event_name, now, now))
        with conn.cursor() as cursor:
            cursor.executemany("insert into customers (id, metadata, created_ms) values (%s, '{}', %s)",
                               [(f"cus_bench_{index:04d}", now) for index in range(CUSTOMERS)])
    return customer_id, grant_id


def _bare_select_ms(database_url: str, grant_id: str, count: int = 3000) -> tuple[float, float, float]:
    """p50 and p99 (ms) of a bare psycopg primary-key select of the grant row, and selects/s."""
    latencies = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        started_all = time.perf_counter()
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("select * from credit_grants where id = %s", (grant_id,)).fetchone()
            latencies.append((time.perf_counter() - started) * 1000)
        per_second = count / (time.perf_counter() - started_all)
    return _percentile(latencies, 0.5), _percentile(latencies, 0.99), per_second


class _RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares two
    cores with the server, so it must cost far less per request than httpx does."""

    def __init__(self, host: str, port: int, key: str, connections: int) -> None:
        self.host, self.port, self.key, self.size = host, port, key, connections
        self.pool: asyncio.Queue = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reader, writer = await self.pool.get()
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return int(status_line.split()[1]), await reader.readexactly(length)
        finally:
            self.pool.put_nowait((reader, writer))

    async def close(self) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()


async def _fixed_rate(port: int, key: str, customer_id: str,
                      seconds: int) -> tuple[list[float], list[float], list[float], int]:
    """Per round: achieved rate, p50 and p99 (ms); and the errors over all rounds."""
    latencies: list[float] = []
    errors = 0
    total = RATE_PER_SECOND * seconds
    path = f"/v1/billing/credit_balance_summary?customer={customer_id}"
    client = _RawClient("127.0.0.1", port, key, connections=32)
    await client.open()

    async def one(scheduled: float, record: bool) -> None:
        nonlocal errors
        status, _ = await client.request("GET", path)
        if status != 200:
            errors += 1
        if record:
            latencies.append((time.perf_counter() - scheduled) * 1000)

    async def at_fixed_rate(count: int, record: bool) -> float:
        tasks = []
        started = time.perf_counter()
        for index in range(count):
            scheduled = started + index / RATE_PER_SECOND
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, record)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - started

    await at_fixed_rate(RATE_PER_SECOND, record=False)  # one unmeasured second: connections, caches
    rates, p50s, p99s = [], [], []
    for _ in range(RATE_ROUNDS):  # every round counts: the harness keeps the median
        latencies.clear()
        elapsed = await at_fixed_rate(total, record=True)
        rates.append(total / elapsed)
        p50s.append(_percentile(latencies, 0.5))
        p99s.append(_percentile(latencies, 0.99))
    await client.close()
    return rates, p50s, p99s, errors


async def _closed_loop(port: int, key: str, customer_id: str, seconds: float = 3.0) -> float:
    """Requests/s with 16 clients each sending its next request as soon as the last one is answered."""
    path = f"/v1/billing/credit_balance_summary?customer={customer_id}"
    client = _RawClient("127.0.0.1", port, key, connections=16)
    await client.open()
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.request("GET", path)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(16)))
    elapsed = time.perf_counter() - started
    await client.close()
    return done / elapsed


def _ingest_bodies(event_name: str, count: int) -> list[bytes]:
    timestamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    bodies = []
    for request_index in range(count):
        events = [{"event_name": event_name, "identifier": f"b{request_index}-{index}-{uuid.uuid4().hex[:6]}",
                   "timestamp": timestamp,
                   "payload": {"stripe_customer_id": f"cus_bench_{(request_index + index) % CUSTOMERS:04d}",
                               "value": str(1 + index)}} for index in range(EVENTS_PER_REQUEST)]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


async def _ingest(port: int, key: str, bodies: list[bytes], seconds: int) -> tuple[float, int]:
    accepted = 0
    errors = 0
    next_body = 0
    client = _RawClient("127.0.0.1", port, key, connections=INGEST_CLIENTS)
    await client.open()
    await client.request("POST", "/v2/billing/meter_event_stream", bodies[-1])  # warm up
    deadline = time.perf_counter() + seconds

    async def client_loop() -> None:
        nonlocal accepted, errors, next_body
        while time.perf_counter() < deadline and next_body < len(bodies) - 1:
            body = bodies[next_body]
            next_body += 1
            status, answer = await client.request("POST", "/v2/billing/meter_event_stream", body)
            if status == 200:
                accepted += json.loads(answer)["accepted"]
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(INGEST_CLIENTS)))
    elapsed = time.perf_counter() - started
    await client.close()
    return accepted / elapsed, errors


def _bare_produce_events_per_second(settings: Settings, event_name: str, count: int = 100_000) -> float:
    from confluent_kafka import Producer

    from billing.facts import MeterEventRecorded
    from schemas.codec import FactCodec
    from streams.topics import PRODUCER_PARTITIONER

    codec = FactCodec(settings.schema_registry_url or None)
    now = int(time.time() * 1000)
    records = [(f"cus_bench_{index % CUSTOMERS:04d}", codec.encode(MeterEventRecorded(
        customer_id=f"cus_bench_{index % CUSTOMERS:04d}", event_name=event_name, identifier=f"bare-{index}",
        payload={"stripe_customer_id": f"cus_bench_{index % CUSTOMERS:04d}", "value": "1"}, event_time_ms=now,
        received_at_ms=now))) for index in range(count)]
    producer = Producer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers, "enable.idempotence": True,
                         "partitioner": PRODUCER_PARTITIONER, "linger.ms": 2, "compression.type": "lz4"})
    topic = settings.topic("customer-facts")
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key.encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    return count / (time.perf_counter() - started)


def run(settings: Settings) -> list[dict]:
    from api.auth import create_key
    from projections.migrate import migrate
    from streams.topics import ensure_topics

    server, _, _ = settings.effective_database_url.rpartition("/")
    database = f"bench_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    run_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-api",
                                               "database_url": f"{server}/{database}", "api_port": _free_port()})
    database_url = run_settings.effective_database_url
    process = None
    try:
        ensure_topics(run_settings)
        migrate(database_url)
        event_name = "bench_tokens"
        customer_id, grant_id = _seed(database_url, event_name)
        key = create_key(database_url)
        with TemporaryDirectory() as state_dir:
            env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=run_settings.effective_kafka_bootstrap_servers,
                       DATABASE_URL=database_url, DRAWDOWN_TOPIC_PREFIX=run_settings.topic_prefix,
                       DRAWDOWN_PARTITIONS=str(run_settings.partitions), DRAWDOWN_API_PORT=str(run_settings.api_port),
                       DRAWDOWN_API_HOST="127.0.0.1", DRAWDOWN_STATE_DIR=state_dir, PYTHONPATH=str(PROJECT_ROOT))
            log = open(Path(state_dir) / "api.log", "ab")
            process = subprocess.Popen([sys.executable, "-m", "drawdown", "api"], cwd=PROJECT_ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
            base_url = f"http://127.0.0.1:{run_settings.api_port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(base_url + "/healthz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("the API did not start: " + (Path(state_dir) / "api.log").read_text()[-2000:])
                    time.sleep(0.2)
            bare_p50_ms, bare_p99_ms, bare_per_second = _bare_select_ms(database_url, grant_id)
            rates, p50s_ms, p99s_ms, errors = asyncio.run(_fixed_rate(
                run_settings.api_port, key, customer_id, QUICK_RATE_SECONDS if quick() else RATE_SECONDS))
            max_rate = asyncio.run(_closed_loop(run_settings.api_port, key, customer_id))
            bodies = _ingest_bodies(event_name, 2000)
            events_per_second, ingest_errors = asyncio.run(_ingest(
                run_settings.api_port, key, bodies, QUICK_INGEST_SECONDS if quick() else INGEST_SECONDS))
            bare_events_per_second = _bare_produce_events_per_second(run_settings, event_name)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    rate_held = measurement("api: balance summary throughput (ceiling: the 500 req/s offered)", "req/s", rates, RATE_PER_SECOND,
                            min_ratio=0.95, also_ok=errors == 0, also=f"no errors ({errors} errors)")
    return [
        measurement("api: balance summary p99 at 500 req/s (ceiling: bare psycopg pk select p99)", "ms", p99s_ms,
                    bare_p99_ms, below=TARGET_P99_MS, lower_is_better=True, also_ok=rate_held["passed"],
                    also="the rate held without errors (row below)"),
        measurement("api: balance summary p50 at 500 req/s (ceiling: bare psycopg pk select p50)", "ms", p50s_ms,
                    bare_p50_ms, lower_is_better=True, info="the p99 row carries the target"),
        rate_held,
        measurement("api: balance summary max throughput, 16 clients (ceiling: bare pk selects/s, one connection)",
                    "req/s", max_rate, bare_per_second, info="no target here"),
        measurement("api: batch ingest, 100 events/request, acked by Kafka (ceiling: bare producer)", "events/s",
                    events_per_second, bare_events_per_second, at_least=TARGET_EVENTS_PER_SECOND,
                    also_ok=ingest_errors == 0, also=f"no errors ({ingest_errors} errors)"),
    ]

"""API benchmarks against a real `drawdown api` (uvicorn, Settings.api_processes processes), side by
side with their ceilings. The load comes from benchmarks/load_generator.py, in processes of its own.

1. Reads: GET /v1/billing/credit_balance_summary and GET /v1/billing/live_balance, each
   - at most: GENERATOR_CONNECTIONS connections sending as fast as answers come (closed loop),
     requests/s over MAX_SECONDS; target >= 2,000 requests/s. Ceiling: the same number of
     processes as the API runs, each sending the endpoint's own SQL statement (api.routes.balances)
     on one connection in a loop, no HTTP: statements/s.
   - at a fixed 1,000 requests/s offered (open loop, latency from each request's due time, so
     queueing shows): p99; target < 20 ms with the rate held (>= 0.95 of offered) and no errors.
     Ceiling: p99 of the same statement run sequentially on one connection.
   Each figure is the median of RATE_ROUNDS rounds, each after one unmeasured second. The API runs
   with the rate limit far above the offered rate (the default 1,000/s per key would refuse the
   load, one key sends it all); the limiter still runs on every request.
2. POST /v2/billing/meter_event_stream, 100 events per request, 8 concurrent clients: events/s
   accepted and acknowledged by Kafka (acks=all). Ceiling: a bare confluent-kafka producer with the
   same configuration producing the same facts already encoded. Target: >= 20,000 events/s.

The machine is shared: run the API section alone (`python -m benchmarks --only api`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
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

from api.routes.balances import LIVE_BALANCE_QUERY, SUMMARY_QUERY

from benchmarks.harness import measurement, quick
from drawdown.settings import PROJECT_ROOT, Settings, with_database

RATE_PER_SECOND = 1000
RATE_SECONDS = 5
MAX_SECONDS = 4
QUICK_SECONDS = 2
RATE_ROUNDS = 3
QUICK_ROUNDS = 2
TARGET_P99_MS = 20.0
TARGET_READS_PER_SECOND = 2000
GENERATOR_PROCESSES = 2
GENERATOR_CONNECTIONS = 32  # closed loop: enough to keep every API process busy
OPEN_LOOP_CONNECTIONS = 64  # open loop: enough that a request rarely waits for a free connection
BENCH_RATE_LIMIT_PER_SECOND = 1_000_000
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
        conn.execute("insert into live_balances (customer_id, currency, available_credits_minor, accrued_usage_minor,"
                     " live_balance_minor, as_of_ms) values (%s, 'usd', 700, 250, 450, %s)", (customer_id, now))
        with conn.cursor() as cursor:
            cursor.executemany("insert into customers (id, metadata, created_ms) values (%s, '{}', %s)",
                               [(f"cus_bench_{index:04d}", now) for index in range(CUSTOMERS)])
    return customer_id, grant_id


def _statement_loop(database_url: str, statement: str, customer_id: str, seconds: float,
                    latencies: bool = False) -> tuple[int, float, list[float]]:
    """`statement` for `customer_id` in a loop on one connection (the endpoint's SQL without HTTP):
    statements run, seconds, and each one's latency (ms) when asked."""
    from psycopg.rows import dict_row

    timings: list[float] = []
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(50):  # prepared after 5, as in the API's pool
            conn.execute(statement, (customer_id,)).fetchall()
        count, started = 0, time.perf_counter()
        while (now := time.perf_counter()) - started < seconds:
            conn.execute(statement, (customer_id,)).fetchall()
            count += 1
            if latencies:
                timings.append((time.perf_counter() - now) * 1000)
        return count, time.perf_counter() - started, timings


def _bare_statements_per_second(database_url: str, statement: str, customer_id: str, processes: int,
                                seconds: float) -> float:
    """Statements/s from `processes` processes each looping on its own connection."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(_statement_loop, [(database_url, statement, customer_id, seconds)] * processes)
    return sum(count for count, _, _ in results) / max(elapsed for _, elapsed, _ in results)


def _bare_p99_ms(database_url: str, statement: str, customer_id: str, seconds: float) -> float:
    _, _, latencies = _statement_loop(database_url, statement, customer_id, seconds, latencies=True)
    return _percentile(latencies, 0.99)


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


def _reads(port: int, key: str, path: str, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per round: closed-loop requests/s, and at RATE_PER_SECOND offered the achieved rate and p99;
    errors over all rounds."""
    from benchmarks.load_generator import generate

    figures: dict[str, list[float]] = {"max": [], "rate": [], "p99": [], "errors": [0.0]}
    for _ in range(rounds):
        most = generate("127.0.0.1", port, path, key, seconds=seconds, connections=GENERATOR_CONNECTIONS,
                        processes=GENERATOR_PROCESSES)
        offered = generate("127.0.0.1", port, path, key, seconds=seconds, rate=RATE_PER_SECOND,
                           connections=OPEN_LOOP_CONNECTIONS, processes=GENERATOR_PROCESSES)
        figures["max"].append(most.per_second)
        figures["rate"].append(offered.per_second)
        figures["p99"].append(offered.percentile_ms(0.99))
        figures["errors"][0] += most.errors + offered.errors
    return figures


def _read_rows(what: str, figures: dict[str, list[float]], bare_per_second: float, bare_p99_ms: float,
               processes: int) -> list[dict]:
    errors = int(figures["errors"][0])
    rate_held = statistics.median(figures["rate"]) >= 0.95 * RATE_PER_SECOND
    return [
        measurement(f"api: {what} max req/s, {processes} API processes (ceiling: its SQL, {processes} processes,"
                    f" no HTTP)", "req/s", figures["max"], bare_per_second, at_least=TARGET_READS_PER_SECOND,
                    also_ok=errors == 0, also=f"no errors ({errors} errors)"),
        measurement(f"api: {what} p99 at {RATE_PER_SECOND:,} req/s offered (ceiling: its SQL's p99)", "ms",
                    figures["p99"], bare_p99_ms, below=TARGET_P99_MS, lower_is_better=True,
                    also_ok=rate_held and errors == 0,
                    also=f"rate held (median {statistics.median(figures['rate']):,.0f} req/s), no errors"),
    ]


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
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True,
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

    database = f"bench_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    run_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-api",
                                               "database_url": with_database(settings.effective_database_url, database),
                                               "api_port": _free_port()})
    database_url = run_settings.effective_database_url
    processes = settings.api_processes
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
                       DRAWDOWN_API_HOST="127.0.0.1", DRAWDOWN_STATE_DIR=state_dir,
                       DRAWDOWN_API_PROCESSES=str(processes),
                       DRAWDOWN_RATE_LIMIT_PER_SECOND=str(BENCH_RATE_LIMIT_PER_SECOND),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
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
            rounds = QUICK_ROUNDS if quick() else RATE_ROUNDS
            seconds = QUICK_SECONDS if quick() else RATE_SECONDS
            reads = {}
            for what, path, statement in (
                    ("balance summary", f"/v1/billing/credit_balance_summary?customer={customer_id}", SUMMARY_QUERY),
                    ("live balance", f"/v1/billing/live_balance?customer={customer_id}", LIVE_BALANCE_QUERY)):
                figures = _reads(run_settings.api_port, key, path, rounds, seconds)
                bare_per_second = _bare_statements_per_second(database_url, statement, customer_id, processes,
                                                              QUICK_SECONDS if quick() else MAX_SECONDS)
                bare_p99_ms = _bare_p99_ms(database_url, statement, customer_id, QUICK_SECONDS)
                reads[what] = (figures, bare_per_second, bare_p99_ms)
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
    read_rows = [row for what, (figures, bare_per_second, bare_p99_ms) in reads.items()
                 for row in _read_rows(what, figures, bare_per_second, bare_p99_ms, processes)]
    return [
        *read_rows,
        measurement("api: batch ingest, 100 events/request, acked by Kafka (ceiling: bare producer)", "events/s",
                    events_per_second, bare_events_per_second, at_least=TARGET_EVENTS_PER_SECOND,
                    also_ok=ingest_errors == 0, also=f"no errors ({ingest_errors} errors)"),
    ]

"""Webhooks: the dispatcher's deliveries per second against a local receiver, with its ceiling; and
how long a fact takes to reach a receiver as a webhook while the worker takes live traffic.

Measured: events already in PostgreSQL (what the projector writes), one enabled endpoint whose
cursor sits just before them, and projections.webhooks.Dispatcher scheduling, claiming, POSTing
(signed) and recording every one of them, until all are delivered.

Ceiling, same run, same data, one process too: the same signed POSTs of the same event bodies to
the same receiver, through the same thread pool width (settings.webhook_concurrency), with none of
the bookkeeping that makes delivery at-least-once (delivery rows, leases, attempts). The receiver
runs in a process of its own on both sides, so it takes no CPU from the process timed; setup
(events inserted, connections opened, pools started) is outside the clock on both sides.

Latency (no ceiling: a time from one fact to its delivery): the whole path runs as `make up` runs
it, each its own process: a worker taking meter events at LATENCY_RATE (benchmarks/live_bench.py's
paced producer, 5,000 customers), the projector deriving events from every fact of the topics, the
dispatcher, and the receiver. Every PROBE_INTERVAL_S a CustomerCreated fact is produced; its
`customer.created` webhook's arrival at the receiver ends its clock. A probe not delivered counts
as infinitely late.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.harness import measurement, quick
from drawdown.settings import PROJECT_ROOT, Settings, with_database

EVENTS = 4_000
QUICK_EVENTS = 400
ROUNDS = 3
QUICK_ROUNDS = 1
# The dispatcher must keep up with the events a busy installation derives (a few per invoice, grant
# and alert, far below this), and lose at most 40% of the bare POST rate to its bookkeeping.
TARGET_DELIVERIES_PER_SECOND = 1_000
TARGET_RATIO = 0.6
SECRET = "whsec_bench"
LATENCY_RATE = 5_000  # meter events/s the worker takes meanwhile (issue 15's figure)
LATENCY_CUSTOMERS = 5_000
LATENCY_SECONDS = 20.0
QUICK_LATENCY_SECONDS = 5.0
PROBE_INTERVAL_S = 0.1
PROBE_GRACE_S = 5.0
TARGET_LATENCY_P99_S = 2.0


def _serve(port_queue: Any, arrivals: Any) -> None:
    """The receiver process: answer every POST 200 (after reading it), as a receiver that dedupes by
    id would; with `arrivals`, put (data.object.id, time.monotonic()) of each on it (Linux's monotonic
    clock is one for every process, so the sender's and the receiver's times compare)."""
    import json

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if arrivals is not None:
                arrivals.put((json.loads(body)["data"]["object"]["id"], time.monotonic()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


class Receiver:
    def __init__(self, record_arrivals: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        self.arrivals = context.Queue() if record_arrivals else None
        self.process = context.Process(target=_serve, args=(ports, self.arrivals), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=30)}/hook"

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


def _event(index: int, round_tag: str) -> dict[str, Any]:
    """An event as the projector writes one (a credit balance transaction's, about its real size)."""
    from projections.events import event_id, event_object

    transaction = {"id": f"cbtxn_{round_tag}_{index}", "object": "billing.credit_balance_transaction",
                   "created": 1_767_225_600 + index, "credit": None, "customer": f"cus_{index % 500}",
                   "debit": {"amount": {"monetary": {"currency": "usd", "value": 125}, "type": "monetary"},
                             "credits_applied": {"invoice": f"in_{index}", "invoice_line_item": f"il_{index}"},
                             "type": "credits_applied"},
                   "effective_at": 1_767_225_600 + index, "credit_grant": f"credgr_{index % 50}",
                   "livemode": False, "test_clock": None, "type": "debit"}
    identifier = event_id("billing.credit_balance_transaction.created", round_tag, index)
    return event_object(identifier, "billing.credit_balance_transaction.created", 1_767_225_600_000 + index,
                        transaction)


def _prepare_round(conn: psycopg.Connection, url: str, count: int) -> tuple[str, list[bytes]]:
    """Insert `count` new events and an endpoint whose cursor is just before them; their bodies as served."""
    from projections.events import insert_event, lock_event_order

    round_tag = uuid.uuid4().hex[:8]
    endpoint_id = f"we_bench_{round_tag}"
    with conn.transaction():
        lock_event_order(conn)
        conn.execute("insert into webhook_endpoints (id, url, enabled_events, metadata, status, secret, created_ms,"
                     " cursor_seq) values (%s, %s, %s, '{}', 'enabled', %s, %s,"
                     " (select coalesce(max(seq), 0) from events))",
                     (endpoint_id, url, ["*"], SECRET, int(time.time() * 1000)))
        for index in range(count):
            event = _event(index, round_tag)
            insert_event(conn, event, event["created"] * 1000)
    bodies = [row[0].encode() for row in conn.execute(
        "select body::text from events order by seq desc limit %s", (count,))]
    with conn.transaction():  # only this round's endpoint takes deliveries
        conn.execute("update webhook_endpoints set status = 'disabled' where id <> %s", (endpoint_id,))
    return endpoint_id, bodies


def _dispatcher_rate(settings: Settings, schema: str, conn: psycopg.Connection, endpoint_id: str, count: int) -> float:
    from projections.webhooks import Dispatcher

    dispatcher = Dispatcher(settings, schema)
    try:
        dispatcher._connection()  # migrations checked and connection opened before the clock starts
        started = time.perf_counter()
        while dispatcher.delivered < count:
            if not (dispatcher.schedule() + dispatcher.deliver_due()):
                time.sleep(0.001)
        elapsed = time.perf_counter() - started
    finally:
        dispatcher._pool.shutdown(wait=True)
        if dispatcher._conn is not None:
            dispatcher._conn.close()
    delivered = conn.execute("select count(*) from webhook_deliveries where status = 'succeeded'"
                             " and endpoint_id = %s", (endpoint_id,)).fetchone()[0]
    if delivered != count:
        raise AssertionError(f"{delivered} deliveries succeeded, expected {count}")
    return count / elapsed


def _bare_rate(settings: Settings, url: str, bodies: list[bytes]) -> float:
    from projections.webhooks import post, sign

    with ThreadPoolExecutor(max_workers=settings.webhook_concurrency) as pool:
        list(pool.map(lambda _: None, range(settings.webhook_concurrency)))  # threads started before the clock
        started = time.perf_counter()
        answers = list(pool.map(lambda body: post(url, body, sign(body, SECRET, int(time.time())),
                                                  settings.webhook_timeout_seconds), bodies))
        elapsed = time.perf_counter() - started
    failed = [answer for answer in answers if answer[0] != 200]
    if failed:
        raise AssertionError(f"{len(failed)} bare POSTs failed, e.g. {failed[0]}")
    return len(bodies) / elapsed


def run(settings: Settings) -> list[dict]:
    return [_deliveries_row(settings), *_latency_rows(settings)]


def _deliveries_row(settings: Settings) -> dict:
    from projections.migrate import migrate

    count = QUICK_EVENTS if quick() else EVENTS
    rounds = QUICK_ROUNDS if quick() else ROUNDS
    schema = f"bench_webhooks_{uuid.uuid4().hex[:8]}"
    migrate(settings.effective_database_url, schema)
    receiver = Receiver()
    measured: list[float] = []
    ceiling: list[float] = []
    try:
        with psycopg.connect(settings.effective_database_url, autocommit=True,
                             options=f"-c search_path={schema}") as conn:
            for _ in range(rounds):
                endpoint_id, bodies = _prepare_round(conn, receiver.url, count)
                measured.append(_dispatcher_rate(settings, schema, conn, endpoint_id, count))
                ceiling.append(_bare_rate(settings, receiver.url, bodies))
    finally:
        receiver.close()
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    return measurement(f"webhooks: dispatcher deliveries to a local receiver, {count:,} events (ceiling: the same "
                       f"signed POSTs, same pool, no delivery bookkeeping)", "deliveries/s", measured, ceiling,
                       at_least=TARGET_DELIVERIES_PER_SECOND, min_ratio=TARGET_RATIO)


class _EngineProcess:
    """`drawdown projector` or `drawdown webhooks` for the latency run, logging to a file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Any) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "drawdown", command], cwd=PROJECT_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args[-1]} exited ({self.process.returncode}); see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _latency_rows(settings: Settings) -> list[dict]:
    from pathlib import Path

    from benchmarks.live_bench import LiveRig, percentile
    from billing.facts import CustomerCreated
    from projections.migrate import migrate

    seconds = QUICK_LATENCY_SECONDS if quick() else LATENCY_SECONDS
    database = f"bench_hooks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    database_url = with_database(settings.effective_database_url, database)
    run_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-hooks",
                                               "database_url": database_url})
    work_dir = Path(tempfile.mkdtemp(prefix="drawdown-bench-hooks-"))
    rig = LiveRig(run_settings, LATENCY_CUSTOMERS, work_dir)
    receiver = Receiver(record_arrivals=True)
    engine: list[_EngineProcess] = []
    try:
        rig.setup()  # topics, customers, the worker ready and durable
        migrate(database_url)
        env = dict(os.environ, DATABASE_URL=database_url,
                   KAFKA_BOOTSTRAP_SERVERS=run_settings.effective_kafka_bootstrap_servers,
                   DRAWDOWN_TOPIC_PREFIX=run_settings.topic_prefix, DRAWDOWN_PARTITIONS=str(run_settings.partitions),
                   DRAWDOWN_STATE_DIR=str(work_dir), PYTHONPATH=str(PROJECT_ROOT))
        engine = [_EngineProcess(command, env, work_dir / f"{command}.log") for command in ("projector", "webhooks")]
        sent: dict[str, float] = {}

        def probe(customer_id: str) -> None:
            rig.probe_producer.send_all([CustomerCreated(customer_id=customer_id, name="Probe",
                                                         created_at_ms=time.time_ns() // 1_000_000)])
            rig.probe_producer.poll(0)
            sent[customer_id] = time.monotonic()

        arrived: dict[str, float] = {}

        def collect(until: float) -> None:
            while time.monotonic() < until:
                try:
                    customer_id, at = receiver.arrivals.get(timeout=max(0.0, min(0.05, until - time.monotonic())))
                except Exception:  # noqa: BLE001 - queue.Empty: nothing arrived yet
                    continue
                arrived.setdefault(customer_id, at)

        # outside the clock: the projector has caught up with the setup (every customer's event is
        # there), an endpoint starts after those events, and a warm-up webhook went all the way through
        from projections.webhooks import CURSOR_AT_HEAD

        customers = LATENCY_CUSTOMERS + len(rig.probes)
        deadline = time.monotonic() + 600
        with psycopg.connect(database_url, autocommit=True) as conn:
            while conn.execute("select count(*) from events where type = 'customer.created'").fetchone()[0] < customers:
                for each in engine:
                    each.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the projector did not catch up with the setup in 600 s; see {work_dir}")
                time.sleep(0.5)
            conn.execute("insert into webhook_endpoints (id, url, enabled_events, metadata, status, secret, created_ms,"
                         f" cursor_seq) values ('we_bench_latency', %s, %s, '{{}}', 'enabled', %s, %s, {CURSOR_AT_HEAD})",
                         (receiver.url, ["customer.created"], SECRET, int(time.time() * 1000)))
        probe("cus_hook_warmup")
        deadline = time.monotonic() + 300
        while "cus_hook_warmup" not in arrived:
            for each in engine:
                each.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no webhook for the warm-up customer in 300 s; see {work_dir}")
            collect(time.monotonic() + 0.5)
        sent.clear()
        rig.producer.start(LATENCY_RATE, seconds)
        started = time.monotonic()
        index = 0
        while time.monotonic() - started < seconds:
            probe(f"cus_hook_{index}")
            index += 1
            collect(started + index * PROBE_INTERVAL_S)
        rig.probe_producer.flush()
        events, producing_started, producing_ended = rig.producer.result()
        durable_at = rig.wait_durable(timeout_s=300)
        collect(time.monotonic() + PROBE_GRACE_S)
        for each in engine:
            each.check()
        with psycopg.connect(database_url, autocommit=True) as conn:  # where the time went, for the note
            stages = conn.execute(
                "select percentile_disc(0.5) within group (order by d.created_ms - e.created_ms),"
                " percentile_disc(0.99) within group (order by d.created_ms - e.created_ms),"
                " percentile_disc(0.5) within group (order by a.attempted_ms - d.created_ms),"
                " percentile_disc(0.99) within group (order by a.attempted_ms - d.created_ms)"
                " from events e join webhook_deliveries d on d.event_id = e.id"
                " join webhook_attempts a on a.delivery_id = d.id where e.type = 'customer.created'"
                " and e.body -> 'data' -> 'object' ->> 'id' like 'cus_hook_%%'").fetchone()
        print(f"  webhook stages: fact -> delivery scheduled p50/p99 {stages[0]}/{stages[1]} ms,"
              f" scheduled -> POSTed {stages[2]}/{stages[3]} ms", file=sys.stderr)
    finally:
        for each in engine:
            each.stop()
        rig.close()
        receiver.close()
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    latencies = [arrived[c] - at if c in arrived else math.inf for c, at in sent.items()]
    lost = sum(1 for latency in latencies if latency == math.inf)
    offered = events / max(producing_ended - producing_started, 1e-9)
    rate_held = offered >= 0.97 * LATENCY_RATE and durable_at - producing_ended <= 2.0
    p99_ms = percentile(latencies, 0.99) * 1000
    print(f"  webhook latency: {len(latencies)} probes, {lost} lost, p50 {percentile(latencies, 0.5) * 1000:.0f} ms,"
          f" p99 {p99_ms:.0f} ms; {offered:,.0f} meter events/s offered, worker durable "
          f"{durable_at - producing_ended:.1f} s after the last", file=sys.stderr)
    return [measurement(f"webhooks: fact -> webhook delivered p99, worker taking {LATENCY_RATE:,} meter events/s "
                        f"({len(latencies)} probes)", "ms", p99_ms, below=TARGET_LATENCY_P99_S * 1000,
                        also_ok=lost == 0 and rate_held,
                        also=f"none lost ({lost}) and the rate held ({offered:,.0f}/s, durable within 2 s)")]

"""The dashboard's customer page: p95 load time with 100 credit grants and 24 invoices (issue 17).

Setup (outside every clock): topics and a database of the run's own, the real stream worker (a
process) and the projector (a thread), the API served by uvicorn on a socket; through the API a
customer with a metered subscription, 100 credit grants and 24 one-off invoices finalized by the
worker; a dashboard login.

Measured: GET /dashboard/customers/{id} over HTTP, one after another, the whole page read
(PAGE_LOADS per round); the p95 of each round, rounds summarised by their median.
Ceiling, same run, same process: the page's reads without HTTP or rendering (dashboard.pages
.customer_view: the same SQL and the same API objects), timed the same way, each read right after
a page load (interleaved), with the projector stopped for both. The ratio says what
share of a page load is its reads.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.harness import measurement, quick
from drawdown.settings import Settings, with_database

GRANTS = 100
INVOICES = 24
PAGE_LOADS = 60
QUICK_PAGE_LOADS = 15
ROUNDS = 3
QUICK_ROUNDS = 1
TARGET_P95_MS = 300.0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def _customer_with_history(api: Any) -> str:
    """A customer with a metered subscription, GRANTS grants and INVOICES finalized one-off invoices."""
    tag = uuid.uuid4().hex[:8]
    meter = _ok(api.post("/v1/billing/meters", data={
        "display_name": "Tokens", "event_name": f"bench_tokens_{tag}", "default_aggregation[formula]": "sum",
        "customer_mapping[event_payload_key]": "stripe_customer_id", "customer_mapping[type]": "by_id",
        "value_settings[event_payload_key]": "value"}))
    product = _ok(api.post("/v1/products", data={"name": "Tokens"}))
    price = _ok(api.post("/v1/prices", data={
        "product": product["id"], "currency": "usd", "unit_amount_decimal": "3", "recurring[interval]": "month",
        "recurring[usage_type]": "metered", "recurring[meter]": meter["id"]}))
    customer = _ok(api.post("/v1/customers", data={"name": "Many grants", "email": f"{tag}@example.com"}))["id"]
    _ok(api.post("/v1/subscriptions", data={"customer": customer, "items[0][price]": price["id"]}))
    for index in range(GRANTS):
        _ok(api.post("/v1/billing/credit_grants", data={
            "customer": customer, "category": "paid", "name": f"Grant {index}", "amount[type]": "monetary",
            "amount[monetary][value]": str(100 + index), "amount[monetary][currency]": "usd",
            "applicability_config[scope][price_type]": "metered", "priority": str(index % 100)}))
    for index in range(INVOICES):
        _ok(api.post("/v1/invoiceitems", data={"customer": customer, "amount": str(1000 + index), "currency": "usd",
                                               "description": f"Seats, month {index + 1}"}))
        draft = _ok(api.post("/v1/invoices", data={"customer": customer, "pending_invoice_items_behavior": "include"}))
        _ok(api.post(f"/v1/invoices/{draft['id']}/finalize"))
    return customer


def _login(base_url: str, key: str) -> Any:
    import httpx

    browser = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    browser.get("/dashboard/login")
    token = browser.cookies.get("drawdown_login_csrf")
    answer = browser.post("/dashboard/login", data={"api_key": key, "csrf_token": token, "next": "/dashboard"})
    if answer.status_code != 303 and answer.status_code != 302:
        raise RuntimeError(f"dashboard login failed: {answer.status_code} {answer.text[:200]}")
    return browser


def _serve(app: Any) -> tuple[Any, threading.Thread, str]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start in 30 s")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def run(settings: Settings) -> list[dict]:
    import tempfile
    from pathlib import Path

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import create_key
    from benchmarks.streams_bench import _free_port, _Worker
    from dashboard.pages import customer_view
    from projections.migrate import migrate
    from projections.projector import Projector
    from streams.topics import ensure_topics

    loads = QUICK_PAGE_LOADS if quick() else PAGE_LOADS
    rounds = QUICK_ROUNDS if quick() else ROUNDS
    database = f"bench_dashboard_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    work_dir = Path(tempfile.mkdtemp(prefix="drawdown-bench-dashboard-"))
    run_settings = settings.model_copy(update={
        "topic_prefix": f"{settings.topic_prefix}-dashboard", "database_url": with_database(settings.effective_database_url, database),
        "worker_data_dir": work_dir / "worker", "worker_web_port": _free_port(),
        "read_your_writes_timeout_ms": 30_000, "rate_limit_per_second": 0})
    ensure_topics(run_settings)
    migrate(run_settings.effective_database_url)
    worker = _Worker(run_settings, work_dir / "worker.log")
    projector = Projector(run_settings)
    stop = threading.Event()
    projecting = threading.Thread(target=projector.run, args=(stop,), daemon=True)
    server = None
    measured: list[float] = []
    ceiling: list[float] = []
    try:
        worker.start()
        projecting.start()
        worker.wait(lambda status: status.get("ready"), timeout_s=300)
        app = create_app(run_settings)
        with TestClient(app):  # the lifespan: pool, publisher, key cache
            key = create_key(run_settings.effective_database_url)
            with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as api:
                customer_id = _customer_with_history(api)
            server, _, base_url = _serve(app)
            browser = _login(base_url, key)
            page = f"/dashboard/customers/{customer_id}"
            first = browser.get(page)
            if first.status_code != 200 or len(re.findall(r"Seats, month|in_\w+", first.text)) < INVOICES:
                raise RuntimeError(f"the customer page does not show its {INVOICES} invoices: {first.status_code}")
            ctx = app.state.ctx
            view = customer_view(ctx, customer_id)
            if (len(view["grants"]), len(view["invoices"])) != (GRANTS, INVOICES):
                raise RuntimeError(f"{len(view['grants'])} grants and {len(view['invoices'])} invoices, expected "
                                   f"{GRANTS} and {INVOICES}")
            stop.set()  # setup is done: nothing else runs in this process while the clock does
            projecting.join(30)
            for _ in range(rounds):
                page_ms, reads_ms = [], []
                for _ in range(loads):  # interleaved, so that a noisy moment of the machine hits both sides
                    started = time.perf_counter()
                    answer = browser.get(page)
                    answer.read()
                    page_ms.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"GET {page}: {answer.status_code}")
                    started = time.perf_counter()
                    customer_view(ctx, customer_id)
                    reads_ms.append((time.perf_counter() - started) * 1000)
                measured.append(p95(page_ms))
                ceiling.append(p95(reads_ms))
            browser.close()
    finally:
        if server is not None:
            server.should_exit = True
        stop.set()
        projecting.join(30)
        worker.stop()
        with psycopg.connect(settings.effective_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database)))
    return [measurement(f"dashboard: customer page p95, {GRANTS} grants and {INVOICES} invoices, over HTTP "
                        f"(ceiling: its reads alone, no HTTP, no rendering)", "ms", measured, ceiling,
                        below=TARGET_P95_MS, lower_is_better=True)]


"""Fault: the API process is killed with SIGKILL between publishing a command's fact and answering.

A real `python -m drawdown api` process; the projection is stalled so that every command waits
for it after its fact is in Kafka, and the kill lands exactly there. A new API process then gets
the same request (same Idempotency-Key) until it answers: each key must end as exactly one grant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drawdown.settings import PROJECT_ROOT, Settings, database_name, with_database
from tests.e2e.conftest import free_port
from tests.e2e.test_idempotent_retries import facts_on
from tests.processes import wait_until_serving

KILLS = 5
LEASE_MS = 2000


@pytest.fixture()
def own_settings(settings: Settings, database_url: str) -> Iterator[Settings]:
    import psycopg
    from psycopg import sql

    from projections.migrate import migrate
    from streams.topics import ensure_topics

    own_database = f"{database_name(database_url)}_kill"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(own_database)))
    own = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "-kill",
                                      "database_url": with_database(database_url, own_database)})
    ensure_topics(own)
    migrate(own.effective_database_url)
    yield own
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(own_database)))


class ApiProcess:
    """`python -m drawdown api` on its own port, started and SIGKILLed at will."""

    def __init__(self, settings: Settings, state_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir / "api.log"
        self.env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=settings.effective_kafka_bootstrap_servers,
                        DATABASE_URL=settings.effective_database_url, DRAWDOWN_TOPIC_PREFIX=settings.topic_prefix,
                        DRAWDOWN_PARTITIONS=str(settings.partitions), DRAWDOWN_STATE_DIR=str(state_dir),
                        DRAWDOWN_API_PORT=str(self.port), DRAWDOWN_READ_YOUR_WRITES_TIMEOUT_MS="10000",
                        DRAWDOWN_IDEMPOTENCY_LEASE_MS=str(LEASE_MS), PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(PROJECT_ROOT))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "drawdown", "api"], cwd=PROJECT_ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_until_serving(self.process, f"{self.base}/healthz", self.log_path, 60, "api")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def test_each_command_killed_between_publish_and_answer_ends_as_exactly_one_grant(own_settings, tmp_path):
    from api.auth import create_key
    from billing.facts import CreditGrantCreated
    from projections.projector import Projector

    api = ApiProcess(own_settings, tmp_path)
    api.start()
    key = create_key(own_settings.effective_database_url)
    headers = {"Authorization": f"Bearer {key}"}
    project = lambda: Projector(own_settings).catch_up(60)  # noqa: E731 - the stalled projection, run on demand

    def until_answered(path: str, form: dict[str, str], idempotency_key: str) -> dict[str, Any]:
        """Retry as a client would (same key) until a 2xx; 409 = the dead attempt's lease still runs."""
        deadline = time.monotonic() + 60
        while True:
            answer = httpx.post(api.base + path, data=form, headers={**headers, "Idempotency-Key": idempotency_key},
                                timeout=30)
            if answer.status_code < 300:
                return answer.json()
            assert answer.status_code in (409, 503), answer.text
            assert time.monotonic() < deadline, answer.text
            if answer.status_code == 503:
                project()
            time.sleep(0.2)

    customer = until_answered("/v1/customers", {"name": "Killed Mid Command"}, "kill-customer")
    granted: dict[str, str] = {}
    for kill in range(KILLS):
        form = {"customer": customer["id"], "name": f"kill {kill}", "amount[type]": "monetary",
                "amount[monetary][value]": str(100 + kill), "amount[monetary][currency]": "usd",
                "applicability_config[scope][price_type]": "metered"}
        outcome: list[Any] = []

        def send() -> None:
            try:
                outcome.append(httpx.post(api.base + "/v1/billing/credit_grants", data=form, timeout=30,
                                          headers={**headers, "Idempotency-Key": f"kill-{kill}"}))
            except httpx.HTTPError as error:
                outcome.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 30
        while not any(isinstance(f, CreditGrantCreated) and f.name == f"kill {kill}"
                      for f in facts_on(own_settings, "customer-facts")):
            assert time.monotonic() < deadline, "the grant's fact never reached Kafka"
            time.sleep(0.1)
        api.kill()  # the fact is in Kafka; the request waits for the stalled projection: no answer yet
        sender.join(30)
        assert outcome and isinstance(outcome[0], httpx.HTTPError), "the killed request was answered"
        api.start()
        if kill % 2:  # the killed attempt's fact projected: the retry answers it and publishes nothing
            project()
        granted[f"kill {kill}"] = until_answered("/v1/billing/credit_grants", form, f"kill-{kill}")["id"]

    created = [f for f in facts_on(own_settings, "customer-facts")
               if isinstance(f, CreditGrantCreated) and f.customer_id == customer["id"]]
    assert {f.name: {g.grant_id for g in created if g.name == f.name} for f in created} == \
        {name: {grant_id} for name, grant_id in granted.items()}
    project()
    listed = httpx.get(api.base + "/v1/billing/credit_grants", params={"customer": customer["id"], "limit": 100},
                       headers=headers).json()["data"]
    assert sorted(g["id"] for g in listed) == sorted(granted.values())
    api.kill()


CHAOS_CREATES = 100


def test_sdk_creates_while_the_api_is_sigkilled_again_and_again_each_make_exactly_one_grant(own_settings, tmp_path):
    """100 credit grants through the official SDK (its own retries on, each create with its
    Idempotency-Key) while another thread SIGKILLs the API at random moments and starts it again:
    every key ends as exactly one grant, and no grant exists without its key's answer."""
    import random

    import stripe

    from api.auth import create_key
    from billing.facts import CreditGrantCreated
    from projections.projector import Projector

    api = ApiProcess(own_settings, tmp_path)
    api.start()
    key = create_key(own_settings.effective_database_url)
    stop = threading.Event()
    projector = threading.Thread(target=Projector(own_settings).run, args=(stop,), daemon=True)
    projector.start()
    client = stripe.StripeClient(key, base_addresses={"api": api.base}, max_network_retries=5)
    rng = random.Random(20261203)
    kills: list[float] = []

    def chaos() -> None:
        while not stop.wait(rng.uniform(0.3, 1.5)):
            api.kill()
            kills.append(time.monotonic())
            api.start()

    def until_answered(create: Any, idempotency_key: str) -> Any:
        deadline = time.monotonic() + 120
        while True:  # beyond the SDK's own retries: the API may be down for a while
            try:
                return create(idempotency_key)
            except (stripe.APIConnectionError, stripe.APIError) as error:  # 5xx, 409 lease, no connection
                assert time.monotonic() < deadline, f"{idempotency_key}: {error}"
                time.sleep(0.2)
            except stripe.StripeError as error:
                if getattr(error, "http_status", None) in (409, 429, 503):
                    assert time.monotonic() < deadline, f"{idempotency_key}: {error}"
                    time.sleep(0.2)
                    continue
                raise

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    try:
        customer = until_answered(lambda k: client.v1.customers.create(params={"name": "Chaos"},
                                                                    options={"idempotency_key": k}), "chaos-customer")
        chaos_thread.start()
        granted: dict[str, str] = {}
        for n in range(CHAOS_CREATES):
            params = {"customer": customer.id, "name": f"chaos {n}", "category": "paid",
                      "amount": {"type": "monetary", "monetary": {"value": 100 + n, "currency": "usd"}},
                      "applicability_config": {"scope": {"price_type": "metered"}}}
            grant = until_answered(lambda k: client.v1.billing.credit_grants.create(params=params,
                                                                                 options={"idempotency_key": k}),
                                   f"chaos-{n}")
            granted[f"chaos {n}"] = grant.id
    finally:
        stop.set()
        if chaos_thread.is_alive():
            chaos_thread.join(30)
        projector.join(30)
        if api.process is not None and api.process.poll() is None:
            api.kill()

    assert len(kills) >= 10, f"only {len(kills)} kills: the run tested little"
    created = [f for f in facts_on(own_settings, "customer-facts")
               if isinstance(f, CreditGrantCreated) and f.customer_id == customer.id]
    by_name: dict[str, set[str]] = {}
    for fact in created:
        by_name.setdefault(fact.name, set()).add(fact.grant_id)
    assert by_name == {name: {grant_id} for name, grant_id in granted.items()}
    print(f"\n{CHAOS_CREATES} SDK creates, {len(kills)} API kills, {len(created)} grant facts "
          f"({len(created) - len(granted)} re-published copies of the same fact)")

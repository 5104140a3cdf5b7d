"""Every command takes effect exactly once, whatever the client retries (issue: retries create money).

The official Stripe SDK (automatic Idempotency-Key, max_network_retries=2) against an API whose
projection is stalled, whose Kafka ack is lost, or with two creates racing for one event name.
Expected values are Stripe's documented behaviour: one object per Idempotency-Key, the stored answer
replayed, uniqueness decided once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from drawdown.settings import Settings, database_name, with_database

RETRIES_TRIED = 100  # SDK calls with a stalled projection, each retried by the SDK itself


def facts_on(settings: Settings, topic_name: str) -> list[Any]:
    """Every fact on one of the settings' topics, decoded (read from the start to the end)."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.codec import FactCodec

    codec = FactCodec(None)
    topic = settings.topic(topic_name)
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": "unused", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        facts = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            read = 0
            while read < high - low:
                for message in consumer.consume(500, timeout=5):
                    assert message.error() is None, message.error()
                    facts.append(codec.decode(message.value()))
                    read += 1
        return facts
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def stalled(settings: Settings, database_url: str) -> Iterator[dict[str, Any]]:
    """An API of its own (topics and database) whose projector runs only when the test says so."""
    import psycopg
    from psycopg import sql

    from api.app import create_app
    from api.auth import create_key
    from projections.migrate import migrate
    from projections.projector import Projector
    from streams.topics import ensure_topics

    own_database = f"{database_name(database_url)}_stall"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(own_database)))
    own = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "-stall",
                                      "database_url": with_database(database_url, own_database),
                                      "read_your_writes_timeout_ms": 100})
    ensure_topics(own)
    migrate(own.effective_database_url)
    application = create_app(own)
    key = create_key(own.effective_database_url)
    with TestClient(application, headers={"Authorization": f"Bearer {key}"}) as client:
        yield {"settings": own, "app": application, "client": client, "key": key,
               "project": lambda: Projector(own).catch_up(60)}
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(own_database)))


@pytest.fixture()
def stalled_sdk(stalled: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Stripe SDK over real HTTP against the stalled API, retrying twice without its backoff sleeps."""
    import stripe
    import uvicorn
    from stripe._http_client import HTTPClient

    from api import walkthrough
    from tests.e2e.conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stalled["app"], host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    walkthrough.configure(stripe, f"http://127.0.0.1:{port}", stalled["key"])
    monkeypatch.setattr(stripe, "max_network_retries", 2)
    monkeypatch.setattr(HTTPClient, "_sleep_time_seconds", lambda self, num_retries, response=None: 0.01)
    yield stripe
    server.should_exit = True
    thread.join(10)


def test_a_credit_grant_retried_by_the_sdk_while_the_projection_lags_exists_once(stalled, stalled_sdk):
    """Finding 1: three tries of one grant used to make three $5 grants. Now every try publishes the
    same fact (same id), the answer after the projection catches up is that grant, and only one exists."""
    from billing.facts import CreditGrantCreated, CustomerCreated

    stripe = stalled_sdk
    with pytest.raises(stripe.APIError) as lagging:
        stripe.Customer.create(name="Retry Rosen", idempotency_key="customer-once")
    assert lagging.value.http_status == 503
    stalled["project"]()
    customer = stripe.Customer.create(name="Retry Rosen", idempotency_key="customer-once")
    arguments = dict(customer=customer.id, name="five dollars", category="paid",
                     amount={"type": "monetary", "monetary": {"value": 500, "currency": "usd"}},
                     applicability_config={"scope": {"price_type": "metered"}}, idempotency_key="grant-once")
    with pytest.raises(stripe.APIError):
        stripe.billing.CreditGrant.create(**arguments)  # three tries, each 503 projection_lagging
    stalled["project"]()
    grant = stripe.billing.CreditGrant.create(**arguments)  # the same key: the one grant
    assert grant.amount.monetary.value == 500 and grant.customer == customer.id

    grants = [g.id for g in stripe.billing.CreditGrant.list(customer=customer.id).auto_paging_iter()]
    assert grants == [grant.id]
    facts = facts_on(stalled["settings"], "customer-facts")
    created = [f for f in facts if isinstance(f, CreditGrantCreated) and f.customer_id == customer.id]
    assert len(created) == 3  # each SDK try published the same grant; the later call only read it
    assert {f.grant_id for f in created} == {grant.id}
    assert {f.customer_id for f in facts if isinstance(f, CustomerCreated) and f.name == "Retry Rosen"} == {customer.id}


def test_a_stored_answer_replays_and_a_retry_after_the_effect_answers_the_object(stalled, stalled_sdk):
    """A void retried after its first try took effect (but answered 503) answers the voided grant,
    not "already voided"; the stored answer then replays with Idempotent-Replayed."""
    stripe = stalled_sdk
    client = stalled["client"]
    customer = client.post("/v1/customers", data={"name": "Void Once"}, headers={"Idempotency-Key": "c-void"})
    if customer.status_code == 503:
        stalled["project"]()
        customer = client.post("/v1/customers", data={"name": "Void Once"}, headers={"Idempotency-Key": "c-void"})
    customer_id = customer.json()["id"]
    form = {"customer": customer_id, "amount[type]": "monetary", "amount[monetary][value]": "300",
            "amount[monetary][currency]": "usd", "applicability_config[scope][price_type]": "metered"}
    first = client.post("/v1/billing/credit_grants", data=form, headers={"Idempotency-Key": "g-void"})
    assert first.status_code == 503
    stalled["project"]()
    grant_id = client.post("/v1/billing/credit_grants", data=form, headers={"Idempotency-Key": "g-void"}).json()["id"]
    void = client.post(f"/v1/billing/credit_grants/{grant_id}/void", headers={"Idempotency-Key": "v-1"})
    assert void.status_code == 503 and void.headers["stripe-should-retry"] == "true"
    stalled["project"]()  # the void is now visible: the handler alone would say "already voided"
    retried = client.post(f"/v1/billing/credit_grants/{grant_id}/void", headers={"Idempotency-Key": "v-1"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["voided_at"] is not None
    again = client.post(f"/v1/billing/credit_grants/{grant_id}/void", headers={"Idempotency-Key": "v-1"})
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == retried.json()
    other = client.post(f"/v1/billing/credit_grants/{grant_id}/void", headers={"Idempotency-Key": "v-2"})
    assert other.status_code == 400 and other.json()["error"]["code"] == "credit_grant_already_voided"


def test_a_request_that_failed_validation_is_not_stored(client):
    """Stripe: results are saved only once the endpoint started executing; a fixed request may reuse the key."""
    bad = client.post("/v1/customers", data={"name": "x" * 300}, headers={"Idempotency-Key": "fix-me"})
    assert bad.status_code == 400
    fixed = client.post("/v1/customers", data={"name": "x" * 300}, headers={"Idempotency-Key": "fix-me"})
    assert fixed.status_code == 400 and fixed.headers.get("idempotent-replayed") is None


def test_sdk_retries_against_a_stalled_projection_make_exactly_one_object_every_time(stalled, stalled_sdk):
    """RETRIES_TRIED creates, each retried twice by the SDK while the projection is stalled: each key
    yields exactly one grant, and the answer after the projection catches up is that grant."""
    from billing.facts import CreditGrantCreated

    stripe = stalled_sdk
    stalled["project"]()
    customers = []
    for index in range(2):
        try:
            stripe.Customer.create(name=f"Many {index}", idempotency_key=f"many-customer-{index}")
        except stripe.APIError:
            pass
        stalled["project"]()
        customers.append(stripe.Customer.create(name=f"Many {index}", idempotency_key=f"many-customer-{index}").id)
    answered = {}
    for attempt in range(RETRIES_TRIED):
        arguments = dict(customer=customers[attempt % 2], name=f"try {attempt}",
                         amount={"type": "monetary", "monetary": {"value": 100 + attempt, "currency": "usd"}},
                         applicability_config={"scope": {"price_type": "metered"}}, idempotency_key=f"many-{attempt}")
        with pytest.raises(stripe.APIError):
            stripe.billing.CreditGrant.create(**arguments)
        if attempt % 10 == 9:
            stalled["project"]()
            for earlier in range(attempt - 9, attempt + 1):
                again = dict(arguments, name=f"try {earlier}", customer=customers[earlier % 2],
                             amount={"type": "monetary", "monetary": {"value": 100 + earlier, "currency": "usd"}},
                             idempotency_key=f"many-{earlier}")
                answered[earlier] = stripe.billing.CreditGrant.create(**again).id
    created = [f for f in facts_on(stalled["settings"], "customer-facts")
               if isinstance(f, CreditGrantCreated) and f.customer_id in customers]
    by_name: dict[str, set[str]] = {}
    for fact in created:
        by_name.setdefault(fact.name, set()).add(fact.grant_id)
    assert len(by_name) == RETRIES_TRIED
    assert all(ids == {answered[int(name.split()[1])]} for name, ids in by_name.items())
    listed = {g.id for customer in customers for g in stripe.billing.CreditGrant.list(customer=customer, limit=100)
              .auto_paging_iter()}
    assert listed == set(answered.values()) and len(listed) == RETRIES_TRIED


def test_a_meter_event_without_identifier_retried_after_a_lost_ack_is_one_event(app, client, api_base, secret_key,
                                                                                 engine_settings, monkeypatch):
    """A publish whose ack is lost (the record is in Kafka, the API answers 503) and the SDK's retry,
    RETRIES_TRIED times: each event's identifier comes from the Idempotency-Key, so both copies are
    one event and the worker's dedupe counts it once."""
    import stripe
    from stripe._http_client import HTTPClient

    from api import walkthrough
    from api.publisher import PublishFailed, Publisher
    from billing.facts import MeterEventRecorded

    meter = client.post("/v1/billing/meters", data={"display_name": "Lost", "event_name": f"lost_ack_{time.time_ns()}",
                                                     "default_aggregation[formula]": "sum"}).json()
    customer = client.post("/v1/customers", data={"name": "Lost Ack"}).json()
    real = Publisher.publish_many
    publishes: list = []

    def publish_and_lose_every_first_ack(self, topic_name, records, encoded=None):  # type: ignore[no-untyped-def]
        positions = real(self, topic_name, records, encoded)
        publishes.append(positions)
        if len(publishes) % 2:  # each create's first try: in Kafka, but the API never hears so
            raise PublishFailed("Kafka did not acknowledge the request in time; retry with the same Idempotency-Key")
        return positions

    monkeypatch.setattr(Publisher, "publish_many", publish_and_lose_every_first_ack)
    walkthrough.configure(stripe, api_base, secret_key)
    monkeypatch.setattr(stripe, "max_network_retries", 2)
    monkeypatch.setattr(HTTPClient, "_sleep_time_seconds", lambda self, num_retries, response=None: 0.01)
    answered = [stripe.billing.MeterEvent.create(event_name=meter["event_name"],
                                                 payload={"stripe_customer_id": customer["id"], "value": "7"}).identifier
                for _ in range(RETRIES_TRIED)]
    assert len(publishes) == 2 * RETRIES_TRIED, "not every first ack was lost: the test tested less than it says"
    recorded = [f for f in facts_on(engine_settings, "customer-facts")
                if isinstance(f, MeterEventRecorded) and f.customer_id == customer["id"]]
    assert len(recorded) == 2 * RETRIES_TRIED  # every lost try and its retry reached Kafka ...
    copies = Counter(f.identifier for f in recorded)
    assert set(copies) == set(answered) and set(copies.values()) == {2}  # ... each pair as one event


def test_concurrent_creates_of_one_event_name_make_one_meter_and_the_loser_gets_a_400(app, client, engine_settings,
                                                                                       monkeypatch):
    """Finding 3: both creates passed the check-then-publish; the projection kept the first meter and the
    workers' catalog the last. Now the first in the catalog log wins everywhere; the other answers 400."""
    from api.routes import meters as meter_routes
    from billing.catalog import Catalog, evolve_catalog
    from billing.facts import MeterDefined

    event_name = f"raced_{time.time_ns()}"
    both_checked = threading.Barrier(2, timeout=20)
    real_fetch_one = meter_routes.fetch_one

    def checked_together(pool, statement, *arguments):  # type: ignore[no-untyped-def]
        row = real_fetch_one(pool, statement, *arguments)
        if "event_name = %s" in statement and arguments[0] == event_name:
            both_checked.wait()  # neither publishes before both have checked: the race, every time
        return row

    monkeypatch.setattr(meter_routes, "fetch_one", checked_together)
    answers: list[Any] = []

    def create() -> None:
        answers.append(client.post("/v1/billing/meters", data={"display_name": "Race", "event_name": event_name,
                                                               "default_aggregation[formula]": "sum"}))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 400], [answer.text for answer in answers]
    loser = next(answer for answer in answers if answer.status_code == 400).json()["error"]
    assert loser["code"] == "resource_already_exists" and loser["param"] == "event_name"
    winner = next(answer for answer in answers if answer.status_code == 200).json()["id"]
    catalog = Catalog()
    for fact in facts_on(engine_settings, "catalog"):
        if isinstance(fact, MeterDefined):
            catalog = evolve_catalog(catalog, fact)
    assert catalog.meters_by_event_name[event_name].meter_id == winner  # the workers bill the projected meter
    listed = [m["id"] for m in client.get("/v1/billing/meters", params={"limit": 100}).json()["data"]
              if m["event_name"] == event_name]
    assert listed == [winner]

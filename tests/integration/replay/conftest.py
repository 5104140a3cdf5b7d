"""A produced meter-event history with duplicates, cancellations, late events and rejects, and a
brute-force fold of it that shares no code with the engine or the replay."""

from __future__ import annotations

from collections.abc import Iterator
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from billing.facts import CustomerCreated, MeterAggregation, MeterDefined, MeterEventCanceled, MeterEventRecorded
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from producers.producer import FactProducer
from tests.integration.producers.kafka_reading import own_topics

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

TOKENS = MeterDefined(meter_id="mtr_tokens", display_name="Tokens", event_name="llm_tokens",
                      aggregation=MeterAggregation.SUM, created_at_ms=0)
REQUESTS = MeterDefined(meter_id="mtr_requests", display_name="Requests", event_name="api_requests",
                        aggregation=MeterAggregation.COUNT, created_at_ms=0)
METERS = {meter.event_name: meter for meter in (TOKENS, REQUESTS)}


@dataclass
class History:
    """What was produced, in arrival order, and the time span it covers."""

    settings: Settings
    facts: list = field(default_factory=list)
    customers: set[str] = field(default_factory=set)
    first_arrival_ms: int = 0
    last_arrival_ms: int = 0


def brute_force_usage(history: History, start_ms: int, end_ms: int, group_ms: int,
                      customer_ids: set[str] | None = None) -> dict[tuple[str, str, int], tuple[Decimal, int]]:
    """(customer, meter, group start) -> (value, counted events), straight from the rules' text:
    known customer and meter, first identifier per (customer, event name) wins, a cancellation
    within 24 h of the event's arrival removes it, bucketed by event-time minute."""
    first_seen: dict[tuple[str, str, str], dict] = {}
    for fact in history.facts:
        if isinstance(fact, MeterEventRecorded):
            meter = METERS.get(fact.event_name)
            customer = fact.payload.get("stripe_customer_id", "")
            if meter is None or customer not in history.customers:
                continue
            key = (customer, fact.event_name, fact.identifier)
            if key not in first_seen:
                first_seen[key] = {"event": fact, "meter": meter, "canceled": False}
        elif isinstance(fact, MeterEventCanceled):
            for (customer, event_name, identifier), seen in first_seen.items():
                if (event_name, identifier) != (fact.event_name, fact.identifier) or seen["canceled"]:
                    continue
                if fact.customer_id is not None and fact.customer_id != customer:
                    continue
                if fact.received_at_ms - seen["event"].received_at_ms <= DAY_MS:
                    seen["canceled"] = True
    usage: dict[tuple[str, str, int], list] = defaultdict(lambda: [Decimal(0), 0])
    for (customer, _, _), seen in first_seen.items():
        event, meter = seen["event"], seen["meter"]
        minute_ms = event.event_time_ms - event.event_time_ms % MINUTE_MS
        if not start_ms <= minute_ms < end_ms or (customer_ids and customer not in customer_ids):
            continue
        totals = usage[(customer, meter.meter_id, minute_ms - minute_ms % group_ms)]
        if not seen["canceled"]:
            totals[0] += Decimal(event.payload["value"]) if meter.aggregation == MeterAggregation.SUM else 1
            totals[1] += 1
    return {key: (value, count) for key, (value, count) in usage.items()}


def produce_history(settings: Settings, seed: int, events: int = 2500) -> History:
    """Customers, then meter events over ~6 hours of (simulated) arrival time five days ago: late
    events (up to a day), events up to 4 minutes ahead, duplicates (some with another value),
    cancellations with and without customer (some past 24 h), and events of an unknown customer."""
    rng = random.Random(seed)
    clock_ms = int(time.time() * 1000) - 5 * DAY_MS
    clock_ms -= clock_ms % MINUTE_MS
    history = History(settings=settings, first_arrival_ms=clock_ms)
    customers = [f"cus_{uuid.uuid4().hex[:10]}" for _ in range(6)]
    history.customers = set(customers)
    catalog = fold_catalog(METERS.values())

    def arrival_ms() -> int:
        return clock_ms

    sent: list[MeterEventRecorded] = []
    with FactProducer(settings, catalog=catalog, now_ms=arrival_ms) as producer, \
            FactProducer(settings, validate=False, now_ms=arrival_ms) as raw:
        for meter in METERS.values():
            producer.send(meter)
        for customer_id in customers:
            fact = CustomerCreated(customer_id=customer_id, created_at_ms=clock_ms)
            producer.send(fact)
            history.facts.append(fact)
        for index in range(events):
            clock_ms += rng.randint(0, 17_000)
            roll = rng.random()
            if roll < 0.08 and sent:  # a duplicate, sometimes with another value (the first wins)
                original = rng.choice(sent)
                payload = dict(original.payload)
                if rng.random() < 0.5 and "value" in payload:
                    payload["value"] = str(rng.randint(1, 999))
                event = producer.send_meter_event(original.event_name, payload, identifier=original.identifier,
                                                  event_time_ms=min(original.event_time_ms, clock_ms))
            elif roll < 0.13 and sent:  # a cancellation, with or without the customer
                target = rng.choice(sent)
                customer = target.customer_id if rng.random() < 0.5 else None
                event = producer.cancel_meter_event(target.event_name, target.identifier, customer_id=customer)
            elif roll < 0.15:  # an unknown customer: the engine dead-letters it
                event = raw.send_meter_event("llm_tokens", {"stripe_customer_id": "cus_nobody", "value": "5"},
                                             event_time_ms=clock_ms)
            else:
                meter = rng.choice(list(METERS.values()))
                lateness_ms = rng.choice([0, rng.randint(0, 10 * MINUTE_MS), rng.randint(0, 3 * HOUR_MS),
                                          rng.randint(0, DAY_MS), -rng.randint(0, 4 * MINUTE_MS)])
                payload = {"stripe_customer_id": rng.choice(customers), "value": str(Decimal(rng.randint(1, 5000)) / 4)}
                event = producer.send_meter_event(meter.event_name, payload, event_time_ms=clock_ms - lateness_ms,
                                                  identifier=f"ev_{seed}_{index}")
                sent.append(event)
            history.facts.append(event)
            if index in (events // 3, 2 * events // 3):  # later cancellations come after more than a day
                clock_ms += DAY_MS + HOUR_MS
    history.last_arrival_ms = clock_ms
    return history


@pytest.fixture(scope="module")
def replay_settings(settings: Settings) -> Iterator[Settings]:
    """This module's own topics (3 partitions), deleted afterwards."""
    yield from own_topics(settings, "r")


@pytest.fixture(scope="module")
def history(replay_settings: Settings) -> History:
    return produce_history(replay_settings, seed=20261123)

"""An oracle for usage and live balances worked out from the raw input log alone, sharing no code
with the engine's fold (no billing/, no streams/): the rules are Stripe's, stated here plainly.

- A meter event counts once per (customer, event name, identifier): the first in log order wins,
  later ones with the same identifier are retries (STRIPE.md, "identifier").
- Usage is bucketed by the minute of its event time; a sum meter adds the values.
- A wall-clock customer in its first period, with one metered grant of G cents and no invoice yet,
  has accrued usage = sum over meters of (units x whole-cent unit price), available credits = G,
  live balance = G - accrued (billing/balances.py's definition, restated).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from confluent_kafka import Consumer, TopicPartition

from drawdown.settings import Settings

MINUTE_MS = 60_000


def raw_facts(settings: Settings, short_name: str) -> list:
    """Every fact on a topic, decoded, partition by partition in offset order."""
    from schemas.codec import FactCodec

    codec = FactCodec(None)
    topic = settings.topic(short_name)
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": "unused-oracle", "enable.auto.commit": False})
    facts: list = []
    try:
        for partition in sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                for message in consumer.consume(10_000, timeout=1.0):
                    if not message.error():
                        facts.append(codec.decode(message.value()))
                        offset = message.offset() + 1
    finally:
        consumer.close()
    return facts


def counted_events(settings: Settings) -> list:
    """The meter events that count: the first of each (customer, event name, identifier)."""
    seen: set[tuple[str, str, str]] = set()
    counted = []
    for fact in raw_facts(settings, "customer-facts"):
        if type(fact).__name__ != "MeterEventRecorded":
            continue
        identity = (fact.customer_id, fact.event_name, fact.identifier)
        if identity not in seen:
            seen.add(identity)
            counted.append(fact)
    return counted


def minute_usage(events: list, meter_ids: dict[str, str]) -> dict[tuple[str, str, int], Decimal]:
    """(customer, meter id, minute start) -> summed value."""
    usage: dict[tuple[str, str, int], Decimal] = defaultdict(Decimal)
    for event in events:
        minute_ms = event.event_time_ms - event.event_time_ms % MINUTE_MS
        usage[(event.customer_id, meter_ids[event.event_name], minute_ms)] += Decimal(event.payload["value"])
    return dict(usage)


def first_period_live_balances(events: list, grants_minor: dict[str, int],
                               cents_per_unit: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """customer -> (available, accrued, live) for wall-clock customers still in their first period."""
    units: dict[tuple[str, str], int] = defaultdict(int)
    for event in events:
        units[(event.customer_id, event.event_name)] += int(event.payload["value"])
    balances = {}
    for customer_id, grant_minor in grants_minor.items():
        accrued = sum(units[(customer_id, name)] * cents for name, cents in cents_per_unit.items())
        balances[customer_id] = (grant_minor, accrued, grant_minor - accrued)
    return balances

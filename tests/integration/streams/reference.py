"""The brute-force reference: the same pure fold over the log read back from Kafka in offset order,
with plain dicts for state and no Faust: what every engine total must equal exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from billing.catalog import Catalog, evolve_catalog
from billing.customer import CustomerState, live_balance_facts
from billing.usage import UsageLedger, bucket_value
from drawdown.settings import Settings
from schemas.codec import FactCodec
from streams.processor import PartitionProcessor, PartitionState
from streams.worker import fold_config


def read_topic(settings: Settings, short_name: str, partitions: int) -> dict[int, list]:
    """Every record of a topic: partition -> [(offset, key, value)] in offset order."""
    consumer = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                         "group.id": "unused-reference", "enable.auto.commit": False})
    topic = settings.topic(short_name)
    records: dict[int, list] = {}
    try:
        for partition in range(partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            rows: list = []
            while not rows or rows[-1][0] < high - 1:
                if high == 0:
                    break
                for message in consumer.consume(10000, timeout=0.1):
                    if not message.error():
                        rows.append((message.offset(), message.key(), message.value()))
            records[partition] = rows
    finally:
        consumer.close()
    return records


@dataclass
class Reference:
    catalog: Catalog
    customers: dict[str, CustomerState] = field(default_factory=dict)
    buckets: dict = field(default_factory=dict)  # (customer, meter, bucket_start) -> (value, count)
    outputs: list = field(default_factory=list)


def fold_log(settings: Settings) -> Reference:
    codec = FactCodec(settings.schema_registry_url or None)
    catalog = Catalog()
    for _, _, value in read_topic(settings, "catalog", 1)[0]:
        catalog = evolve_catalog(catalog, codec.decode(value))
    reference = Reference(catalog=catalog)
    config = fold_config(settings)
    for partition, rows in read_topic(settings, "customer-facts", settings.partitions).items():
        customers: dict[str, CustomerState] = {}
        ledger = UsageLedger(dedupe_window_ms=settings.dedupe_window_seconds * 1000)
        processor = PartitionProcessor(topic=settings.topic("customer-facts"), partition=partition,
                                       customers=customers, ledger=ledger, partition_state=PartitionState(),
                                       catalog=catalog, config=config)
        for offset, key, value in rows:
            try:
                fact, error = codec.decode(value), None
            except Exception as exc:  # noqa: BLE001 - dead-lettered like the worker does
                fact, error = None, exc
            reference.outputs.extend(processor.process(offset, fact, value, key.decode() if key else None, error))
        reference.outputs.extend(processor.finish_batch())
        for (customer_id, meter_id, start_ms), bucket in ledger.buckets.items():
            reference.buckets[(customer_id, meter_id, start_ms)] = bucket_value(catalog.aggregator(meter_id), bucket)
        reference.customers.update(customers)
    return reference


def final_live_balances(reference: Reference, settings: Settings, now_ms: int) -> dict:
    """customer -> (available, accrued, live) in usd, as of `now_ms` (the customers' clock)."""
    config = fold_config(settings)
    balances = {}
    for customer_id, state in reference.customers.items():
        state.live_pending = True
        for fact in live_balance_facts(state, reference.catalog, now_ms, config, arrival_ms=0, force=True):
            if type(fact).__name__ == "LiveBalanceChanged":
                balances[customer_id] = (fact.available_credits_minor, fact.accrued_usage_minor,
                                         fact.live_balance_minor)
    return balances

"""drawdown's topics: names, partitioning, creation. See schemas/FACTS.md for what each carries.

Every customer-keyed topic has the same partition count (settings.partitions), and every
producer partitions by the customer id with the same hash, so one worker owns all of a
customer's facts: co-partitioning. Faust (aiokafka) and Java use murmur2; librdkafka's default
is crc32, so every confluent-kafka producer must be configured with PRODUCER_PARTITIONER.
"""

from __future__ import annotations

from dataclasses import dataclass

from drawdown.settings import Settings

# librdkafka's name for the Java/aiokafka-compatible partitioner (murmur2 of the key bytes).
PRODUCER_PARTITIONER = "murmur2_random"

# Record headers of a fact an API request published (api/publisher.py): its Request-Id and
# Idempotency-Key, which the events derived from it show as event.request (projections/events.py).
REQUEST_ID_HEADER = "drawdown-request-id"
IDEMPOTENCY_KEY_HEADER = "drawdown-idempotency-key"

# Facts are the source of truth and projections are rebuilt from them: keep them forever.
KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}

# customer-facts' record timestamps: the broker's append time while the receipt rule is on
# (billing.meter_events.is_received_within_bound judges each received_at by it), the producer's
# own when it is off (loading history that carries its own times: its append times would be new).
TIMESTAMP_TYPE = "message.timestamp.type"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without the prefix
    customer_keyed: bool
    purpose: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("catalog", False, "meters, products, prices: small, global, one partition for one order"),
    TopicSpec("customer-facts", True, "every input fact about a customer, one ordered log per customer; "
                                      "time facts go to every partition"),
    TopicSpec("invoices", True, "InvoiceFinalized, InvoiceVoided"),
    TopicSpec("credit-balance-transactions", True, "CreditBalanceTransaction"),
    TopicSpec("usage-buckets", True, "UsageBucketUpdated (with its periods' usage), PeriodUsageUpdated"),
    TopicSpec("live-balances", True, "LiveBalanceChanged, LowBalanceAlert"),
    TopicSpec("dead-letters", True, "DeadLetter: the original bytes and a reason code"),
)


class TopicLayoutError(RuntimeError):
    """An existing topic does not have the partition count co-partitioning needs."""


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    return settings.partitions if spec.customer_keyed else 1


def topic_names(settings: Settings) -> dict[str, str]:
    """Short name -> full topic name, e.g. 'invoices' -> 'drawdown.invoices'."""
    return {spec.name: settings.topic(spec.name) for spec in TOPICS}


def customer_facts_timestamp_type(settings: Settings) -> str:
    return "LogAppendTime" if settings.receipt_bound_seconds > 0 else "CreateTime"


def topic_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    config = dict(KEEP_FOREVER)
    if spec.name == "customer-facts":
        config[TIMESTAMP_TYPE] = customer_facts_timestamp_type(settings)
    return config


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the missing topics; check the partition counts of the existing ones."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.effective_kafka_bootstrap_servers})
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = []
    for spec in TOPICS:
        name, wanted = settings.topic(spec.name), partitions_of(spec, settings)
        if name in existing:
            actual = len(existing[name].partitions)
            if actual != wanted:
                raise TopicLayoutError(
                    f"topic {name} has {actual} partitions but DRAWDOWN_PARTITIONS needs {wanted}; "
                    "customer topics must be co-partitioned (recreate them, or set DRAWDOWN_PARTITIONS to match)")
            if spec.name == "customer-facts":  # an upgraded installation, or the bound turned on or off
                set_timestamp_type(admin, name, customer_facts_timestamp_type(settings), timeout_s)
            continue
        missing.append(NewTopic(name, num_partitions=wanted, replication_factor=settings.replication_factor,
                                config=topic_config(spec, settings)))
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # a concurrent creator is fine; anything else is not
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    wait_for_leaders(admin, [topic.topic for topic in missing], timeout_s)


def set_timestamp_type(admin, name: str, timestamp_type: str, timeout_s: float) -> None:
    """Give topic `name` this message.timestamp.type, unless it has it (read first: a process
    that may describe but not alter configs starts as before once the topic is right). It applies
    to records appended from then on."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)],
                                          request_timeout=timeout_s).values()
    entry = described.result(timeout=timeout_s).get(TIMESTAMP_TYPE)
    if entry is not None and entry.value == timestamp_type:
        return
    change = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry(TIMESTAMP_TYPE, timestamp_type, incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([change], request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)


def delete_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Delete every topic of settings.topic_prefix, and of prefixes derived from it
    ("<prefix>-<suffix>."): test sessions and benchmarks clean up their throwaway topics, or the
    broker's data folder grows by thousands of partitions and its restart slows to minutes."""
    import logging

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.effective_kafka_bootstrap_servers})
    mine = [name for name in admin.list_topics(timeout=timeout_s).topics
            if name.startswith((f"{settings.topic_prefix}.", f"{settings.topic_prefix}-"))]
    for future in admin.delete_topics(mine, operation_timeout=timeout_s).values() if mine else ():
        try:
            future.result(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - cleanup is best effort; say so and go on
            logging.getLogger("drawdown.topics").warning("could not delete a topic: %s", error)


def wait_for_leaders(admin, names: list[str], timeout_s: float) -> None:
    """Return once every partition of `names` has a leader: a topic that was just created answers
    NOT_LEADER_FOR_PARTITION to reads and writes until the controller has elected them."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        pending = [name for name in names
                   if name not in topics or topics[name].error is not None or not topics[name].partitions
                   or any(p.leader < 0 or p.error is not None for p in topics[name].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicLayoutError(f"topics without a partition leader after {timeout_s:.0f} s: {pending}; "
                                   "check the broker's log (.state/logs/kafka.log)")
        time.sleep(0.1)

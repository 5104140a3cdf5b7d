"""drawdown's topics: names, partitioning, creation. See schemas/FACTS.md for what each carries.

Every customer-keyed topic has the same partition count (settings.partitions), and every
producer partitions by the customer id with the same hash, so one worker owns all of a
customer's facts: co-partitioning. Faust (aiokafka) and Java use murmur2; librdkafka's default
is crc32, so every confluent-kafka producer must be configured with PRODUCER_PARTITIONER.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


class KafkaAccessError(RuntimeError):
    """The brokers did not answer this client, or refused its credentials; the message says what to check."""


def connect_admin(settings: Settings, timeout_s: float = 30.0) -> tuple[Any, dict[str, Any]]:
    """An AdminClient that has reached the brokers, and their topics. Every engine process starts
    here (ensure_topics), so a wrong password, certificate or security protocol stops it with an
    error that names the settings, instead of librdkafka retrying forever with only log lines to show."""
    import time

    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    admin = AdminClient({**settings.kafka_client_config(), "error_cb": errors.append})
    where = f"the Kafka brokers at {settings.effective_kafka_bootstrap_servers}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:  # short tries: a refusal is known after one, a slow broker gets the rest
            return admin, admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic()))).topics
        except KafkaException as exc:
            admin.poll(0.1)  # serves error_cb: librdkafka reports the broker's refusal there
            reasons = [f"{where} {refusal}. librdkafka said: {error.str()}"
                       for error in reversed(errors) if (refusal := _refusal(error, settings))]
            if reasons:
                del admin  # not kept retrying by the traceback's reference to this frame
                raise KafkaAccessError(reasons[0]) from exc
            if time.monotonic() >= deadline:
                raise KafkaAccessError(
                    f"{where} did not answer in {timeout_s:.0f} s ({exc.args[0].str()}); check that they run, "
                    "KAFKA_BOOTSTRAP_SERVERS, and DRAWDOWN_KAFKA_SECURITY_PROTOCOL (currently "
                    f"{settings.kafka_security_protocol}): a broker that closes the connection at once often "
                    "wants SASL or TLS") from exc


def _refusal(error: Any, settings: Settings) -> str | None:
    """What a client error means the operator must fix, if it is a refusal that retrying cannot cure."""
    from confluent_kafka import KafkaError

    if error.code() == KafkaError._AUTHENTICATION:
        return (f"refused this client's credentials ({settings.kafka_security_protocol} "
                f"{settings.kafka_sasl_mechanism}, user '{settings.kafka_sasl_username}'): check "
                "DRAWDOWN_KAFKA_SASL_USERNAME, DRAWDOWN_KAFKA_SASL_PASSWORD and DRAWDOWN_KAFKA_SASL_MECHANISM")
    if error.code() == KafkaError._SSL:
        return ("could not be verified over TLS (or the handshake failed): check DRAWDOWN_KAFKA_SSL_CA_FILE "
                "(the CA that signed the brokers' certificates) and the brokers' host names")
    # A broker that wants a client certificate and gets none, or one it does not trust, answers with
    # a TLS alert, which librdkafka reports only as a transport error naming it.
    if error.code() == KafkaError._TRANSPORT and any(alert in error.str() for alert in (
            "alert bad certificate", "alert certificate unknown", "alert certificate required",
            "alert unknown ca", "alert certificate expired", "alert certificate revoked")):
        return ("refused this client's TLS certificate: check DRAWDOWN_KAFKA_SSL_CERT_FILE and "
                "DRAWDOWN_KAFKA_SSL_KEY_FILE (a certificate the brokers' CA signed)")
    return None


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
    from confluent_kafka.admin import NewTopic

    admin, existing = connect_admin(settings, timeout_s)
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

    admin, topics = connect_admin(settings, timeout_s)
    mine = [name for name in topics
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

"""A worker with an empty data dir restores its tables from the changelogs alone (as a worker on a
new machine does) and goes on exactly: every event seen before is still a duplicate, usage, credits
and time (a grant taking effect, one expiring) carry on, for test-clock and wall-clock customers.
Everything it emitted is compared with the independent oracle (tests/oracle), and a few totals are
worked out by hand. The seen events travel in changelog packs (streams/records.py): this checks that
recovery unpacks them."""

from __future__ import annotations

from decimal import Decimal

from billing.facts import (
    CreditGrantCreated,
    CustomerCreated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    InvoiceFinalized,
    TimeTicked,
    UsageBucketUpdated,
)
from producers.producer import FactProducer
from streams import walkthrough as w
from streams.records import PACK_PREFIX
from streams.topics import ensure_topics
from tests.integration.oracle.compare import compare, oracle_results

from .conftest import OutputReader, WorkerProcess, wait_until_durable_to_the_end

GRACE_MS = 3600 * 1000
PERIOD_END_MS = w.first_period_end_ms()
CLOCK_ID = "clock_restore"
ON_CLOCK = "cus_restore_clock"
ON_WALL = ("cus_restore_wall_0", "cus_restore_wall_1")
GRANTS_ONLY = "cus_restore_grants"  # wall clock, no subscription: its grants take effect and expire with time
CLOCK_EVENTS = 300
WALL_EVENTS = 49
EVENT_MS = w.START_MS + w.HOUR_MS


def changelog_keys(settings, table: str) -> list[bytes]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = f"{settings.topic_prefix}.worker-{table}-changelog"
    consumer = Consumer({**settings.kafka_client_config(),
                         "group.id": "unused-test-changelog-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    keys = []
    try:
        while batch := consumer.consume(10_000, timeout=3):
            keys.extend(message.key() for message in batch if not message.error())
    finally:
        consumer.close()
    return keys


def _grant(grant_id: str, customer_id: str, amount_minor: int, *, priority: int = 50, price_ids: tuple = (),
           effective_ms: int = w.START_MS, expires_ms: int | None = None) -> CreditGrantCreated:
    scope = GrantScope(price_ids=price_ids) if price_ids else GrantScope(price_type=GrantPriceType.METERED)
    return CreditGrantCreated(grant_id=grant_id, customer_id=customer_id, amount_minor=amount_minor, currency="usd",
                              scope=scope, category=GrantCategory.PROMOTIONAL if price_ids else GrantCategory.PAID,
                              priority=priority, effective_at_ms=effective_ms, expires_at_ms=expires_ms,
                              created_at_ms=w.START_MS)


def _time(to_ms: int) -> list:
    return [w.clock_advanced(CLOCK_ID, to_ms), TimeTicked(now_ms=to_ms)]


def _setup() -> list:
    """Three customers with the walkthrough's 10 USD metered grant and subscription (one on a test
    clock), the wall-clock two also with a 2.50 USD promotional grant on output tokens that is
    applied first (priority 10); and one with grants only, taking effect on day 10 and expiring on
    day 20."""
    facts: list = [w.clock_created(CLOCK_ID), *_time(w.START_MS)]
    facts += w.customer_setup(ON_CLOCK, CLOCK_ID)
    for customer_id in ON_WALL:
        facts += [*w.customer_setup(customer_id, None),
                  _grant(f"credgr_promo_{customer_id}", customer_id, 250, priority=10, price_ids=("price_out",))]
    facts += [CustomerCreated(customer_id=GRANTS_ONLY, created_at_ms=w.START_MS),
              _grant("credgr_later", GRANTS_ONLY, 700, effective_ms=w.START_MS + 10 * 24 * w.HOUR_MS),
              _grant("credgr_expiring", GRANTS_ONLY, 300, expires_ms=w.START_MS + 20 * 24 * w.HOUR_MS)]
    return [*facts, *_time(w.START_MS + w.HOUR_MS)]


def _events(received_ms: int) -> list:
    """The first worker's usage: 300 input tokens of 1 on the test clock, 49 output tokens of 0.9
    on each wall-clock customer (the second worker gets all of them again, as retries)."""
    events = [w.meter_event(ON_CLOCK, "1", f"ev-{n}", EVENT_MS, received_at_ms=received_ms)
              for n in range(CLOCK_EVENTS)]
    for customer_id in ON_WALL:
        events += [w.meter_event(customer_id, "0.9", f"ev-{customer_id}-{n}", EVENT_MS, output=True,
                                 received_at_ms=received_ms) for n in range(WALL_EVENTS)]
    return events


def _new_events(received_ms: int) -> list:
    return [w.meter_event(ON_CLOCK, "1000", "new", EVENT_MS, received_at_ms=received_ms),
            *(w.meter_event(customer_id, "0.8", "new", EVENT_MS, output=True, received_at_ms=received_ms)
              for customer_id in ON_WALL)]


def test_a_worker_restored_from_the_changelogs_alone_goes_on_as_the_oracle_says(stream_settings, tmp_path):
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-restore",
                                                  "grace_period_seconds": GRACE_MS // 1000,
                                                  "live_balance_interval_ms": 0})
    ensure_topics(settings)
    first = WorkerProcess(settings, "first", tmp_path).start()
    second = None
    reader = OutputReader(settings)
    try:
        with FactProducer(settings, validate=False) as producer:
            producer.send_all(w.catalog_facts())
            producer.flush()
            producer.send_all([*_setup(), *_events(EVENT_MS)])
            producer.flush()
            first.wait_ready()
            wait_until_durable_to_the_end(settings, timeout_s=120)
            # A partition's record vouches for the batch before its own: one more batch on every
            # partition (time facts go to all), so that the second worker resumes after the events,
            # not at them (re-read, they would rebuild their dedupe records whatever the changelog held).
            producer.send_all(_time(w.START_MS + 2 * w.HOUR_MS))
            producer.flush()
            wait_until_durable_to_the_end(settings, timeout_s=120)
            first.stop()
            assert any(key.startswith(PACK_PREFIX) for key in changelog_keys(settings, "usage"))

            second = WorkerProcess(settings, "second", tmp_path).start().wait_ready()  # an empty data dir
            retried_ms = w.START_MS + 3 * w.HOUR_MS
            producer.send_all([*_time(retried_ms), *_events(retried_ms), *_new_events(retried_ms)])
            producer.send_all(_time(PERIOD_END_MS + GRACE_MS + 1000))
            producer.flush()
            wait_until_durable_to_the_end(settings, timeout_s=120)
        reader.settle(1.0)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        reader.close()

    found = compare(settings)
    assert not found, "\n".join(found)
    # By hand: 300 + 1000 input tokens on the clock; 49 x 0.9 + 0.8 = 44.9 output tokens on the wall
    # clock, 224.5 cents, rounded half up to 225, of which the promotional grant pays 225 of its 250.
    oracle = oracle_results(settings)
    assert len(oracle.invoices) == 3
    buckets = {(f.customer_id, f.meter_id): (Decimal(f.value), f.event_count) for f in reader.of(UsageBucketUpdated)}
    assert buckets[(ON_CLOCK, "mtr_in")] == (Decimal(CLOCK_EVENTS + 1000), CLOCK_EVENTS + 1)
    for customer_id in ON_WALL:
        assert buckets[(customer_id, "mtr_out")] == (Decimal("44.9"), WALL_EVENTS + 1)
        (invoice,) = reader.of(InvoiceFinalized, customer_id)
        (line,) = [line for line in invoice.lines if line.price_id == "price_out"]
        assert (line.amount_minor, invoice.amount_due_minor) == (225, 0)
        assert [(credit.grant_id, credit.amount_minor) for credit in line.credits] == [
            (f"credgr_promo_{customer_id}", 225)]
    assert oracle.live_balances[(GRANTS_ONLY, "usd")] == (700, 0, 700)

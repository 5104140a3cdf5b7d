"""The receipt bound (issue 16): customer-facts carries the broker's append time (LogAppendTime)
while the bound is on, and a meter event or cancel whose producer-stamped received_at lies more than
the bound from it is dead-lettered by the worker (received_at_out_of_bound) and skipped by the
replay alike; an upgraded installation's CreateTime topic is switched by ensure_topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from billing.facts import DeadLetter, MeterEventCanceled, UsageBucketUpdated
from drawdown.settings import Settings
from producers.producer import FactProducer
from replay.usage import replay_usage
from streams import walkthrough as w
from streams.topics import ensure_topics
from tests.integration.producers.kafka_reading import own_topics
from tests.integration.streams.conftest import OutputReader, WorkerProcess

BOUND_S = 60
MINUTE_MS, HOUR_MS = 60_000, 3_600_000


def timestamp_type(settings: Settings) -> str:
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": settings.effective_kafka_bootstrap_servers})
    (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, settings.topic("customer-facts"))]
                                          ).values()
    return described.result(timeout=30)["message.timestamp.type"].value


def eventual_timestamp_type(settings: Settings, expected: str, timeout_s: float = 15.0) -> str:
    """The topic's timestamp type once it is `expected`, or as it stands after `timeout_s`: the
    broker that answers may apply an altered config a moment after the change was acknowledged."""
    deadline = time.monotonic() + timeout_s
    while (found := timestamp_type(settings)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.fixture(scope="module")
def bound_settings(settings: Settings) -> Iterator[Settings]:
    """Topics of this module's own (3 partitions) with the receipt bound on."""
    yield from own_topics(settings.model_copy(update={"receipt_bound_seconds": BOUND_S,
                                                      "live_balance_interval_ms": 0}), "rb")


def test_customer_facts_is_created_with_the_brokers_append_time_when_the_bound_is_on(bound_settings):
    assert eventual_timestamp_type(bound_settings, "LogAppendTime") == "LogAppendTime"


def test_an_existing_create_time_topic_is_switched_to_append_time_and_back_when_the_bound_is_turned_off(settings):
    assert settings.receipt_bound_seconds == 0
    for unbound in own_topics(settings, "ru"):
        assert timestamp_type(unbound) == "CreateTime"
        bound = unbound.model_copy(update={"receipt_bound_seconds": BOUND_S})
        ensure_topics(bound)
        assert eventual_timestamp_type(bound, "LogAppendTime") == "LogAppendTime"
        ensure_topics(bound)  # idempotent
        assert timestamp_type(bound) == "LogAppendTime"
        ensure_topics(unbound)  # restoring old facts: their own times again
        assert eventual_timestamp_type(unbound, "CreateTime") == "CreateTime"


def test_the_worker_dead_letters_received_at_beyond_the_bound_and_the_replay_counts_the_same(
        bound_settings, tmp_path_factory):
    suffix = uuid.uuid4().hex[:8]
    customer = f"cus_rb_{suffix}"
    now_ms = int(time.time() * 1000)
    at_ms = now_ms - 2 * HOUR_MS  # every event's time: one minute bucket
    with FactProducer(bound_settings, validate=False) as producer:
        producer.send_all(w.catalog_facts(suffix))
        producer.flush()
        worker = WorkerProcess(bound_settings, "receipt-worker", tmp_path_factory.mktemp("receipt-worker")).start()
        outputs = OutputReader(bound_settings)
        try:
            worker.wait_ready()
            producer.send_all(w.customer_setup(customer, None, suffix=suffix, start_ms=now_ms - 3 * HOUR_MS))
            # stamped two hours ago, by a clock behind or a producer replaying old facts: refused
            producer.send(w.meter_event(customer, "7", "behind", at_ms, suffix=suffix, received_at_ms=at_ms))
            # stamped two hours ahead (a clock that runs fast): refused
            producer.send(w.meter_event(customer, "11", "ahead", at_ms, suffix=suffix,
                                        received_at_ms=now_ms + 2 * HOUR_MS))
            # stamped now, its time two hours back (late, within 35 days): counted
            producer.send(w.meter_event(customer, "5", "now", at_ms, suffix=suffix, received_at_ms=now_ms))
            # a cancel of it stamped two hours ago (which would be within 24 h of the event): refused
            producer.send(MeterEventCanceled(event_name=f"hypernian_input_tokens{suffix}", identifier="now",
                                             customer_id=customer, received_at_ms=at_ms))
            producer.flush()
            outputs.wait_for(lambda facts: len(outputs.of(DeadLetter, customer)) >= 3
                             and outputs.of(UsageBucketUpdated, customer), timeout_s=90)
            outputs.settle(2.0)
        finally:
            outputs.close()
            worker.stop()
    assert worker.process.returncode is not None
    dead = outputs.of(DeadLetter, customer)
    assert sorted(d.reason_code for d in dead) == ["received_at_out_of_bound"] * 3, dead
    assert all("DRAWDOWN_RECEIPT_BOUND_SECONDS" in d.message and d.original_bytes for d in dead)
    minute_ms = at_ms - at_ms % MINUTE_MS
    bucket = outputs.of(UsageBucketUpdated, customer)[-1]
    assert (bucket.meter_id, bucket.bucket_start_ms, bucket.value, bucket.event_count) == \
        (f"mtr_in{suffix}", minute_ms, Decimal(5), 1)

    replayed = replay_usage(bound_settings, minute_ms, minute_ms + MINUTE_MS, customer_ids=[customer], processes=1)
    assert [(r.meter_id, r.period_start_ms, r.value, r.event_count) for r in replayed.rows] == \
        [(f"mtr_in{suffix}", minute_ms, Decimal(5), 1)]
    assert replayed.rejected == {"received_at_out_of_bound": 2}  # the two meter events (a cancel is no event)

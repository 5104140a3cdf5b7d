"""A worker with an empty data dir restores its tables from the changelogs alone (as a worker on a
new machine does) and goes on exactly: every event seen before is still a duplicate, usage and
credits carry on. The seen events travel in changelog packs (streams/state.py): this checks that
recovery unpacks them."""

from __future__ import annotations

from decimal import Decimal

from producers.producer import FactProducer
from streams.state import PACK_PREFIX
from streams.topics import ensure_topics

from .conftest import OutputReader, WorkerProcess, wait_until_durable_to_the_end
from .test_usage_and_credits import GRACE_MS, PERIOD_END_MS, Run, input_line, invoice_of, w

EVENTS = 300


def changelog_keys(settings, table: str) -> list[bytes]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = f"{settings.topic_prefix}.worker-{table}-changelog"
    consumer = Consumer({"bootstrap.servers": settings.effective_kafka_bootstrap_servers,
                         "group.id": "unused-test-changelog-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    keys = []
    try:
        while batch := consumer.consume(10_000, timeout=3):
            keys.extend(message.key() for message in batch if not message.error())
    finally:
        consumer.close()
    return keys


def test_a_worker_restored_from_the_changelogs_alone_still_knows_every_event_it_saw(stream_settings, tmp_path):
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-restore"})
    ensure_topics(settings)
    first = WorkerProcess(settings, "first", tmp_path).start()
    reader = OutputReader(settings)
    second = None
    try:
        with FactProducer(settings, validate=False) as producer:
            run = Run(producer)
            first.wait_ready()
            for n in range(EVENTS):
                run.tokens("1", f"ev-{n}", w.START_MS + w.HOUR_MS)
            producer.flush()
            wait_until_durable_to_the_end(settings, timeout_s=120)
            # A partition's record vouches for the batch before its own: one more batch on the
            # customer's partition, so that the second worker resumes after the events, not at them
            # (re-read, they would rebuild their dedupe records whatever the changelog held).
            run.advance(w.START_MS + 2 * w.HOUR_MS)
            wait_until_durable_to_the_end(settings, timeout_s=120)
            first.stop()
            assert any(key.startswith(PACK_PREFIX) for key in changelog_keys(settings, "usage"))

            second = WorkerProcess(settings, "second", tmp_path).start().wait_ready()  # an empty data dir
            for n in range(EVENTS):  # every one a retry of an event the first worker counted
                run.tokens("1", f"ev-{n}", w.START_MS + w.HOUR_MS)
            run.tokens("1000", "new", w.START_MS + w.HOUR_MS)
            producer.flush()
            run.advance(PERIOD_END_MS + GRACE_MS)
            wait_until_durable_to_the_end(settings, timeout_s=120)
        invoice = invoice_of(reader, run)
        reader.settle(1.0)
        from billing.facts import UsageBucketUpdated

        bucket = reader.of(UsageBucketUpdated, run.customer_id)[-1]
        assert (bucket.value, bucket.event_count) == (Decimal(EVENTS + 1000), EVENTS + 1)
        assert input_line(invoice).quantity == Decimal(EVENTS + 1000)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        reader.close()

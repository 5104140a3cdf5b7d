"""Fault: one broker of a 3-node KRaft cluster (replication 3, min.insync.replicas 2) is SIGKILLed
while 200,000 meter events (5% of them retried duplicates, wall-clock customers: the worker's fast
path) are produced and folded. Nothing acknowledged may be lost, nothing counted twice.

Expected usage is worked out from the input log alone by usage_oracle.py (no engine code).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from .conftest import OutputReader, WorkerProcess, free_port, wait_until_durable_to_the_end
from .usage_oracle import counted_events, minute_usage

EVENTS = 200_000
KILL_AFTER_EVENTS = 60_000


@pytest.mark.slow
def test_a_broker_killed_during_a_200k_event_run_loses_and_doubles_nothing(settings, local_settings, tmp_path):
    from billing.facts import UsageBucketUpdated
    from deploy.kafka_cluster import cluster
    from producers.loadgen import LoadPlan, generate
    from streams.topics import ensure_topics

    kafka = cluster(local_settings, tmp_path / "cluster", [(free_port(), free_port()) for _ in range(3)])
    worker = None
    try:
        bootstrap = kafka.start()
        run = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap, "replication_factor": 3,
                                          "partitions": 3, "topic_prefix": settings.topic_prefix + "-brokers",
                                          "live_balance_interval_ms": 1000})
        ensure_topics(run)
        worker = WorkerProcess(run, "worker-brokers", tmp_path).start().wait_ready()
        plan = LoadPlan(customers=300, meters=2, count=EVENTS, rate_per_s=40_000, duplicate_share=0.05, seed=11)
        killed_at: list[int] = []

        def kill_one_broker(sent: int, seconds: float) -> None:
            if not killed_at and sent >= KILL_AFTER_EVENTS:
                kafka.kill_node(2)
                killed_at.append(sent)

        summary = generate(run, plan, kill_one_broker)
        assert killed_at, "the broker was never killed: the run tested nothing"
        assert summary.failures == 0 and summary.events == EVENTS
        wait_until_durable_to_the_end(run, timeout_s=300)
        assert worker.process.poll() is None, f"the worker died:\n{worker.log_tail()}"

        meter_ids = {meter.event_name: meter.meter_id for meter in plan.meter_definitions()}
        expected = minute_usage(counted_events(run), meter_ids)
        assert sum(expected.values()) > 0
        reader = OutputReader(run)
        try:
            reader.settle(3.0)
            final: dict[tuple[str, str, int], Decimal] = {}
            for bucket in reader.of(UsageBucketUpdated):  # in offset order per partition: the last is final
                final[(bucket.customer_id, bucket.meter_id, bucket.bucket_start_ms)] = Decimal(str(bucket.value))
        finally:
            reader.close()
        assert final == expected
    finally:
        if worker is not None:
            worker.stop()
        kafka.stop()

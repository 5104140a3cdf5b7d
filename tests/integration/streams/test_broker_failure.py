"""Broker faults. A single broker (the `make up` setup) SIGKILLed and started again while events flow;
and one broker of a 3-node KRaft cluster (replication 3, min.insync.replicas 2) is SIGKILLed
while 200,000 meter events (5% of them retried duplicates, wall-clock customers: the worker's fast
path) are produced and folded. Nothing acknowledged may be lost, nothing counted twice.

Expected usage is worked out from the input log alone by usage_oracle.py (no engine code).
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from .conftest import OutputReader, WorkerProcess, free_port, wait_until_durable_to_the_end
from .usage_oracle import counted_events, minute_usage

EVENTS = 200_000
KILL_AFTER_EVENTS = 60_000
RESTART_EVENTS = 60_000
BROKER_DOWN_S = 5


def final_buckets(settings) -> dict[tuple[str, str, int], Decimal]:
    """The engine's last word on each usage bucket (in offset order per partition: the last is final)."""
    from billing.facts import UsageBucketUpdated

    reader = OutputReader(settings)
    try:
        reader.settle(3.0)
        return {(bucket.customer_id, bucket.meter_id, bucket.bucket_start_ms): Decimal(str(bucket.value))
                for bucket in reader.of(UsageBucketUpdated)}
    finally:
        reader.close()


def assert_nothing_lost_or_doubled_through(kafka, settings_for, tmp_path, plan, fault_after: int, fault,
                                          timeout_s: float) -> None:
    """Start `kafka`, a worker on it, and produce `plan`; once `fault_after` events are sent, `fault()`
    runs (once). Then the producer lost nothing, the worker is alive and durable to the end, and
    every usage bucket equals the oracle's. Stops the worker and the cluster."""
    from producers.loadgen import generate
    from streams.topics import ensure_topics

    worker = None
    try:
        run = settings_for(kafka.start())
        ensure_topics(run)
        worker = WorkerProcess(run, "worker-" + run.topic_prefix.rsplit("-", 1)[-1], tmp_path).start().wait_ready()
        faulted_at: list[int] = []

        def fault_once(sent: int, seconds: float) -> None:
            if not faulted_at and sent >= fault_after:
                fault()
                faulted_at.append(sent)

        summary = generate(run, plan, fault_once)
        assert faulted_at, "the fault never happened: the run tested nothing"
        assert summary.failures == 0 and summary.events == plan.count
        wait_until_durable_to_the_end(run, timeout_s=timeout_s)
        assert worker.process.poll() is None, f"the worker died:\n{worker.log_tail()}"
        meter_ids = {meter.event_name: meter.meter_id for meter in plan.meter_definitions()}
        expected = minute_usage(counted_events(run), meter_ids)
        assert sum(expected.values()) > 0
        assert final_buckets(run) == expected
    finally:
        if worker is not None:
            worker.stop()
        kafka.stop()


@pytest.mark.slow
def test_the_only_broker_killed_and_restarted_mid_run_loses_and_doubles_nothing(settings, local_settings, tmp_path):
    from deploy.kafka_cluster import cluster
    from producers.loadgen import LoadPlan

    kafka = cluster(local_settings, tmp_path / "single", [(free_port(), free_port())], replicated=False)

    def restart_the_broker() -> None:
        kafka.kill_node(1)
        time.sleep(BROKER_DOWN_S)  # the producer and the worker see the broker gone
        kafka.start_node(1)

    assert_nothing_lost_or_doubled_through(
        kafka, lambda bootstrap: settings.model_copy(update={
            "kafka_bootstrap_servers": bootstrap, "partitions": 3, "topic_prefix": settings.topic_prefix + "-restart"}),
        tmp_path, LoadPlan(customers=100, meters=2, count=RESTART_EVENTS, rate_per_s=20_000, duplicate_share=0.05,
                           seed=12),
        fault_after=RESTART_EVENTS // 3, fault=restart_the_broker, timeout_s=240)


@pytest.mark.slow
def test_a_broker_killed_during_a_200k_event_run_loses_and_doubles_nothing(settings, local_settings, tmp_path):
    from deploy.kafka_cluster import cluster
    from producers.loadgen import LoadPlan

    kafka = cluster(local_settings, tmp_path / "cluster", [(free_port(), free_port()) for _ in range(3)])
    assert_nothing_lost_or_doubled_through(
        kafka, lambda bootstrap: settings.model_copy(update={
            "kafka_bootstrap_servers": bootstrap, "replication_factor": 3, "partitions": 3,
            "topic_prefix": settings.topic_prefix + "-brokers", "live_balance_interval_ms": 1000}),
        tmp_path, LoadPlan(customers=300, meters=2, count=EVENTS, rate_per_s=40_000, duplicate_share=0.05, seed=11),
        fault_after=KILL_AFTER_EVENTS, fault=lambda: kafka.kill_node(2), timeout_s=300)

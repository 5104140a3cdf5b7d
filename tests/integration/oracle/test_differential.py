"""Differential tests (issue 13, item 2): randomized logs through the real worker, every derived
fact compared with the independent oracle (tests/oracle), field by field."""

from __future__ import annotations

import time

import pytest

from streams.topics import ensure_topics
from tests.integration.streams.conftest import WorkerProcess, wait_until_durable_to_the_end

from .compare import compare
from .scenarios import GRACE_MS, catalog_facts, in_phases, scenario

CUSTOMERS = 24


def run_through_the_worker(settings, log: list, tmp_path, phases: list[list] = ()) -> None:
    """Produce the catalog and `log`, then run a worker until it is durable to the end. Each of
    `phases` is produced after the worker is durable to the end of what came before (so the
    worker's batches end where a phase ends)."""
    from producers.producer import FactProducer

    ensure_topics(settings)
    with FactProducer(settings, validate=False) as producer:
        producer.send_all(catalog_facts())
        producer.flush()
        producer.send_all(log)
    worker = WorkerProcess(settings, "worker-differential", tmp_path).start()
    try:
        wait_until_durable_to_the_end(settings, timeout_s=120)
        for phase in phases:
            with FactProducer(settings, validate=False) as producer:
                producer.send_all(phase)
            wait_until_durable_to_the_end(settings, timeout_s=120)
    finally:
        worker.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_the_worker_agrees_with_the_oracle_on_a_random_log(stream_settings, tmp_path, seed):
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-diff{seed}",
                                                  "grace_period_seconds": GRACE_MS // 1000,
                                                  "live_balance_interval_ms": 0})
    started = time.monotonic()
    first, *later = in_phases(scenario(seed, CUSTOMERS))
    run_through_the_worker(settings, first, tmp_path, phases=later)
    found = compare(settings)
    print(f"\nseed {seed}: {time.monotonic() - started:.1f}s")
    assert not found, "\n".join(found)

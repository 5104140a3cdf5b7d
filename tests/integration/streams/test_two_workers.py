"""Two workers in one consumer group, each owning some partitions, give exactly the results of the
independent oracle (tests/oracle), as one worker does."""

from __future__ import annotations

import random

from billing.facts import InvoiceFinalized
from streams.topics import ensure_topics

from .conftest import OutputReader, WorkerProcess, wait_until_durable_to_the_end
from .test_fault import assert_engine_equals_oracle, produce_log

CUSTOMERS = 60
EVENTS = 30_000


def test_two_workers_sharing_the_partitions_give_the_same_results_as_one(stream_settings, tmp_path):
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-two",
                                                  "live_balance_interval_ms": 0})
    ensure_topics(settings)
    first = WorkerProcess(settings, "worker-a", tmp_path).start()
    second = WorkerProcess(settings, "worker-b", tmp_path).start()
    reader = OutputReader(settings)
    try:
        first.wait_ready()
        second.wait_ready()
        produce_log(settings, random.Random(7), customer_count=CUSTOMERS, event_count=EVENTS)
        wait_until_durable_to_the_end(settings, timeout_s=180)
        reader.wait_for(lambda facts: len({f.invoice_id for f in facts if isinstance(f, InvoiceFinalized)})
                        >= 2 * CUSTOMERS, timeout_s=60)
        reader.settle(2.0)
        assert first.status()["batches"] > 0 and second.status()["batches"] > 0  # both did work
    finally:
        first.stop()
        second.stop()
        reader.close()
    assert_engine_equals_oracle(settings, CUSTOMERS)

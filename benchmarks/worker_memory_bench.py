"""Stream worker memory at the issue's scale: 100,000 customers x 2 meters, events over a day.

Every customer has a grant and a subscription to both metered prices; each (customer, meter) gets
EVENTS_PER_METER events at random minutes of the last 24 hours, so the worker holds 100,000
customer records and ~600,000 minute buckets (in its stores, behind bounded caches). Measured: the
worker's peak RSS (VmHWM) once it has folded everything. Target < 1 GiB.

    python -m benchmarks --only worker_memory
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import measurement, quick
from benchmarks.streams_bench import _free_port, _Worker
from drawdown.settings import Settings
from streams import walkthrough as w
from streams.topics import ensure_topics

CUSTOMERS = 100_000
QUICK_CUSTOMERS = 5_000
EVENTS_PER_METER = 3
DAY_MS = 24 * 3_600_000
TARGET_RSS_BYTES = 1 << 30


def _produce(settings: Settings, rng: random.Random, customer_count: int) -> int:
    from producers.producer import FactProducer

    now_ms = time.time_ns() // 1_000_000
    customers = [f"cus_mem_{n}" for n in range(customer_count)]
    with FactProducer(settings, validate=False) as producer:
        producer.send_all(w.catalog_facts())
        producer.flush()
        for customer_id in customers:
            producer.send_all(w.customer_setup(customer_id, None, start_ms=now_ms - 2 * DAY_MS,
                                               grant_minor=10_000_000))
        producer.flush()
        for customer_id in customers:
            for name in ("hypernian_input_tokens", "hypernian_output_tokens"):
                for _ in range(EVENTS_PER_METER):
                    producer.send_meter_event(name, {"stripe_customer_id": customer_id,
                                                     "value": str(rng.randint(1, 999))},
                                              event_time_ms=now_ms - rng.randrange(DAY_MS))
    return customer_count * 3 + customer_count * 2 * EVENTS_PER_METER


def run(settings: Settings) -> list[dict[str, Any]]:
    rng = random.Random(23)
    work_dir = Path(tempfile.mkdtemp(prefix="worker-memory-bench-"))
    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}.memory",
                                           "worker_data_dir": work_dir / "worker",
                                           "worker_web_port": _free_port()})
    ensure_topics(settings)
    customer_count = QUICK_CUSTOMERS if quick() else CUSTOMERS
    total = _produce(settings, rng, customer_count)
    worker = _Worker(settings, work_dir / "worker.log")
    try:
        started = worker.start()
        last_report = 0.0

        def folded_all(status: dict) -> bool:
            nonlocal last_report
            if time.monotonic() - last_report > 15:  # progress: this takes a minute or two
                last_report = time.monotonic()
                print(f"  worker memory: {status.get('facts', 0):,} of {total:,} facts folded", file=sys.stderr)
            return status.get("facts", 0) >= total

        worker.wait(folded_all, timeout_s=1200)
        seconds = time.monotonic() - started
        rss = worker.peak_rss_bytes()
        print(f"  worker memory: {total:,} facts folded in {seconds:.0f} s, peak RSS {rss / 2**20:,.0f} MiB",
              file=sys.stderr)
        # Recovery with that state: kill -9, restart, until it folds a new fact (tables recovered,
        # partitions owned, every partition's customers read back for the due-time index).
        worker.kill()
        restarted_at = worker.start()
        worker.wait(lambda status: status.get("ready"), timeout_s=300)
        ready_s = time.monotonic() - restarted_at
        _produce_tick(settings)
        worker.wait(lambda status: status.get("facts", 0) > 0, timeout_s=300)
        resumed_s = time.monotonic() - restarted_at
    finally:
        worker.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    return [measurement(f"worker peak RSS: {customer_count:,} customers x 2 meters, "
                        f"{customer_count * 2 * EVENTS_PER_METER:,} events over a day", "MiB", rss / 2**20,
                        below=TARGET_RSS_BYTES / 2**20),
            measurement("recovery with that state after kill -9: restart to ready", "s", ready_s, info="no target"),
            measurement("recovery with that state after kill -9: restart to first new fact folded", "s", resumed_s,
                        info="no target")]


def _produce_tick(settings: Settings) -> None:
    """A time tick to every partition: the first fact the restarted worker folds."""
    from billing.facts import TimeTicked
    from producers.producer import FactProducer

    with FactProducer(settings, validate=False) as producer:
        producer.send(TimeTicked(now_ms=time.time_ns() // 1_000_000))  # time facts go to every partition

"""Soak: six simulated months of steady usage through one worker, its state bounded (issue 16).

Event time is compressed: the facts carry their own receipt times (the receipt bound is off, as when
loading history), a simulated day of usage (CUSTOMERS x EVENTS_PER_CUSTOMER_DAY events, a tick) is
produced at once, and the worker folds months in minutes. Every SAMPLE_EVERY_DAYS simulated days, once
the worker has folded everything, the series takes: the worker's usage store on disk and its record
counts (dedupe records, minute buckets, index records), and the changelogs' bytes and records as a
restore reads them (after the broker's log compaction). With purging (billing/retention.py), dedupe
records stop growing after the 35-day dedupe window and buckets after ~38 days.

Recovery, after 2 and after 6 simulated months: kill -9, the worker's local state deleted (a new
machine), restart, until it folds a new fact (tables restored from the changelogs). The targets: the
6-month figures within 20% of the 2-month ones (state that does not grow with the installation's age).

The changelog topics get compaction settings scaled to the compressed time (segments roll every few
seconds, tombstones kept a second instead of a day): in real time, Kafka's defaults (a segment a
week, tombstones a day) hold a week of records beyond the live state. The series and a plot are
written to .bench/soak.json and .bench/soak.png.

    python -m benchmarks --only soak
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BENCH_RESULTS_DIR, measurement, quick
from benchmarks.streams_bench import _free_port, _Worker
from billing.facts import MeterEventRecorded, TimeTicked
from drawdown.settings import Settings
from streams import walkthrough as w
from streams.source import wait_until_durable_to_the_end
from streams.topics import ensure_topics

DAY_MS = 86_400_000
CUSTOMERS, QUICK_CUSTOMERS = 200, 60
EVENTS_PER_CUSTOMER_DAY = 10
SIMULATED_DAYS, QUICK_SIMULATED_DAYS = 180, 90
SAMPLE_EVERY_DAYS = 10
RECOVERY_ROUNDS, QUICK_RECOVERY_ROUNDS = 3, 1
MAX_GROWTH = 1.2  # 6 months against 2: "the same time (within 20%)"
# Compaction at the compressed time scale (see the module docstring).
CHANGELOG_CONFIG = {"segment.ms": "3000", "delete.retention.ms": "1000", "min.cleanable.dirty.ratio": "0.01",
                    "min.compaction.lag.ms": "0"}


def run(settings: Settings) -> list[dict[str, Any]]:
    work_dir = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}.soak",
                                           "worker_data_dir": work_dir / "worker", "worker_web_port": _free_port(),
                                           "receipt_bound_seconds": 0})
    ensure_topics(settings)
    customers = QUICK_CUSTOMERS if quick() else CUSTOMERS
    days = QUICK_SIMULATED_DAYS if quick() else SIMULATED_DAYS
    rounds = QUICK_RECOVERY_ROUNDS if quick() else RECOVERY_ROUNDS
    recovery_days = (60, days)
    start_ms = (time.time_ns() // 1_000_000 - (days + 10) * DAY_MS) // DAY_MS * DAY_MS
    worker = _Worker(settings, work_dir / "worker.log", env={"DRAWDOWN_RECEIPT_BOUND_SECONDS": "0"})
    soak = _Soak(settings, customers, start_ms)
    series: list[dict[str, Any]] = []
    recoveries: dict[int, list[float]] = {}
    try:
        soak.setup()
        worker.start()
        compaction_set = False
        for day in range(1, days + 1):
            soak.produce_day(day)
            # Folded day by day, as a live worker's batches follow the receipts (a batch spans well
            # under a second), not months in one batch of backlog.
            wait_until_durable_to_the_end(settings, timeout_s=600)
            if day % SAMPLE_EVERY_DAYS and day not in recovery_days:
                continue
            if not compaction_set:
                _set_changelog_config(settings)
                compaction_set = True
            sample = {"day": day, **_store_sample(settings), **_settled_changelog_sample(settings)}
            series.append(sample)
            print(f"  soak: day {day}: store {sample['store_bytes'] / 2**20:.1f} MiB on disk "
                  f"({sample['store_wal_bytes'] / 2**20:.1f} write-ahead log, "
                  f"{sample['store_sst_bytes'] / 2**20:.1f} table files), "
                  f"{sample['store_live_bytes'] / 2**20:.1f} MiB live, {sample['seen_records']:,} "
                  f"dedupe records, {sample['bucket_records']:,} buckets; changelogs "
                  f"{sample['changelog_bytes'] / 2**20:.1f} MiB, {sample['changelog_records']:,} records",
                  file=sys.stderr)
            if day in recovery_days:
                recoveries[day] = [_recover(worker, settings, soak) for _ in range(rounds)]
                print(f"  soak: day {day}: recovery after kill -9 on a new machine: "
                      f"{', '.join(f'{s:.1f}' for s in recoveries[day])} s", file=sys.stderr)
    finally:
        worker.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    _write_series(series, recoveries)
    early, late = (next(s for s in series if s["day"] == day) for day in recovery_days)
    early_recovery, late_recovery = (statistics.median(recoveries[day]) for day in recovery_days)
    months = f"{recovery_days[1] / 30:.0f} against 2 simulated months"
    label = f"{customers} customers, {customers * EVENTS_PER_CUSTOMER_DAY:,} events a simulated day"
    return [
        measurement(f"soak ({label}): worker usage store, live records' bytes, {months}", "x",
                    late["store_live_bytes"] / early["store_live_bytes"], below=MAX_GROWTH),
        measurement(f"soak: worker usage store on disk, {months}", "x", late["store_bytes"] / early["store_bytes"],
                    info="RocksDB reclaims deleted records' space as it compacts, not at once"),
        measurement(f"soak: usage records kept (dedupe + buckets), {months}", "x",
                    (late["seen_records"] + late["bucket_records"]) / (early["seen_records"] + early["bucket_records"]),
                    below=MAX_GROWTH),
        measurement(f"soak: changelog bytes a restore reads, {months}", "x",
                    late["changelog_bytes"] / early["changelog_bytes"], below=MAX_GROWTH),
        measurement(f"soak: recovery after kill -9 on a new machine, {months}", "x",
                    late_recovery / early_recovery, below=MAX_GROWTH),
        measurement(f"soak: recovery after kill -9 on a new machine after {recovery_days[1]} simulated days", "s",
                    recoveries[recovery_days[1]], info="the ratio above is the target"),
        measurement(f"soak: usage store per customer after {recovery_days[1]} simulated days (live records)", "B",
                    late["store_live_bytes"] / customers, info="sizing"),
        measurement("soak: usage store per event of the last 35 days (live records)", "B",
                    late["store_live_bytes"] / (35 * customers * EVENTS_PER_CUSTOMER_DAY), info="sizing"),
    ]


class _Soak:
    """The simulated installation: customers with grants and monthly subscriptions, then days of usage."""

    def __init__(self, settings: Settings, customers: int, start_ms: int) -> None:
        from producers.producer import FactProducer

        self.settings, self.start_ms = settings, start_ms
        self.customers = [f"cus_soak_{n}" for n in range(customers)]
        self.producer = FactProducer(settings, validate=False)
        self.rng = random.Random(16)

    def setup(self) -> None:
        self.producer.send_all(w.catalog_facts())
        for customer_id in self.customers:
            self.producer.send_all(w.customer_setup(customer_id, None, start_ms=self.start_ms,
                                                    grant_minor=10**12))
        self.tick(self.start_ms)
        self.producer.flush()

    def produce_day(self, day: int) -> None:
        day_start_ms = self.start_ms + (day - 1) * DAY_MS
        send, rng = self.producer.send, self.rng
        for n in range(EVENTS_PER_CUSTOMER_DAY):
            for customer_id in self.customers:
                received_ms = day_start_ms + rng.randrange(DAY_MS)
                event = MeterEventRecorded(
                    customer_id=customer_id, event_name=rng.choice(("hypernian_input_tokens", "hypernian_output_tokens")),
                    identifier=f"{day}-{n}-{customer_id}", payload={"stripe_customer_id": customer_id,
                                                                     "value": str(rng.randint(1, 5000))},
                    event_time_ms=received_ms - rng.randrange(3_600_000), received_at_ms=received_ms)
                send(event)
                if rng.random() < 0.01:  # a client's retry: deduplicated
                    send(event)
        self.tick(day_start_ms + DAY_MS)
        self.producer.flush()

    def tick(self, now_ms: int) -> None:
        self.producer.send(TimeTicked(now_ms=now_ms))
        self.producer.flush()


def _recover(worker: _Worker, settings: Settings, soak: _Soak) -> float:
    """kill -9, local state gone, restart: seconds until the worker is durable to the end of its
    input again, a new fact included (tables restored, partitions owned, the fact folded)."""
    worker.kill()
    shutil.rmtree(settings.worker_data_dir, ignore_errors=True)
    started = worker.start()
    soak.tick(soak.start_ms)  # an old time: it changes nothing, but it is folded
    wait_until_durable_to_the_end(settings, timeout_s=600)
    return time.monotonic() - started


def _changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.topic_prefix}.worker-{table}-changelog" for table in ("usage", "customers")]


def _set_changelog_config(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    admin = AdminClient(settings.kafka_client_config())
    resources = [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in CHANGELOG_CONFIG.items()]) for topic in _changelog_topics(settings)]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def _changelog_sample(settings: Settings) -> dict[str, int]:
    """What a restore reads of both changelogs: bytes (keys and values), records, tombstones."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": "soak-bench-reader",
                         "enable.auto.commit": False, "fetch.max.bytes": 50 * 2**20})
    total = records = tombstones = 0
    try:
        for topic in _changelog_topics(settings):
            ends = {}
            for partition in range(settings.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                if high > low:
                    ends[partition] = high
            consumer.assign([TopicPartition(topic, partition, 0) for partition in ends])
            left = dict(ends)
            while left:
                for message in consumer.consume(10_000, timeout=1.0):
                    if message.error():
                        continue
                    total += len(message.key() or b"") + len(message.value() or b"")
                    records += 1
                    tombstones += message.value() is None
                    if message.offset() >= ends[message.partition()] - 1:
                        left.pop(message.partition(), None)
    finally:
        consumer.close()
    return {"changelog_bytes": total, "changelog_records": records, "changelog_tombstones": tombstones}


def _store_sample(settings: Settings) -> dict[str, int]:
    """The usage store on disk (every file of its RocksDBs) and its records, read without a lock."""
    from rocksdict import AccessType, Options, Rdict

    stores = sorted(Path(settings.worker_data_dir).glob("**/usage-*.db"))
    files = [path for store in stores for path in store.rglob("*") if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    # What the disk holds besides the live records: the write-ahead log of the memtables not yet
    # flushed (up to 2 x 8 MiB per partition, streams/worker.py ROCKSDB_OPTIONS), and table files
    # whose deleted records wait for a compaction.
    counts = {"seen_records": 0, "bucket_records": 0, "index_records": 0, "store_live_bytes": 0,
              "store_wal_bytes": sum(path.stat().st_size for path in files if path.suffix == ".log"),
              "store_sst_bytes": sum(path.stat().st_size for path in files if path.suffix == ".sst")}
    for store in stores:
        db = Rdict(str(store), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                first = key[:1]
                kind = "seen_records" if first == b"s" else "bucket_records" if first == b"b" else "index_records"
                counts[kind] += 1
                counts["store_live_bytes"] += len(key) + len(value)
        finally:
            db.close()
    return {"store_bytes": size, **counts}


def _settled_changelog_sample(settings: Settings, patience_s: float = 60.0) -> dict[str, int]:
    """_changelog_sample once the broker's log cleaner has caught up (two samples 5 s apart agree):
    months are produced in seconds here, the cleaner runs every 15 s."""
    sample = _changelog_sample(settings)
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        time.sleep(5.0)
        again = _changelog_sample(settings)
        if again["changelog_records"] >= sample["changelog_records"]:
            return again
        sample = again
    return sample


def _write_series(series: list[dict[str, Any]], recoveries: dict[int, list[float]]) -> None:
    BENCH_RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_RESULTS_DIR / "soak.json").write_text(json.dumps({"series": series, "recovery_s": recoveries}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [sample["day"] for sample in series]
    figure, (sizes, counts) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    sizes.plot(days, [s["store_bytes"] / 2**20 for s in series], marker="o", label="worker usage store on disk")
    sizes.plot(days, [s["store_live_bytes"] / 2**20 for s in series], marker="o", label="its live records")
    sizes.plot(days, [s["store_wal_bytes"] / 2**20 for s in series], marker=".", linestyle=":",
               label="of the disk: write-ahead log")
    sizes.plot(days, [s["changelog_bytes"] / 2**20 for s in series], marker="o", label="changelogs, as a restore reads them")
    sizes.set_ylabel("MiB")
    sizes.legend()
    sizes.set_title("drawdown soak: worker state over simulated days (make bench --only soak)")
    counts.plot(days, [s["seen_records"] for s in series], marker="o", label="dedupe records")
    counts.plot(days, [s["bucket_records"] for s in series], marker="o", label="minute buckets")
    counts.plot(days, [s["changelog_records"] for s in series], marker="o", label="changelog records")
    counts.axvline(35, color="grey", linestyle=":", label="dedupe window (35 d)")
    counts.set_xlabel("simulated day")
    counts.set_ylabel("records")
    counts.legend()
    figure.tight_layout()
    figure.savefig(BENCH_RESULTS_DIR / "soak.png", dpi=100)
    plt.close(figure)

"""The stream worker: Faust wiring around the batch pipeline (streams/pipeline.py), which reads, decodes,
groups by partition, folds (billing/partition.py), emits (streams/output.py) and writes state.

Exactly once by construction (DESIGN.md), not Faust's transactional mode:
1. each batch (what the source reader has buffered, gathered for at least BATCH_WINDOW_S) is
   folded per partition in offset order; every state record carries the last offset it applied,
   so facts a crash makes us read again change nothing twice;
2. the batch's output facts are sent and their acks AWAITED before any state record is written
   back, so a crash in between re-emits the same facts (deterministic ids) instead of losing them;
3. each touched record is then written once (one changelog record: value and guard together;
   a batch's dedupe records share a few packed changelog records, see streams/records.py),
   snapshotted as bytes when the fold ends; steps 2 and 3 move on while the next batch is folded
   (a pipeline of depth one: a batch waits for the previous batch to be complete before it
   snapshots its own records);
4. where to resume is ours: the partition's record carries `durable_offset` (the last offset whose
   batch had every output and state record acknowledged), and on every assignment, after table
   recovery, the source partitions are read from durable_offset + 1.

Faust owns the group (assignment), the two rocksdict-backed changelogged tables and their recovery;
every use of a Faust internal is in streams/faust_patches.py (pinned version, fingerprinted).
The source facts are read by streams/source.py with confluent-kafka, not by a Faust stream: its
per-message path cost more than the fold, and it committed (or dropped) messages we never folded
around rebalances and flow control. The tables: `customers` (CustomerState per customer plus one
PartitionState per partition) and `usage` (seen events and minute buckets). The worker reads and
writes each partition's store directly and sends the changelog records itself, in bulk, to the
source partition's changelog partition, awaiting the acks (Faust's per-key `table[k] = v` picks
the partition of "the current event", which a multi-partition batch does not have, and is several
times slower).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path
from typing import Any

from drawdown.settings import Settings
from streams import faust_patches
from streams.pipeline import BatchPipeline
from streams.retention import restore_usage_changelog

log = logging.getLogger("drawdown.worker")

# Per store (one per table and partition: 12 with 6 partitions). Faust's defaults (64 MiB memtables
# x 3, a 2 GiB block cache each) let a long-running worker grow to gigabytes; our writes come in
# one WriteBatch per batch and our reads are cached above the store, so small buffers suffice.
ROCKSDB_OPTIONS = {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2, "block_cache_size": 8 << 20,
                   "block_cache_compressed_size": 0}


def worker_data_dir(settings: Settings) -> Path:
    return Path(settings.worker_data_dir or settings.state_dir / "worker")


def create_app(settings: Settings) -> tuple[Any, BatchPipeline]:
    """The Faust app (consumer group = topic prefix) and its engine."""
    import faust

    app = faust.App(
        f"{settings.topic_prefix}.worker",
        broker=f"kafka://{settings.effective_kafka_bootstrap_servers}",
        broker_credentials=settings.faust_broker_credentials(),  # None: PLAINTEXT
        store="rocksdb://",
        datadir=str(worker_data_dir(settings)),
        web_port=settings.worker_web_port,
        web_host="127.0.0.1",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,  # outputs and changelog: acknowledged by all in-sync replicas
        table_standby_replicas=0,
        # A killed worker's partitions wait for its session to expire before anyone else (or its own
        # restart) gets them: keep that short (Faust's default is 60 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
    )
    source = app.topic(settings.topic("customer-facts"), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    # Keys and values are bytes (the app's serializers are "raw"): we pickle records ourselves.
    customers_table = app.Table("customers", partitions=settings.partitions, key_type=bytes, value_type=bytes,
                                options=dict(ROCKSDB_OPTIONS))
    usage_table = app.Table("usage", partitions=settings.partitions, key_type=bytes, value_type=bytes,
                            options=dict(ROCKSDB_OPTIONS))
    # packs put as their records, purged seen records forgotten (streams/retention.py)
    faust_patches.apply_changelog_on_recovery(usage_table, restore_usage_changelog)
    engine = BatchPipeline(app, settings, customers_table, usage_table)

    @app.agent(source)
    async def subscribe_source(stream: Any) -> None:
        """Subscribes the group to customer-facts: Faust assigns this worker its partitions (and the
        tables' partitions with them) by this agent. The facts never come through it: SourceReader
        reads them (BatchPipeline.install_hooks keeps Faust's fetcher off the topic)."""
        async for _ in stream:
            log.error("Faust delivered a source fact it should not fetch; ignored (SourceReader reads them)")

    @app.task
    async def fold() -> None:
        try:
            await engine.read_source()
        except asyncio.CancelledError:  # the worker stops; what is not durable is read again
            log.info("stopping: facts after the durable offsets are read again by the next owner")
            raise
        except BaseException:  # noqa: BLE001
            # Whatever the batch wrote is guarded by offsets: die, and the restart re-reads it
            # from the durable offsets.
            log.exception("batch failed; exiting so that it is re-read after a restart")
            logging.shutdown()
            os._exit(70)

    @app.on_partitions_revoked.connect
    async def on_revoked(*args: Any, **kwargs: Any) -> None:
        engine.install_hooks()  # first rebalance: before Faust's fetch loop starts
        await engine.release_source()  # the batch in hand writes to stores we may be about to lose

    @app.on_partitions_assigned.connect
    async def on_assigned(*args: Any, **kwargs: Any) -> None:
        engine.install_hooks()
        await engine.release_source()

    @app.on_rebalance_complete.connect
    async def on_rebalanced(*args: Any, **kwargs: Any) -> None:
        engine.ready = True  # partitions assigned and tables recovered: facts flow

    @app.page("/drawdown/ready/")
    async def ready(web: Any, request: Any) -> Any:
        lags = sorted(engine.batch_lags_ms)
        body = {"ready": engine.ready, "batches": engine.batches, "facts": engine.facts_in, "gaps": engine.gaps,
                "forgotten": {"seen": engine.forgotten_seen, "buckets": engine.forgotten_buckets},
                "seconds": {phase: round(value, 3) for phase, value in engine.phase_seconds.items()},
                "recent_batch_lag_ms": {"p50": round(lags[len(lags) // 2]), "p99": round(lags[int(len(lags) * 0.99)]),
                                        "max": round(lags[-1]), "batches": len(lags)} if lags else None}
        return web.json(body, status=200 if engine.ready else 503)

    return app, engine


def run_worker(settings: Settings, loglevel: str = "warning") -> int:
    """Run one worker until it is stopped (SIGTERM/SIGINT)."""
    import faust

    from streams.topics import ensure_topics

    ensure_topics(settings)
    worker_data_dir(settings).mkdir(parents=True, exist_ok=True)
    # The fold allocates a dozen small records per meter event, nearly all acyclic and freed by
    # reference counting: with the default threshold (700) the young-generation collector ran
    # every ~60 events and doubled the fold's cost (measured). Collect rarely; memory is bounded
    # by the caches all the same.
    gc.set_threshold(100_000, 50, 100)
    app, engine = create_app(settings)
    engine.catalog_follower.catch_up(timeout_s=60)  # judge no fact before the catalog is read to its end
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0

"""Every place the worker reaches into Faust's internals, and nothing else.

Faust owns the consumer group, the changelogged RocksDB tables and their recovery; the worker reads
the source facts itself (streams/source.py) and writes its state records in batches. That takes six
internals of faust-streaming, written against FAUST_VERSION. A Faust upgrade may change any of them
without notice, so tests/unit/streams/test_faust_patches.py holds a fingerprint (sha256 of the
source) of each in PATCHED_INTERNALS and fails when one changes: read the new code, adapt the
function here that uses it, then record the new fingerprint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from faust.types import TP

FAUST_VERSION = "0.15.3"

# The internal each function below depends on -> sha256 of its source in FAUST_VERSION.
PATCHED_INTERNALS = {
    "faust.transport.drivers.aiokafka.Consumer._getmany":
        "f9d47aa9010b5ff2b874ba65f927871f3612718d8a9db00b58601554a35236c4",
    "faust.transport.drivers.aiokafka.Consumer.verify_event_path":
        "a17e8f0610e1abcb03ac2a94f6fae3371ec988543b6fae4d889129d362c65f7a",
    "faust.transport.drivers.aiokafka.Consumer.perform_seek":
        "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6",
    "faust.stores.rocksdb.Store._db_for_partition":
        "cb7e67d5f9efc4bced7b7ab09a55fe717c352daad5b693594e3f7ca52a98787f",
    "faust.stores.rocksdb.Store.set_persisted_offset":
        "b4c811926678346ebb8c40486dbc46d0fbac2bbeaa592384bd955112556acf45",
    "faust.tables.table.Table.apply_changelog_batch":
        "b980a78d3ae9b1e87f2d3fb63e0dcd2671341a1e60ea5233859d6bdd699d3029",
}


def keep_consumer_off_topic(consumer: Any, topic: str, after_seek: Callable[[], Awaitable[None]]) -> None:
    """Faust's consumer stays subscribed to `topic` (so that the group assigns its partitions, and
    the tables' with them) but never fetches it, and `after_seek` runs after Faust has seeked its
    streams at each assignment (the worker then decides where the topic is read from).

    Internals: Consumer._getmany (the fetch loop's read), Consumer.verify_event_path (its warning
    about a partition that never yields), Consumer.perform_seek (the seek after recovery)."""
    getmany, verify_event_path, perform_seek = consumer._getmany, consumer.verify_event_path, consumer.perform_seek

    async def getmany_without_topic(active_partitions: Any, timeout: float) -> Any:
        if active_partitions is None:
            return await getmany(active_partitions, timeout)
        wanted = {tp for tp in active_partitions if tp.topic != topic}
        if not wanted:  # (aiokafka reads an empty set as "every partition")
            await asyncio.sleep(timeout)
            return {}
        return await getmany(wanted, timeout)

    def verify_event_path_without_topic(now: float, tp: TP) -> Any:
        if tp.topic != topic:  # Faust would warn that it never streams the topic
            return verify_event_path(now, tp)
        return None

    async def seek_then_ours() -> None:
        await perform_seek()  # Faust: its streams to the committed offsets (unused for `topic`) ...
        await after_seek()  # ... then the worker's own positions

    consumer._getmany = getmany_without_topic
    consumer.verify_event_path = verify_event_path_without_topic
    consumer.perform_seek = seek_then_ours


def partition_db(table: Any, partition: int) -> Any:
    """The table's RocksDB (rocksdict) of one partition. Internal: Store._db_for_partition."""
    return table.data._db_for_partition(partition)


def set_persisted_offset(table: Any, changelog_topic: str, partition: int, offset: int) -> None:
    """Tell the table's store that its changelog is applied up to `offset` (recovery starts after
    it). Internal: Store.set_persisted_offset."""
    table.data.set_persisted_offset(TP(changelog_topic, partition), offset)


def apply_changelog_on_recovery(table: Any, apply: Callable[[Callable[[int], Any], Iterable[Any]], dict[Any, int]]
                                ) -> None:
    """Faust recovers a table by applying batches of its changelog events to its stores: do it with
    `apply(db_for_partition, batch)` instead, which returns the latest offset applied per topic
    partition. Internal: Table.apply_changelog_batch, Store._db_for_partition and set_persisted_offset."""
    store = table.data

    def apply_changelog_batch(batch: Iterable[Any]) -> None:
        for tp, offset in apply(store._db_for_partition, batch).items():
            store.set_persisted_offset(tp, offset)

    table.apply_changelog_batch = apply_changelog_batch

"""The purge of the worker's usage state: seen records and minute buckets forgotten once the rules of
billing/retention.py say nothing to come can read them, from the local store and, by tombstones,
from the changelog (so that compaction drops them and a restore never reads them back).

What expires when is kept in index records in the usage store (and its changelog), one per batch,
under keys that sort by their expiry, so that each batch finds what is due with one seek:

    SEEN_INDEX   + received(13) + ":" + pack            a changelog pack's seen keys
    BUCKET_INDEX + clock + SEP + minute(13) + ":" + batch:n   a batch's buckets of one clock's customers
    ARMED_INDEX  + received(13) + ":" + batch:n         buckets past lateness, kept one cancel window more

`received` is the latest receipt among the index's records, `minute` the latest bucket minute, `clock`
the customers' test clock ("" for the wall clock). A seen record may be written again after its index
(a cancel, an identifier reused after the dedupe window, another customer's event): it is forgotten
only if none of its occurrences was received after the index's time (`expired_seen_keys`), as the
worker decides and a restore decides again, from the same records (`restore_usage_changelog`).
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rocksdict import WriteBatch

from billing.partition import PartitionState
from billing.periods import MILLISECONDS_PER_DAY
from billing.retention import armed_buckets_expired, buckets_past_lateness, receipt_floor_ms, seen_expired
from billing.usage import SeenEvent
from streams import records

SEEN_INDEX = b"\x00expiry:s:"
BUCKET_INDEX = b"\x00expiry:b:"
ARMED_INDEX = b"\x00expiry:a:"
MAX_FORGOTTEN_PER_BATCH = 50_000  # a first purge of a long history is spread over batches
BUCKET_KEYS_PER_INDEX = 4_000  # ~200 KiB: an index record stays far below a Kafka message's limit (1 MiB)


def _time_key(ms: int) -> bytes:
    return b"%013d" % max(ms, 0)


def _time_of(key: bytes, prefix_length: int) -> int:
    return int(key[prefix_length:prefix_length + 13])


def _latest_received(by_customer: Mapping[str, SeenEvent]) -> int:
    return max(seen.reading.received_at_ms for seen in by_customer.values())


def packs_and_index(batch_id: bytes, seen_dirty: Mapping[tuple[str, str], Mapping[str, SeenEvent]],
                    seen_records: list[tuple[bytes, bytes]], bucket_dirty: Iterable[tuple[str, str, int]],
                    clock_of: Callable[[str], str | None], latest_received_ms: int
                    ) -> tuple[list[tuple[bytes, bytes, list[bytes]]], list[tuple[bytes, bytes]]]:
    """One batch's changelog packs of seen records (records.packs_of), and the index records of its
    changed usage records (store and changelog alike): one per pack, which goes as a whole with the
    last of its records; per clock one per BUCKET_KEYS_PER_INDEX buckets. Records of different days
    (receipt, or bucket minute) never share a pack or an index: a batch that catches up on a backlog
    of months is forgotten day by day, not with its latest record. Each index record stays far below
    a Kafka message's limit."""
    keys_of = {records.seen_key(key): key for key in seen_dirty}
    by_day: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for record in seen_records:
        by_day[_latest_received(seen_dirty[keys_of[record[0]]]) // MILLISECONDS_PER_DAY].append(record)
    packs, index = [], []
    for day, day_records in sorted(by_day.items()):
        for pack_key, pack_value, stored_keys in records.packs_of(day_records, batch_id + b":%d" % day):
            keys = [keys_of[stored] for stored in stored_keys]
            received_ms = max(_latest_received(seen_dirty[key]) for key in keys)
            packs.append((pack_key, pack_value, stored_keys))
            index.append((SEEN_INDEX + _time_key(received_ms) + b":" + pack_key[len(records.PACK_PREFIX):],
                          pickle.dumps((received_ms, keys, [pack_key]), protocol=5)))
    by_clock_day: dict[tuple[str, int], list[tuple[str, str, int]]] = defaultdict(list)
    for key in bucket_dirty:
        by_clock_day[(clock_of(key[0]) or "", key[2] // MILLISECONDS_PER_DAY)].append(key)
    for (clock, day), keys in by_clock_day.items():
        for number, start in enumerate(range(0, len(keys), BUCKET_KEYS_PER_INDEX)):
            chunk = keys[start:start + BUCKET_KEYS_PER_INDEX]
            latest_minute_ms = max(key[2] for key in chunk)
            index.append((BUCKET_INDEX + clock.encode() + records.SEPARATOR.encode() + _time_key(latest_minute_ms)
                          + b":" + batch_id + b":%d:%d" % (day, number),
                          pickle.dumps((latest_received_ms, chunk), protocol=5)))
    return packs, index


def expired_seen_keys(index_value: bytes, current: Callable[[tuple[str, str]], Mapping[str, SeenEvent] | None]
                      ) -> list[tuple[str, str]]:
    """The seen keys an index lists whose record (`current`) is still the index's: none of its
    occurrences received after the index's time (a record written again since is another index's)."""
    received_ms, keys, _packs = pickle.loads(index_value)
    found = []
    for key in keys:
        record = current(key)
        if record is not None and _latest_received(record) <= received_ms:
            found.append(key)
    return found


@dataclass(slots=True)
class Purge:
    """One partition's purge in one batch: local puts and deletes, and the changelog's records
    (None: a tombstone), in the order they must reach it."""

    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    forgotten_seen: int = 0
    forgotten_buckets: int = 0

    def forget(self, key: bytes) -> None:
        self.deletes.append(key)
        self.changelog.append((key, None))


def _due(db: Any, prefix: bytes, is_due: Callable[[bytes], bool]) -> Iterable[tuple[bytes, bytes]]:
    """The index records under `prefix`, in key order, while `is_due` says so of their keys."""
    for key, value in db.items(from_key=prefix):
        if not key.startswith(prefix) or not is_due(key):
            return
        yield key, value


def purge(db: Any, seen: Any, buckets: Any, state: PartitionState, *, dedupe_window_ms: int, receipt_bound_ms: int,
          grace_period_ms: int, clocks_scanned: dict[str, int] | None = None) -> Purge:
    """What one partition forgets this batch, by time as of its durable offset. `seen` and `buckets`
    are its write-back caches (streams/records.BatchCache): a record this batch changed is left for
    a later batch (its own index lists it again), any other is dropped from them with its key.
    `clocks_scanned` (kept by the caller between batches): each test clock's time at its last scan."""
    done = Purge()
    if state.durable_latest_received_ms <= 0:
        return done
    floor_ms = receipt_floor_ms(state.durable_latest_received_ms, receipt_bound_ms)
    budget = MAX_FORGOTTEN_PER_BATCH
    forgotten: set = set()  # keys forgotten in this pass (their deletes are not in the store yet)
    # Seen records: a batch's index is due when its latest receipt is past the dedupe window.
    prefix_length = len(SEEN_INDEX)
    for index_key, value in _due(db, SEEN_INDEX,
                                 lambda key: seen_expired(_time_of(key, prefix_length), floor_ms, dedupe_window_ms)):
        if budget <= 0:
            break
        received_ms, keys, pack_keys = pickle.loads(value)
        for key in expired_seen_keys(value, seen.get):
            if key not in seen.dirty and key not in forgotten:  # (a record another index listed too)
                forgotten.add(key)
                seen.forget(key)
                done.deletes.append(records.seen_key(key))  # (in the changelog: its pack's tombstone)
                done.forgotten_seen += 1
        done.changelog.extend((pack_key, None) for pack_key in pack_keys)
        done.forget(index_key)  # after its packs: a restore that finds the packs finds the index
        budget -= len(keys)
    # Buckets: a batch's index of one clock is armed when its minutes are past lateness on that clock ...
    separator = records.SEPARATOR.encode()
    clocks = {"": floor_ms, **(state.durable_clocks or {})}
    for clock, customer_now_ms in clocks.items():
        if clock and clocks_scanned is not None:
            # A test clock that has not moved since its last scan has nothing new past lateness: an
            # index written since holds minutes its clock then accepted, within 35 days of it.
            if clocks_scanned.get(clock) == customer_now_ms:
                continue
            clocks_scanned[clock] = customer_now_ms
        prefix = BUCKET_INDEX + clock.encode() + separator
        for index_key, value in _due(db, prefix, lambda key: buckets_past_lateness(
                _time_of(key, len(prefix)), customer_now_ms, grace_period_ms)):
            batch_id = index_key[len(prefix) + 14:]
            armed = (ARMED_INDEX + _time_key(state.latest_received_ms) + b":" + batch_id,
                     pickle.dumps((state.latest_received_ms, pickle.loads(value)[1]), protocol=5))
            done.puts.append(armed)
            done.changelog.append(armed)
            done.forget(index_key)
    # ... and forgotten one cancel window later.
    prefix_length = len(ARMED_INDEX)
    for index_key, value in _due(db, ARMED_INDEX,
                                 lambda key: armed_buckets_expired(_time_of(key, prefix_length), floor_ms)):
        if budget <= 0:
            break
        keys = pickle.loads(value)[1]
        for key in keys:
            if key not in buckets.dirty and key not in forgotten:
                forgotten.add(key)
                buckets.forget(key)
                done.forget(records.bucket_key(key))
                done.forgotten_buckets += 1
        done.forget(index_key)
        budget -= len(keys)
    return done


# --- recovery ------------------------------------------------------------------------------------


def restore_usage_changelog(db_for_partition: Callable[[int], Any], batch: Iterable[Any]) -> dict[Any, int]:
    """Apply a batch of the usage table's changelog to its local stores, as Faust would (a record
    put, a tombstone deleted), but with every pack put as the records it holds (streams/records.py,
    "packed changelog records") and a seen index's tombstone forgetting the seen records the worker
    forgot with it (`expired_seen_keys`, against the records restored so far). -> the latest offset
    applied per topic partition."""
    pending: dict[int, Any] = {}
    offsets: dict[Any, int] = {}

    def flush(partition: int) -> None:
        write = pending.pop(partition, None)
        if write is not None:
            db_for_partition(partition).write(write)

    for event in batch:
        message = event.message
        tp, offset, partition, key, value = message.tp, message.offset, message.partition, message.key, message.value
        offsets[tp] = max(offset, offsets.get(tp, offset))
        if value is None and key.startswith(SEEN_INDEX):
            flush(partition)
            db = db_for_partition(partition)
            index_value = db.get(key)
            write = WriteBatch(raw_mode=True)
            if index_value is not None:
                for seen_key in expired_seen_keys(index_value, lambda k: _stored_seen(db, k)):
                    write.delete(records.seen_key(seen_key))
            write.delete(key)
            db.write(write)
            continue
        write = pending.get(partition)
        if write is None:
            write = pending[partition] = WriteBatch(raw_mode=True)
        for record_key, record_value in records.unpacked(key, value):
            if record_value is None:
                write.delete(record_key)
            else:
                write.put(record_key, record_value)
    for partition in list(pending):
        flush(partition)
    return offsets


def _stored_seen(db: Any, key: tuple[str, str]) -> Mapping[str, SeenEvent] | None:
    raw = db.get(records.seen_key(key))
    return None if raw is None else records.load_seen(raw)

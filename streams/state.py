"""State records in Faust tables: pickled values behind per-batch write-back caches.

A batch reads each record at most once from its table and writes each touched record back once,
after the batch's output facts are acknowledged (see streams/worker.py). Values are pickled
(protocol 5): the records are our own frozen dataclasses, and the changelog is ours alone.
"""

from __future__ import annotations

import copyreg
import pickle
from collections.abc import Callable, Iterator, MutableMapping
from types import MappingProxyType
from typing import Any


def _mapping_proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# Billing's frozen states hold read-only mappings; pickle them as the dicts they wrap.
copyreg.pickle(MappingProxyType, lambda proxy: (_mapping_proxy, (dict(proxy),)))

_MISSING = object()


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


class BatchCache(MutableMapping):
    """A write-back cache over a table for one batch: reads once, `flush()` writes dirty keys once.

    `encode_key` maps our keys (str or tuples) to the table's bytes keys.
    """

    def __init__(self, table: Any, encode_key: Callable[[Any], bytes]) -> None:
        self.table = table
        self.encode_key = encode_key
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()

    def __getitem__(self, key: Any) -> Any:
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.table.get(self.encode_key(key))
            value = None if raw is None else loads(raw)
            self.cache[key] = value
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: Any, value: Any) -> None:
        self.cache[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: Any) -> None:  # records are never deleted (no tombstones needed yet)
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return iter(k for k, v in self.cache.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self.cache.values() if v is not None)

    def flush(self) -> int:
        """Write every dirty record to the table (one changelog record each); returns how many."""
        table, encode_key = self.table, self.encode_key
        for key in self.dirty:
            table[encode_key(key)] = dumps(self.cache[key])
        count = len(self.dirty)
        self.cache.clear()
        self.dirty.clear()
        return count

    def discard(self) -> None:
        self.cache.clear()
        self.dirty.clear()


SEPARATOR = "\x1f"
PARTITION_KEY = b"\x00partition"


def customer_key(customer_id: str) -> bytes:
    return customer_id.encode()


def seen_key(key: tuple[str, str]) -> bytes:
    return ("s" + key[0] + SEPARATOR + key[1]).encode()


def bucket_key(key: tuple[str, str, int]) -> bytes:
    return ("b" + key[0] + SEPARATOR + key[1] + SEPARATOR + str(key[2])).encode()

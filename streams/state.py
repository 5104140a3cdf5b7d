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
    """A write-back cache over one partition's store (a rocksdict) for one batch: each record is
    read at most once, and `take_dirty()` hands over each changed record once, pickled.

    `encode_key` maps our keys (str or tuples) to the store's bytes keys.
    """

    def __init__(self, db: Any, encode_key: Callable[[Any], bytes]) -> None:
        self.db = db
        self.encode_key = encode_key
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()

    def __getitem__(self, key: Any) -> Any:
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.db.get(self.encode_key(key))
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

    def take_dirty(self) -> list[tuple[bytes, bytes]]:
        """The changed records as (key, pickled value), and an empty cache for the next batch."""
        encode_key, cache = self.encode_key, self.cache
        records = [(encode_key(key), dumps(cache[key])) for key in self.dirty]
        self.cache = {}
        self.dirty = set()
        return records


SEPARATOR = "\x1f"
PARTITION_KEY = b"\x00partition"


def customer_key(customer_id: str) -> bytes:
    return customer_id.encode()


def seen_key(key: tuple[str, str]) -> bytes:
    return ("s" + key[0] + SEPARATOR + key[1]).encode()


def bucket_key(key: tuple[str, str, int]) -> bytes:
    return ("b" + key[0] + SEPARATOR + key[1] + SEPARATOR + str(key[2])).encode()

"""State records in Faust tables: pickled values behind per-batch write-back caches.

A batch reads each record at most once from its table and writes each touched record back once,
after the batch's output facts are acknowledged (see streams/worker.py). Values are pickled
(protocol 5): the records are our own frozen dataclasses, and the changelog is ours alone.
"""

from __future__ import annotations

import copyreg
import dataclasses
import operator
import pickle
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from billing.meters import MeterReading, MeterUsage
from billing.usage import SeenEvent, UsageBucket


def _mapping_proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# Billing's frozen states hold read-only mappings; pickle them as the dicts they wrap.
copyreg.pickle(MappingProxyType, lambda proxy: (_mapping_proxy, (dict(proxy),)))

_MISSING = object()


def _rebuild(cls: type, values: tuple) -> Any:
    record = object.__new__(cls)
    for name, value in zip(_FIELD_NAMES[cls], values):
        object.__setattr__(record, name, value)
    # A record written before a field was added (fields are only ever appended, with a default)
    # gets the default: an upgraded worker reads the state an older one left.
    for name, default in _APPENDED_DEFAULTS[cls][len(values):]:
        object.__setattr__(record, name, default())
    return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_APPENDED_DEFAULTS: dict[type, tuple[tuple[str, Callable[[], Any]], ...]] = {}


def _default_of(field: dataclasses.Field) -> Callable[[], Any]:
    if field.default is not dataclasses.MISSING:
        return lambda: field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory
    return lambda: _no_default(field.name)


def _no_default(name: str) -> Any:
    raise ValueError(f"stored record lacks field {name!r}, which has no default: a field was added without one")


def _register_fast_pickle(cls: type) -> None:
    """Pickle a dataclass as (class, field values): the stock path for slotted dataclasses calls
    dataclasses.fields() per object and was the worker's largest cost."""
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    _FIELD_NAMES[cls] = names
    _APPENDED_DEFAULTS[cls] = tuple((f.name, _default_of(f)) for f in fields)
    if len(names) == 1:
        name = names[0]
        copyreg.pickle(cls, lambda record: (_rebuild, (type(record), (getattr(record, name),))))
    else:
        values = operator.attrgetter(*names)
        copyreg.pickle(cls, lambda record: (_rebuild, (type(record), values(record))))


def _register_billing_records() -> None:
    import billing.balances
    import billing.customer
    import billing.facts
    import billing.grants
    import billing.meters
    import billing.periods
    import billing.usage
    import streams.processor

    for module in (billing.facts, billing.meters, billing.usage, billing.grants, billing.balances, billing.periods,
                   billing.customer, streams.processor):
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
                _register_fast_pickle(value)


_register_billing_records()


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


class BatchCache(MutableMapping):
    """A write-back cache over one partition's store (a rocksdict): each record is read at most
    once, and `take_dirty()` hands over each record changed in the batch once, pickled.

    `encode_key` maps our keys (str or tuples) to the store's bytes keys.
    """

    def __init__(self, db: Any, encode_key: Callable[[Any], bytes], max_entries: int = 100_000,
                 dump: Callable[[Any], bytes] | None = None, load: Callable[[bytes], Any] | None = None) -> None:
        self.db = db
        self.encode_key = encode_key
        self.dump = dump or dumps
        self.load = load or loads
        self.max_entries = max_entries  # records kept decoded across batches (this worker is their only writer)
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()

    def __getitem__(self, key: Any) -> Any:
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.db.get(self.encode_key(key))
            value = None if raw is None else self.load(raw)
            self.cache[key] = value
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        # The hot read (a first-seen event misses): no KeyError raised and caught per miss.
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.db.get(self.encode_key(key))
            value = None if raw is None else self.load(raw)
            self.cache[key] = value
        return default if value is None else value

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
        """The changed records as (key, pickled value). The decoded records stay cached for the next
        batches (bounded by `max_entries`), so hot customers are not unpickled per batch."""
        encode_key, cache, dump = self.encode_key, self.cache, self.dump
        dirty = self.dirty
        records = [(encode_key(key), dump(cache[key])) for key in dirty]
        self.dirty = set()
        if len(cache) > self.max_entries:
            # Keep what was just taken: it reaches the store only after the broker acks this
            # batch's outputs, while the next batch is folded (streams/worker.py).
            self.cache = {key: cache[key] for key in dirty}
        return records


SEPARATOR = "\x1f"
PARTITION_KEY = b"\x00partition"


def customer_key(customer_id: str) -> bytes:
    return customer_id.encode()


def seen_key(key: tuple[str, str]) -> bytes:
    return ("s" + key[0] + SEPARATOR + key[1]).encode()


def bucket_key(key: tuple[str, str, int]) -> bytes:
    return ("b" + key[0] + SEPARATOR + key[1] + SEPARATOR + str(key[2])).encode()


# --- the two hot records, one write per meter event or bucket: flat tuples of primitives ----------
# (pickling the nested dataclasses costs several Python calls per object; these are C-only)


def _reading_tuple(reading: MeterReading) -> tuple:
    return (reading.event_time_ms, reading.received_at_ms, reading.identifier, str(reading.value))


def _reading(values: tuple) -> MeterReading:
    return MeterReading(event_time_ms=values[0], received_at_ms=values[1], identifier=values[2],
                        value=Decimal(values[3]))


def dump_seen(by_customer: Mapping[str, SeenEvent]) -> bytes:
    return pickle.dumps(tuple((customer_id, seen.offset, seen.meter_id, _reading_tuple(seen.reading),
                               seen.canceled_offset) for customer_id, seen in by_customer.items()), protocol=5)


def load_seen(data: bytes) -> dict[str, SeenEvent]:
    return {customer_id: SeenEvent(offset=offset, meter_id=meter_id, reading=_reading(reading),
                                   canceled_offset=canceled_offset)
            for customer_id, offset, meter_id, reading, canceled_offset in pickle.loads(data)}


def dump_bucket(bucket: UsageBucket) -> bytes:
    usage = bucket.usage
    latest = None if usage.latest is None else _reading_tuple(usage.latest)
    survivors = tuple((start_ms, _reading_tuple(reading)) for start_ms, reading in usage.window_survivors.items())
    return pickle.dumps((bucket.applied_offset, str(usage.value_sum), usage.event_count, latest, survivors), protocol=5)


def load_bucket(data: bytes) -> UsageBucket:
    applied_offset, value_sum, event_count, latest, survivors = pickle.loads(data)
    usage = MeterUsage(value_sum=Decimal(value_sum), event_count=event_count,
                       latest=None if latest is None else _reading(latest),
                       window_survivors=MappingProxyType({start_ms: _reading(reading) for start_ms, reading in survivors}))
    return UsageBucket(usage=usage, applied_offset=applied_offset)

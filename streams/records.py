"""State records in Faust tables: pickled values behind per-batch write-back caches.

A batch reads each record at most once from its table and writes each touched record back once,
after the batch's output facts are acknowledged (see streams/worker.py). Values are pickled
(protocol 5): the records are our own frozen dataclasses, and the changelog is ours alone.
Customer records, the most numerous, are first flattened to primitives (see "customer records").
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import operator
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from decimal import Decimal
from types import MappingProxyType, MemberDescriptorType
from typing import Any, NamedTuple

from billing.alerts import AlertWatch
from billing.balances import LowBalanceWatch
from billing.customer import CustomerState, ItemsChange, SubscriptionState
from billing.facts import (
    AlertStatus,
    AlertType,
    AppliedCredit,
    BillingReason,
    CreditBalanceTransaction,
    CreditGrantCreated,
    CustomerCreated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    InvoiceFinalized,
    InvoiceLine,
    RecurringInterval,
    SubscriptionCreated,
    SubscriptionItem,
    TransactionReason,
    TransactionType,
)
from billing.grants import GrantState
from billing.meters import MeterReading, MeterUsage
from billing.periods import BillingPeriod
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
    import billing.alerts
    import billing.balances
    import billing.customer
    import billing.facts
    import billing.grants
    import billing.meters
    import billing.partition
    import billing.periods
    import billing.usage

    for module in (billing.facts, billing.meters, billing.usage, billing.grants, billing.balances, billing.alerts,
                   billing.periods, billing.customer, billing.partition):
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
                _register_fast_pickle(value)


_register_billing_records()


class UnknownStateFormat(ValueError):
    """A stored record starts with a byte that names no format this worker reads."""


# The first byte of a record says how it was written. Every pickle of protocol 2 or later (all we
# ever wrote before customer records were flattened) starts with the PROTO opcode.
PICKLE_FORMAT = 0x80
FLAT_CUSTOMER_FORMAT = 0x01  # a CustomerState flattened to primitives, then pickled (see below)


def dumps(value: Any) -> bytes:
    """A record's stored bytes: a CustomerState in the flat format, anything else pickled."""
    if type(value) is CustomerState:
        return _FLAT_CUSTOMER_PREFIX + pickle.dumps(_CUSTOMER.flatten(value), protocol=5)
    return pickle.dumps(value, protocol=5)


# Records in the pickle format name this module by its old name, streams.state (its _rebuild): the
# alias lets them load. Pickle looks a module up in sys.modules first, and loads() is only ever
# called with this module imported.
sys.modules.setdefault("streams.state", sys.modules[__name__])


def loads(data: bytes) -> Any:
    """The record of stored bytes in either format (records written before the flat format too)."""
    record_format = data[0] if data else None
    if record_format == FLAT_CUSTOMER_FORMAT:
        return _CUSTOMER.rebuild(pickle.loads(memoryview(data)[1:]))
    if record_format == PICKLE_FORMAT:
        return pickle.loads(data)
    raise UnknownStateFormat(f"state record starts with {bytes(data[:1])!r}, a format this worker does not read "
                             "(written by a newer worker?)")


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
        self.dirty: dict[Any, Any] = {}  # key -> record, changed in this batch

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
        self.cache[key] = self.dirty[key] = value

    def __delitem__(self, key: Any) -> None:  # records are forgotten by a purge only (see forget)
        raise NotImplementedError

    def forget(self, key: Any) -> None:
        """Drop a record the purge deletes from the store (streams/retention.py), which never
        forgets one changed in this batch."""
        if key in self.dirty:
            raise ValueError(f"{key!r} changed in this batch cannot be forgotten")
        self.cache.pop(key, None)

    def __iter__(self) -> Iterator[Any]:
        return iter(k for k, v in self.cache.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self.cache.values() if v is not None)

    def take_dirty(self) -> list[tuple[bytes, bytes]]:
        """The changed records as (key, pickled value). The decoded records stay cached for the next
        batches (bounded by `max_entries`), so hot customers are not unpickled per batch."""
        encode_key, dump, dirty = self.encode_key, self.dump, self.dirty
        records = [(encode_key(key), dump(value)) for key, value in dirty.items()]
        self.dirty = {}
        if len(self.cache) > self.max_entries:
            # Keep what was just taken: it reaches the store only after the broker acks this
            # batch's outputs, while the next batch is folded (streams/pipeline.py).
            self.cache = dirty
        return records


SEPARATOR = "\x1f"
PARTITION_KEY = b"\x00partition"


# --- packed changelog records ------------------------------------------------------------------------
# A seen-event record is written once per meter event and (but for a cancellation) never again, so
# log compaction has nothing to gain from it: the records of a batch go to the changelog as a few
# packs of up to PACK_BYTES, each under a key of its own (compaction must never drop a pack, which
# a later pack under the same key would do), one Kafka record instead of thousands. Recovery
# (streams/retention.restore_usage_changelog) puts each record of a pack in the store, as if it had come alone. In the
# local store the records stay one per key.

PACK_PREFIX = b"\x00pack:"
PACK_BYTES = 512 * 1024  # well under the broker's default message.max.bytes (1 MiB)


def packed(records: list[tuple[bytes, bytes]], key_prefix: bytes) -> list[tuple[bytes, bytes]]:
    """Changelog records holding `records` (key, value) in packs: (PACK_PREFIX + key_prefix + n, pack)."""
    return [(key, value) for key, value, _ in packs_of(records, key_prefix)]


def packs_of(records: list[tuple[bytes, bytes]], key_prefix: bytes) -> list[tuple[bytes, bytes, list[bytes]]]:
    """packed(), each pack with the keys of the records it holds."""
    packs, pack, size = [], [], 0
    for record in records:
        pack.append(record)
        size += len(record[0]) + len(record[1]) + 16
        if size >= PACK_BYTES:
            packs.append(pack)
            pack, size = [], 0
    if pack:
        packs.append(pack)
    return [(PACK_PREFIX + key_prefix + b":%d" % number, pickle.dumps(pack, protocol=5), [key for key, _ in pack])
            for number, pack in enumerate(packs)]


def unpacked(key: bytes, value: bytes | None) -> list[tuple[bytes, bytes | None]]:
    """The store records one changelog record stands for: a pack's records, or the record itself."""
    if value is not None and key.startswith(PACK_PREFIX):
        return pickle.loads(value)
    return [(key, value)]


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
    """A seen-event record. Nearly always one customer: then one flat tuple (what a record costs
    here is paid once per meter event); otherwise a tuple of nested tuples, one per customer."""
    if len(by_customer) == 1:  # spelled out, without a generator
        for customer_id, seen in by_customer.items():
            reading = seen.reading
            return pickle.dumps((customer_id, seen.offset, seen.meter_id, reading.event_time_ms,
                                 reading.received_at_ms, reading.identifier, str(reading.value),
                                 seen.canceled_offset), protocol=5)
    return pickle.dumps(tuple((customer_id, seen.offset, seen.meter_id, _reading_tuple(seen.reading),
                               seen.canceled_offset) for customer_id, seen in by_customer.items()), protocol=5)


def load_seen(data: bytes) -> dict[str, SeenEvent]:
    values = pickle.loads(data)
    if type(values[0]) is str:  # one customer, flat (a tuple of tuples otherwise, as written before too)
        customer_id, offset, meter_id, event_time_ms, received_at_ms, identifier, value, canceled_offset = values
        return {customer_id: SeenEvent(offset, meter_id,
                                       MeterReading(event_time_ms, received_at_ms, identifier, Decimal(value)),
                                       canceled_offset)}
    return {customer_id: SeenEvent(offset=offset, meter_id=meter_id, reading=_reading(reading),
                                   canceled_offset=canceled_offset)
            for customer_id, offset, meter_id, reading, canceled_offset in values}


def _usage_tuple(usage: MeterUsage) -> tuple:
    latest = None if usage.latest is None else _reading_tuple(usage.latest)
    survivors = tuple((start_ms, _reading_tuple(reading)) for start_ms, reading in usage.window_survivors.items())
    return (str(usage.value_sum), usage.event_count, latest, survivors)


def _usage(values: tuple | list) -> MeterUsage:
    value_sum, event_count, latest, survivors = values
    survivors = {start_ms: _reading(reading) for start_ms, reading in survivors}
    return MeterUsage(value_sum=Decimal(value_sum), event_count=event_count,
                      latest=None if latest is None else _reading(latest), window_survivors=MappingProxyType(survivors))


def dump_bucket(bucket: UsageBucket) -> bytes:
    readings = tuple(_reading_tuple(reading) for reading in bucket.readings)
    return pickle.dumps((bucket.applied_offset, *_usage_tuple(bucket.usage), readings), protocol=5)


def load_bucket(data: bytes) -> UsageBucket:
    applied_offset, *usage = pickle.loads(data)
    readings = usage.pop() if len(usage) == 5 else ()  # (a bucket stored before readings were kept has none)
    return UsageBucket(usage=_usage(usage), applied_offset=applied_offset,
                       readings=tuple(_reading(reading) for reading in readings))


# --- customer records: one pickle of primitives ----------------------------------------------------
# Pickled object by object, a customer record cost 25-45 us each way: pickle names each class and
# enum of the record in it, and looks each one up again (an import) to read it. Flattened to lists,
# dicts and tuples of str, int, bool and None, it pickles in C with no lookups, and the
# dataclasses are taken apart and rebuilt by straight-line functions compiled once per class (as
# schemas/codec.py does for Avro): loops over each object's fields cost about 1.6 times as much.
#
# Versioning. A dataclass is flattened to the list of its fields in declaration order, each field
# converted as its `_FlatRecord` says (a field not named there is kept as is: pickle stores it
# correctly, only slower). Fields are only ever appended, with a default (as for `_rebuild`): a
# shorter list, written before a field was, gets the field's default. Anything else (a field
# removed, reordered, or converted differently) needs a new FLAT_CUSTOMER_FORMAT byte, and loads()
# must keep reading the old one.

_FLAT_CUSTOMER_PREFIX = bytes([FLAT_CUSTOMER_FORMAT])


class _Conversion(NamedTuple):
    """A field's way to primitives and back, as Python source: each function takes the source of
    the value and returns that of the converted value. None is never converted (optional fields)."""

    to_primitive: Callable[[str], str]
    from_primitive: Callable[[str], str]
    names: Mapping[str, Any]  # what the source refers to


# str() round-trips a Decimal exactly, exponent included.
_DECIMAL = _Conversion(lambda value: f"str({value})", lambda value: f"_Decimal({value})", {"_Decimal": Decimal})
_READ_ONLY_MAP = _Conversion(lambda value: f"dict({value})", lambda value: f"_MappingProxyType({value})",
                             {"_MappingProxyType": MappingProxyType})
_METER_USAGE = _Conversion(lambda value: f"_usage_tuple({value})", lambda value: f"_usage({value})",
                           {"_usage_tuple": _usage_tuple, "_usage": _usage})


@functools.cache  # one lookup table per enum, however many fields use it
def _enum(enum_class: type) -> _Conversion:
    values, members = f"_{enum_class.__name__}_values", f"_{enum_class.__name__}_members"
    # Looked up by member, so that a value which is not a member fails when written, not when read.
    return _Conversion(lambda value: f"{values}[{value}]", lambda value: f"{members}[{value}]",
                       {values: {member: member.value for member in enum_class},
                        members: {member.value: member for member in enum_class}})


def _tuple_of(item: _Conversion) -> _Conversion:
    return _Conversion(lambda value: f"[{item.to_primitive('item')} for item in {value}]",
                       lambda value: f"tuple([{item.from_primitive('item')} for item in {value}])", item.names)


def _values_of(item: _Conversion) -> _Conversion:
    return _Conversion(lambda value: f"{{key: {item.to_primitive('entry')} for key, entry in {value}.items()}}",
                       lambda value: f"{{key: {item.from_primitive('entry')} for key, entry in {value}.items()}}",
                       item.names)


class _FlatRecord:
    """One slotted dataclass as the list of its field values in declaration order, the fields named
    in `conversions` converted to primitives: `flatten(record)` and `rebuild(values)`."""

    def __init__(self, cls: type, **conversions: _Conversion) -> None:
        names = _FIELD_NAMES[cls]
        unknown = set(conversions) - set(names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
        slots = [vars(cls).get(name) for name in names]
        if not all(isinstance(slot, MemberDescriptorType) for slot in slots):
            raise TypeError(f"{cls.__name__} is not a slotted dataclass")
        self.cls = cls
        self.field_count = len(names)
        self._appended_defaults = _APPENDED_DEFAULTS[cls]
        # The slots' own setters write a frozen dataclass's fields past its __setattr__ (which refuses).
        namespace: dict[str, Any] = {"_cls": cls, "_new": object.__new__, "_older": self._older,
                                     "_newer": self._newer, "_field_count": self.field_count}
        flattened, setters = [], []
        for index, (name, slot) in enumerate(zip(names, slots)):
            namespace[f"_set_{index}"] = slot.__set__
            conversion = conversions.get(name)
            if conversion is None:
                flattened.append(f"record.{name}")
                setters.append(f"    _set_{index}(record, values[{index}])")
            else:
                for reference, value in conversion.names.items():
                    if namespace.setdefault(reference, value) is not value:
                        raise TypeError(f"{cls.__name__}: two conversions name different things {reference}")
                flattened.append(f"None if (value := record.{name}) is None else {conversion.to_primitive('value')}")
                setters.append(f"    _set_{index}(record, None if (value := values[{index}]) is None "
                               f"else {conversion.from_primitive('value')})")
        self.source = "\n".join([
            "def flatten(record):",
            f"    return [{', '.join(flattened)}]",
            "def rebuild(values):",
            "    count = len(values)",
            "    if count != _field_count:",
            "        values = _older(values) if count < _field_count else _newer(values)",
            "    record = _new(_cls)",
            *setters,
            "    if count < _field_count:",
            "        _set_appended_defaults(record, count)",
            "    return record",
        ])
        namespace["_set_appended_defaults"] = self._set_appended_defaults
        exec(compile(self.source, f"<flat {cls.__name__}>", "exec"), namespace)  # noqa: S102 - our own generated source
        self.flatten: Callable[[Any], list] = namespace["flatten"]
        self.rebuild: Callable[[list], Any] = namespace["rebuild"]

    def conversion(self) -> _Conversion:
        flatten, rebuild = f"_flatten_{self.cls.__name__}", f"_rebuild_{self.cls.__name__}"
        return _Conversion(lambda value: f"{flatten}({value})", lambda value: f"{rebuild}({value})",
                           {flatten: self.flatten, rebuild: self.rebuild})

    def _older(self, values: list) -> list:
        # Written before fields were appended: None (never converted) stands in until their defaults are set.
        return values + [None] * (self.field_count - len(values))

    def _newer(self, values: list) -> list:
        raise UnknownStateFormat(f"a stored {self.cls.__name__} has {len(values)} fields, this worker knows "
                                 f"{self.field_count} (written by a newer worker?)")

    def _set_appended_defaults(self, record: Any, count: int) -> None:
        for name, default in self._appended_defaults[count:]:
            object.__setattr__(record, name, default())


_SUBSCRIPTION_ITEMS = _tuple_of(_FlatRecord(SubscriptionItem).conversion())
_CUSTOMER = _FlatRecord(
    CustomerState,
    created=_FlatRecord(CustomerCreated).conversion(),
    grants=_values_of(_FlatRecord(
        GrantState,
        grant=_FlatRecord(CreditGrantCreated,
                          scope=_FlatRecord(GrantScope, price_type=_enum(GrantPriceType)).conversion(),
                          category=_enum(GrantCategory)).conversion(),
        metadata=_READ_ONLY_MAP,
        transactions=_tuple_of(_FlatRecord(CreditBalanceTransaction, type=_enum(TransactionType),
                                           reason=_enum(TransactionReason)).conversion()),
    ).conversion()),
    subscriptions=_values_of(_FlatRecord(
        SubscriptionState,
        created=_FlatRecord(SubscriptionCreated, items=_SUBSCRIPTION_ITEMS).conversion(),
        items=_SUBSCRIPTION_ITEMS,
        interval=_enum(RecurringInterval),
        open_period=_FlatRecord(BillingPeriod).conversion(),
        final_reason=_enum(BillingReason),
        item_changes=_tuple_of(_FlatRecord(ItemsChange, items=_SUBSCRIPTION_ITEMS).conversion()),
    ).conversion()),
    period_usage=_values_of(_METER_USAGE),
    invoices=_values_of(_FlatRecord(
        InvoiceFinalized,
        billing_reason=_enum(BillingReason),
        lines=_tuple_of(_FlatRecord(InvoiceLine, quantity=_DECIMAL, unit_amount_decimal=_DECIMAL,
                                    credits=_tuple_of(_FlatRecord(AppliedCredit).conversion())).conversion()),
    ).conversion()),
    low_balance_watches=_values_of(_tuple_of(_FlatRecord(LowBalanceWatch).conversion())),
    billing_alerts=_values_of(_FlatRecord(AlertWatch, alert_type=_enum(AlertType), status=_enum(AlertStatus),
                                          usage=_METER_USAGE).conversion()),
)

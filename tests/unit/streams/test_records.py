"""State records: customer records in the flat format round-trip exactly, records of the pickle
format written before it still load, and records survive an upgrade that appends a field (the
worker reads what an older one left)."""

import base64
import dataclasses
import pickle
import zlib
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.alerts import AlertWatch
from billing.balances import LowBalanceWatch
from billing.catalog import Catalog, evolve_catalog
from billing.customer import CustomerState, FoldConfig, ItemsChange, SubscriptionState
from billing.facts import (
    AlertStatus,
    AlertType,
    BillingReason,
    CreditGrantCreated,
    CreditGrantUpdated,
    CustomerCreated,
    GrantCategory,
    GrantScope,
    InvoiceFinalized,
    InvoiceCreated,
    InvoiceItemCreated,
    InvoiceVoidRequested,
    RecurringInterval,
    SubscriptionCancelScheduled,
    SubscriptionCreated,
    SubscriptionItem,
)
from billing.grants import GrantState
from billing.meters import MeterReading, MeterUsage
from billing.periods import BillingPeriod
from billing.usage import UsageLedger
from streams import records
from streams import walkthrough as w
from billing.partition import PartitionProcessor, PartitionState
from tests.unit.schemas.fact_strategies import DECIMALS, INT64, TEXT, fact_strategy


class _OlderPartitionState:
    """Pickles the way an older worker wrote PartitionState: the same class, fewer leading fields."""

    def __init__(self, *values: object) -> None:
        self.values = values

    def __reduce__(self):
        return records._rebuild, (PartitionState, self.values)  # noqa: SLF001


def _pickled_as_older_version(values: tuple) -> bytes:
    return pickle.dumps(_OlderPartitionState(*values), protocol=5)


def test_a_record_round_trips():
    state = PartitionState(applied_offset=7, now_ms=1_000, clocks={"clock_1": 5}, durable_offset=6,
                           meter_alerts={"alrt_1": AlertWatch(alert_id="alrt_1", alert_type=AlertType.USAGE_THRESHOLD,
                                                              status=AlertStatus.ACTIVE, meter_id="mtr_1", gte=100,
                                                              currency=None, lte_minor=None, since_offset=3)})
    assert records.loads(records.dumps(state)) == state


def test_a_record_written_before_a_field_was_appended_gets_its_default():
    older = pickle.loads(_pickled_as_older_version((41, 1_000, {"clock_1": 5})))
    assert older == PartitionState(applied_offset=41, now_ms=1_000, clocks={"clock_1": 5}, durable_offset=-1)


def test_a_missing_field_without_default_is_a_clear_error():
    from billing.customer import Rejected

    with pytest.raises(ValueError, match="message"):
        records._rebuild(Rejected, ("a_code",))  # noqa: SLF001


# --- customer records --------------------------------------------------------------------------

CONFIG = FoldConfig(grace_period_ms=3_600_000, live_balance_interval_ms=0)


def _catalog() -> Catalog:
    catalog = Catalog()
    for fact in w.catalog_facts():
        catalog = evolve_catalog(catalog, fact)
    return catalog


def _promotional_grant(customer_id: str) -> CreditGrantCreated:
    return CreditGrantCreated(grant_id=f"credgr_promo_{customer_id}", customer_id=customer_id, amount_minor=250,
                              currency="usd", scope=GrantScope(price_ids=("price_out",)),
                              category=GrantCategory.PROMOTIONAL, priority=10, effective_at_ms=w.START_MS,
                              expires_at_ms=w.START_MS + 90 * 24 * w.HOUR_MS, created_at_ms=w.START_MS,
                              metadata={"campaign": "launch"}, test_clock_id="clock")


def _walkthrough_customers() -> dict[str, CustomerState]:
    """Customers as the worker stores them: the walkthrough's setup, a promotional grant, usage, one
    invoice finalized (credits applied), usage in the next period, low-balance watches; then one
    customer with the invoice voided and a cancellation scheduled, one with a grant updated."""
    customers: dict[str, CustomerState] = {}
    processor = PartitionProcessor(topic="customer-facts", partition=0, customers=customers, ledger=UsageLedger(),
                                   partition_state=PartitionState(), catalog=_catalog(), config=CONFIG)
    log: list = [w.clock_created("clock")]
    for customer_id in ("cus_1", "cus_2", "cus_3"):
        log += [*w.customer_setup(customer_id, "clock"), _promotional_grant(customer_id)]
    log.append(w.clock_advanced("clock", w.START_MS + w.HOUR_MS))
    for customer_id in ("cus_1", "cus_2", "cus_3"):
        log += [w.meter_event(customer_id, "2000", f"{customer_id}_e1", w.START_MS + w.HOUR_MS),
                w.meter_event(customer_id, "1000.5", f"{customer_id}_e2", w.START_MS + w.HOUR_MS, output=True)]
    next_period_ms = w.first_period_end_ms() + 2 * w.HOUR_MS
    log.append(w.clock_advanced("clock", next_period_ms))
    for customer_id in ("cus_1", "cus_2", "cus_3"):
        log.append(w.meter_event(customer_id, "12.25", f"{customer_id}_e3", next_period_ms))
    for offset, fact in enumerate(log):
        processor.process(offset, fact, b"")
    (invoice_id,) = customers["cus_2"].invoices
    later = [InvoiceVoidRequested(invoice_id=invoice_id, customer_id="cus_2", requested_at_ms=next_period_ms),
             SubscriptionCancelScheduled(subscription_id="sub_cus_2", customer_id="cus_2", cancel_at_period_end=True,
                                         scheduled_at_ms=next_period_ms),
             CreditGrantUpdated(grant_id="credgr_promo_cus_3", customer_id="cus_3", expires_at_ms=None,
                                metadata={"campaign": "extended"}, updated_at_ms=next_period_ms)]
    for offset, fact in enumerate(later, len(log)):
        processor.process(offset, fact, b"")
    processor.finish_batch()
    return customers


def test_walkthrough_customer_records_round_trip_exactly_in_the_flat_format():
    customers = _walkthrough_customers()
    assert customers["cus_2"].voided_invoice_ids and customers["cus_2"].subscriptions["sub_cus_2"].final_reason
    for state in customers.values():
        assert state.invoices and state.period_usage and state.low_balance_watches and len(state.grants) == 2
        data = records.dumps(state)
        assert data[0] == records.FLAT_CUSTOMER_FORMAT
        loaded = records.loads(data)
        assert loaded == state
        assert repr(loaded) == repr(state)  # the same types too: enum members, read-only maps


# hypothesis: every field drawn (facts and frozen state records from their type hints; the two
# mutable records, whose hints hypothesis cannot draw from, spelled out and checked complete).

_READINGS = st.builds(MeterReading, event_time_ms=INT64, received_at_ms=INT64, identifier=TEXT, value=DECIMALS)
_USAGES = st.builds(MeterUsage, value_sum=DECIMALS, event_count=INT64, latest=st.none() | _READINGS,
                    window_survivors=st.dictionaries(INT64, _READINGS, max_size=2).map(MappingProxyType))
_GRANTS = fact_strategy(GrantState).map(
    lambda grant: dataclasses.replace(grant, metadata=MappingProxyType(dict(grant.metadata))))


def _all_fields(cls: type, **strategies: st.SearchStrategy) -> st.SearchStrategy:
    assert set(strategies) == {field.name for field in dataclasses.fields(cls)}, f"draw every field of {cls.__name__}"
    return st.builds(cls, **strategies)


_SUBSCRIPTIONS = _all_fields(
    SubscriptionState, created=fact_strategy(SubscriptionCreated),
    items=st.lists(fact_strategy(SubscriptionItem), max_size=2).map(tuple),
    interval=st.sampled_from(RecurringInterval), interval_count=INT64, open_period=fact_strategy(BillingPeriod),
    final_period_end_ms=st.none() | INT64, final_reason=st.none() | st.sampled_from(BillingReason),
    ended=st.booleans(),
    item_changes=st.lists(st.builds(ItemsChange, effective_from_ms=INT64,
                                    items=st.lists(fact_strategy(SubscriptionItem), max_size=2).map(tuple)),
                          max_size=2).map(tuple),
    metadata=st.none() | st.dictionaries(TEXT, TEXT, max_size=2))
_CUSTOMERS = _all_fields(
    CustomerState, customer_id=TEXT, applied_offset=INT64, created=st.none() | fact_strategy(CustomerCreated),
    grants=st.dictionaries(TEXT, _GRANTS, max_size=2),
    subscriptions=st.dictionaries(TEXT, _SUBSCRIPTIONS, max_size=2),
    period_usage=st.dictionaries(st.tuples(TEXT, INT64, TEXT), _USAGES, max_size=3),
    invoices=st.dictionaries(TEXT, fact_strategy(InvoiceFinalized), max_size=2),
    voided_invoice_ids=st.sets(TEXT, max_size=2), live_pending=st.booleans(), last_received_ms=INT64,
    live_published_ms=st.none() | INT64,
    low_balance_watches=st.dictionaries(TEXT, st.lists(fact_strategy(LowBalanceWatch), max_size=2).map(tuple),
                                        max_size=2),
    large_amounts=st.booleans(), time_reached_ms=INT64,
    invoice_items=st.dictionaries(TEXT, fact_strategy(InvoiceItemCreated), max_size=2),
    drafts=st.dictionaries(TEXT, fact_strategy(InvoiceCreated), max_size=2),
    settled_invoices=st.dictionaries(TEXT, st.sampled_from(["paid", "uncollectible"]), max_size=2),
    billing_alerts=st.dictionaries(TEXT, _all_fields(
        AlertWatch, alert_id=TEXT, alert_type=st.sampled_from(AlertType), status=st.sampled_from(AlertStatus),
        meter_id=st.none() | TEXT, gte=st.none() | INT64, currency=st.none() | TEXT, lte_minor=st.none() | INT64,
        since_offset=INT64, usage=st.none() | _USAGES, crossed=st.booleans(), crossing_count=INT64), max_size=2),
    deleted_at_ms=st.none() | INT64,
    split_period_usage=st.sets(st.tuples(TEXT, INT64, TEXT), max_size=2))


@settings(max_examples=150, deadline=None)
@given(_CUSTOMERS)
def test_any_customer_record_round_trips_exactly_in_the_flat_format(state):
    data = records.dumps(state)
    assert data[0] == records.FLAT_CUSTOMER_FORMAT
    loaded = records.loads(data)
    assert loaded == state
    assert _repr_in_order(loaded) == _repr_in_order(state)  # the same types too


def _repr_in_order(state: CustomerState) -> str:
    # A set's order may change in a round trip (its repr with it); the rest must print the same.
    return repr(dataclasses.replace(state, voided_invoice_ids=sorted(state.voided_invoice_ids),
                                    split_period_usage=sorted(state.split_period_usage)))


@settings(max_examples=50, deadline=None)
@given(_CUSTOMERS)
def test_any_customer_record_in_the_pickle_format_still_loads(state):
    # What dumps wrote for a CustomerState before the flat format (the copyreg reducers remain).
    data = pickle.dumps(state, protocol=5)
    assert data[:2] == b"\x80\x05"
    assert records.loads(data) == state


# What the pickle format (streams/records.py before the flat format) wrote for the walkthrough's cus_1,
# zlib-compressed, base64: the same bytes as pickle.dumps(state, protocol=5) of that state today.
_CUS_1_AS_PICKLED_BEFORE = (
    "eNp9VUFv3EQU3m2S3bTJJk0KDRUSQkJCoUKR7V2vdyUO0KCEsN1VlIIq0YM1nhnvWOzalu1NG0REe0hKYSQOHbikXBEcOdAD"
    "F/4AvwBx4sSlf6BceDNj7zogdS9+O37vfd/73pvn+wvfPq1X1I830iyhaJxupRnKqOCLbkK9STAi4rHgl71gNArC4RaepFk0"
    "pongje3cvKX8H4tNvgBvXVP0XmYXeKOI8BHOUsFXC/dtQMmozLrJanzpQxqGR68fRCkNxQAyjCL8qfiqVvnxj8Oz6rHIxKk4"
    "EMeQfBknlAwTV2MAwkqBMExQKCEu7UpjSoddYHW+DnAkyNSbMvIaqw36f8/xuUlKhPLMo3EUy2g4WFEH+0mA6UdH6pDXxzSj"
    "kFCcAKm3ThU38Gzo9JB8GCVH0nE+RoH26llFMYNZVWxJ1zVgFb7ijlEcQx1unET3ZPSxClSkXtH0b6ARCoEGwKQgZxCFSu/X"
    "sJfdC10be5ZjeJjaXdPxLOIRTHzccQSrQZ0bUCZkWi0FF+XUsMqu4ep8reRyQFGqUPiqdkpdJXNe+2BajC4EyJpTPmarabRN"
    "C7XaNjBpUmp3LGIgVOLT4guEegV0dwYCUoyCHIS/GoQuxJu4azvEb2ObGM1OG7UJsQz5duT6qO17ju/QjtchhHQMYiNiYgsm"
    "6P6vT68+yemdil5lMNA2X88HCeQeR9NxYi/Jgbm6yfZhMnrP2Qb8uzbgF2PZfzeaSKp5w9/gSypW6oRGusuXCj3gWbm98311"
    "1my+iNEY5mEYguIjNAkxE2kxAYU7exum4hN2Jz35n5rtptnyTL/TtT3DaxHfsj3aaWGp5j7bAKoOe+eF/fCdloNMi1DTblsd"
    "x0OWZbcI8mcZttkO21WCWl1iY9qGSaKG5ZtmyzFoq2s4LxB0AiVeTCfeTMo5vnZr4qU4CWKp0fkbeaX8qnwlY6AjHS6XHfYy"
    "OpZTuJQGLkyDhuCLuitBKHrVh0XBh3wZnKBThVepd4XbqWAbpU6pZ9EK9kDegQOKJ0kC13EPhj05hP4C+sI4CjOmO12F1bNa"
    "rJ6YJkFEYPc0buiTfXUAMZD99y9AL3j++fMPT6p6dgaDRxoshXbHhQ+vjbNEVvNQzLaaWjVyq/Wl8XGKhnrJ1gnFwRh48fr7"
    "uSUZmtaWZRcMv+PLKgpuMYFcMg6wfnqm+agnTKVUyaVNwc7K4Zl4IOQ0FrZkuqsbsxceRqDoTgBjH3yWt20X2hafU1XVJNdi"
    "rslsl6ynpda6+AiPqMIphkvBLOUwN4NQT80H7G6p41OxgPa8ZRiG3iFnvNpUVj/eUGka7+lVojeoXOnvsjXYPXoQTsT0ovyy"
    "yYbs8/K0wJ4HCGlB2poJGFv2FEVb/a+vQOhvzGf7vefnU56K/j/X+3/N96+9mff6G/Hov/KDqEBz9l319IaXH8qb0d18399G"
    "GewK9aGEa1r5spffvhORamPrX23T/C4="
)


def test_a_customer_record_written_in_the_pickle_format_loads_as_the_same_state():
    data = zlib.decompress(base64.b64decode(_CUS_1_AS_PICKLED_BEFORE))
    assert data[:2] == b"\x80\x05"
    state = records.loads(data)
    assert isinstance(state, CustomerState)
    (invoice,) = state.invoices.values()
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (11003, 1250, 9753)
    # Written before CustomerState.time_reached_ms was appended: the record reads its default.
    assert state.time_reached_ms == 0
    folded_today = dataclasses.replace(_walkthrough_customers()["cus_1"], time_reached_ms=0)
    # Its invoice was stored before InvoiceFinalized.subscription_metadata (v3): it reads None.
    assert {invoice.subscription_metadata for invoice in state.invoices.values()} == {None}
    folded_today.invoices = {invoice_id: dataclasses.replace(invoice, subscription_metadata=None)
                             for invoice_id, invoice in folded_today.invoices.items()}
    assert state == folded_today
    assert repr(state) == repr(folded_today)  # the same types too
    assert records.loads(records.dumps(state)) == state


def test_a_record_of_an_unknown_format_is_a_clear_error():
    flat = records.dumps(CustomerState(customer_id="cus_1"))
    with pytest.raises(records.UnknownStateFormat, match=r"starts with b'\\x02'.*does not read"):
        records.loads(b"\x02" + flat[1:])
    with pytest.raises(records.UnknownStateFormat):
        records.loads(b"")


def _flat_record(values: list) -> bytes:
    return bytes([records.FLAT_CUSTOMER_FORMAT]) + pickle.dumps(values, protocol=5)


def test_a_flat_record_written_before_fields_were_appended_gets_their_defaults():
    state = _walkthrough_customers()["cus_1"]
    values = records._CUSTOMER.flatten(state)  # noqa: SLF001
    # As if CustomerState had ended at `invoices`, and GrantState at `voided_at_ms`.
    older = values[:7]
    older[3] = {grant_id: grant[:-1] for grant_id, grant in older[3].items()}
    loaded = records.loads(_flat_record(older))
    assert loaded.voided_invoice_ids == set() and loaded.low_balance_watches == {}
    assert (loaded.live_pending, loaded.last_received_ms, loaded.live_published_ms) == (False, 0, None)
    assert all(grant.expired_at_ms is None for grant in loaded.grants.values())
    assert loaded.grants == state.grants and loaded.invoices == state.invoices
    assert loaded.period_usage == state.period_usage and loaded.subscriptions == state.subscriptions


def test_a_flat_record_written_before_time_reached_ms_loads_and_its_grants_are_due_once_more():
    from billing.customer import advance_time, live_balance_facts, next_due_ms

    state = _walkthrough_customers()["cus_1"]
    assert state.time_reached_ms > 0 and not state.live_pending
    # As written before the field was appended (with the fields appended after it, too).
    appended_at = [f.name for f in dataclasses.fields(state)].index("time_reached_ms")
    older = records._CUSTOMER.flatten(state)[:appended_at]  # noqa: SLF001
    loaded = records.loads(_flat_record(older))
    assert loaded.time_reached_ms == 0
    assert loaded == dataclasses.replace(state, time_reached_ms=0)
    # Its grants (both effective at START_MS) are due once more: one pass republishes the live
    # balance as it stood, and they are not due again.
    assert next_due_ms(loaded, CONFIG) == w.START_MS
    assert advance_time(loaded, state.time_reached_ms, _catalog(), CONFIG) == []
    assert loaded.time_reached_ms == state.time_reached_ms and loaded.live_pending
    assert next_due_ms(loaded, CONFIG) == next_due_ms(state, CONFIG) > w.START_MS
    now_ms = state.time_reached_ms
    republished = live_balance_facts(loaded, _catalog(), now_ms, CONFIG, now_ms)
    state.live_pending = True
    assert republished == live_balance_facts(state, _catalog(), now_ms, CONFIG, now_ms)


def test_a_flat_record_with_more_fields_than_this_worker_knows_is_a_clear_error():
    values = records._CUSTOMER.flatten(CustomerState(customer_id="cus_1"))  # noqa: SLF001
    known = len(dataclasses.fields(CustomerState))
    expected = f"CustomerState has {known + 1} fields, this worker knows {known}"
    with pytest.raises(records.UnknownStateFormat, match=expected):
        records.loads(_flat_record([*values, "a field from the future"]))


def test_a_value_that_is_not_a_member_of_its_enum_fails_when_written_not_when_read():
    state = _walkthrough_customers()["cus_1"]
    state.subscriptions["sub_cus_1"].interval = "fortnight"
    with pytest.raises(KeyError, match="fortnight"):
        records.dumps(state)


def test_other_records_are_still_pickled():
    assert records.dumps(PartitionState())[:2] == b"\x80\x05"


# --- seen-event and bucket records ------------------------------------------------------------------

from decimal import Decimal  # noqa: E402

from billing.meters import MeterReading, MeterUsage  # noqa: E402
from billing.usage import SeenEvent, UsageBucket  # noqa: E402
from streams.records import dump_bucket, dump_seen, load_bucket, load_seen  # noqa: E402

READINGS = st.builds(MeterReading, event_time_ms=st.integers(0, 2**53), received_at_ms=st.integers(0, 2**53),
                     identifier=st.text(max_size=5),
                     value=st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda v: v.is_finite()))
SEEN = st.dictionaries(st.text(max_size=5), st.builds(SeenEvent, offset=st.integers(0, 2**40), meter_id=st.text(max_size=5),
                                                      reading=READINGS,
                                                      canceled_offset=st.one_of(st.none(), st.integers(0, 2**40))),
                       min_size=1, max_size=3)


@settings(max_examples=300)
@given(SEEN)
def test_seen_records_round_trip_exactly(by_customer):
    loaded = load_seen(dump_seen(by_customer))
    assert repr(loaded) == repr(by_customer)  # repr: Decimal('1.50') is not Decimal('1.5')


def test_seen_records_written_before_the_flat_format_still_load():
    import pickle

    # one customer as a tuple of one nested tuple: how every seen record was written before
    old = pickle.dumps((("cus_1", 7, "mtr_1", (60_000, 61_000, "ev_1", "2.50"), None),), protocol=5)
    assert load_seen(old) == {"cus_1": SeenEvent(7, "mtr_1", MeterReading(60_000, 61_000, "ev_1", Decimal("2.50")))}
    assert load_seen(dump_seen(load_seen(old))) == load_seen(old)


@settings(max_examples=300)
@given(st.builds(MeterUsage, value_sum=READINGS.map(lambda r: r.value), event_count=st.integers(0, 10**6),
                 latest=st.one_of(st.none(), READINGS),
                 window_survivors=st.dictionaries(st.integers(0, 2**40), READINGS, max_size=2).map(MappingProxyType)),
       st.integers(0, 2**40), st.lists(READINGS, max_size=3).map(tuple))
def test_bucket_records_round_trip_exactly(usage, offset, readings):
    bucket = UsageBucket(usage, offset, readings)
    assert repr(load_bucket(dump_bucket(bucket))) == repr(bucket)


def test_bucket_records_written_before_buckets_kept_their_readings_still_load():
    import pickle

    old = pickle.dumps((7, "2.5", 1, (60_000, 61_000, "ev_1", "2.5"), ()), protocol=5)
    assert load_bucket(old) == UsageBucket(
        MeterUsage(Decimal("2.5"), 1, MeterReading(60_000, 61_000, "ev_1", Decimal("2.5"))), 7, ())


# --- changelog packs ---------------------------------------------------------------------------------


from streams.records import PACK_BYTES, PACK_PREFIX, packed, unpacked  # noqa: E402

STORE_RECORDS = st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=3000)), max_size=600)


@settings(max_examples=100, deadline=None)
@given(STORE_RECORDS)
def test_packs_hold_every_record_in_order_under_keys_of_their_own(store_records):
    packs = packed(store_records, b"incarnation:7:3")
    assert [record for key, value in packs for record in unpacked(key, value)] == store_records
    assert len({key for key, _ in packs}) == len(packs)
    assert all(key.startswith(PACK_PREFIX + b"incarnation:7:3:") for key, _ in packs)
    assert all(len(value) < 2 * PACK_BYTES for _, value in packs)  # each stays far below a Kafka message's limit
    if sum(len(k) + len(v) for k, v in store_records) > 3 * PACK_BYTES:
        assert len(packs) > 1


def test_a_record_that_is_not_a_pack_stands_for_itself_tombstones_too():
    assert unpacked(b"b\x1fcus\x1fmtr\x1f0", b"value") == [(b"b\x1fcus\x1fmtr\x1f0", b"value")]
    assert unpacked(PACK_PREFIX + b"x:0", None) == [(PACK_PREFIX + b"x:0", None)]

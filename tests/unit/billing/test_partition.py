"""The partition fold without Kafka: the walkthrough, and replays that change nothing."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from billing.catalog import Catalog, evolve_catalog
from billing.customer import FoldConfig
from billing.facts import (
    CreditBalanceTransaction,
    DeadLetter,
    InvoiceFinalized,
    PeriodUsageUpdated,
    SubscriptionItem,
    SubscriptionItemsChanged,
    SubscriptionItemUpdated,
    UsageBucketUpdated,
)
from billing.usage import UsageLedger
from streams import records
from streams import walkthrough as w
from billing.partition import PartitionProcessor, PartitionState

CONFIG = FoldConfig(grace_period_ms=3_600_000, live_balance_interval_ms=0)


def catalog() -> Catalog:
    folded = Catalog()
    for fact in w.catalog_facts():
        folded = evolve_catalog(folded, fact)
    return folded


def processor(customers=None, ledger=None, state=None) -> PartitionProcessor:
    """A processor over existing state, its due-time index rebuilt from it (as after a restart)."""
    customers = {} if customers is None else customers
    return PartitionProcessor(topic="customer-facts", partition=0, customers=customers,
                              ledger=ledger or UsageLedger(), partition_state=state or PartitionState(),
                              catalog=catalog(), config=CONFIG, existing_customers=list(customers.values()))


def walkthrough_log() -> list:
    return [w.clock_created("clock"), *w.customer_setup("cus_1", "clock"),
            w.clock_advanced("clock", w.START_MS + w.HOUR_MS),
            w.meter_event("cus_1", "2000", "e1", w.START_MS + w.HOUR_MS),
            w.meter_event("cus_1", "2000", "e1", w.START_MS + w.HOUR_MS),  # a retry: counted once
            w.meter_event("cus_1", "1000", "e2", w.START_MS + w.HOUR_MS),
            w.clock_advanced("clock", w.first_period_end_ms() + w.HOUR_MS)]


def fold(proc: PartitionProcessor, log: list, start: int = 0) -> list:
    out = []
    for offset, fact in enumerate(log[start:], start):
        out.extend(proc.process(offset, fact, b""))
    return out + proc.finish_batch()


def test_the_walkthrough_invoice_is_9000_minus_1000_credits():
    out = fold(processor(), walkthrough_log())
    (invoice,) = [f for f in out if isinstance(f, InvoiceFinalized)]
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (9000, 1000, 8000)
    assert [t.reason for t in out if isinstance(t, CreditBalanceTransaction)] == ["credits_granted", "credits_applied"]


def money(facts: list) -> list:
    return [f for f in facts if isinstance(f, (InvoiceFinalized, CreditBalanceTransaction))]


def test_replaying_an_applied_prefix_after_a_crash_emits_only_what_was_not_applied():
    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:7])
    # A crash after the state of offsets 0..6 was written, before the source offset was committed:
    # a new processor over the same state re-reads from offset 3.
    again = fold(processor(customers, ledger, state), log, start=3)
    once = fold(processor(), log)
    assert money(again) == [f for f in money(once) if f.__class__ is InvoiceFinalized or f.reason == "credits_applied"]
    (invoice,) = [f for f in again if isinstance(f, InvoiceFinalized)]
    assert invoice.subtotal_minor == 9000  # the 3000 tokens counted exactly once


def test_folding_the_same_log_twice_over_the_same_state_changes_nothing():
    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log)
    snapshot = records.dumps((customers, dict(ledger.buckets), dict(ledger.seen), state))
    replayed = fold(processor(customers, ledger, state), log)
    assert [f for f in replayed if not isinstance(f, UsageBucketUpdated)] == []
    assert records.loads(records.dumps((customers, dict(ledger.buckets), dict(ledger.seen), state))) == \
        records.loads(snapshot)


def test_an_undecodable_record_becomes_a_dead_letter_with_the_codec_reason():
    from schemas.errors import TruncatedFact

    (letter,) = processor().process(7, None, b"\xc3", key="cus_1", error=TruncatedFact("1 byte"))
    assert isinstance(letter, DeadLetter)
    assert (letter.reason_code, letter.offset, letter.original_bytes) == ("truncated_fact", 7, b"\xc3")


def test_usage_records_lost_behind_a_newer_partition_record_come_back_when_re_read_from_the_durable_offset():
    from billing.usage import bucket_value

    log = walkthrough_log()
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:3])
    state.durable_offset = state.applied_offset  # offsets 0..2: every record acknowledged
    durable_usage = UsageLedger(dict(ledger.seen), dict(ledger.buckets))
    # Offsets 3..6 reach the customer and partition records but their usage records are lost.
    fold(processor(customers, ledger, state), log[:7], start=3)
    assert state.applied_offset == 6 and state.durable_offset == 2
    again = fold(processor(customers, durable_usage, state), log, start=state.durable_offset + 1)
    once_ledger = UsageLedger()
    once = fold(processor(ledger=once_ledger), log)
    values = {key: bucket_value(catalog().aggregator(key[1]), bucket) for key, bucket in durable_usage.buckets.items()}
    assert values == {key: bucket_value(catalog().aggregator(key[1]), bucket)
                      for key, bucket in once_ledger.buckets.items()}
    assert [f.subtotal_minor for f in again if isinstance(f, InvoiceFinalized)] == \
        [f.subtotal_minor for f in once if isinstance(f, InvoiceFinalized)] == [9000]


def test_facts_re_read_after_a_restart_are_judged_by_the_time_they_were_first_judged_by():
    """A crash after a batch that moved a test clock 40 days on: its customer records made it, its
    usage records did not. Re-read with the clock of that batch, the first event would be rejected
    as too old, its dedupe record never rebuilt, and its retry counted as a new event."""
    from billing.usage import bucket_value

    day_ms = 86_400_000
    log = [w.clock_created("clock"), *w.customer_setup("cus_1", "clock"),
           w.clock_advanced("clock", w.START_MS + w.HOUR_MS),
           w.meter_event("cus_1", "2000", "e1", w.START_MS + w.HOUR_MS),
           w.clock_advanced("clock", w.START_MS + 40 * day_ms),
           # a retry (received inside the 35-day dedupe window): counted once
           w.meter_event("cus_1", "2000", "e1", w.START_MS + 39 * day_ms, received_at_ms=w.START_MS + 34 * day_ms)]
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:5])
    state.mark_durable(4, state.now_ms, state.clocks)  # offsets 0..4: every record acknowledged
    durable_usage = UsageLedger(dict(ledger.seen), dict(ledger.buckets))
    fold(processor(customers, ledger, state), log, start=5)  # customers and time move on, usage is lost
    again = fold(processor(customers, durable_usage, state.resumed()), log, start=state.durable_offset + 1)
    once_ledger = UsageLedger()
    once = fold(processor(ledger=once_ledger), log)
    values = {key: bucket_value(catalog().aggregator(key[1]), bucket) for key, bucket in durable_usage.buckets.items()}
    assert values == {key: bucket_value(catalog().aggregator(key[1]), bucket)
                      for key, bucket in once_ledger.buckets.items()}
    assert len(values) == 1  # the retry opened no bucket of its own
    assert [f for f in again if isinstance(f, DeadLetter)] == [f for f in once if isinstance(f, DeadLetter)] == []


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def test_each_partition_folds_only_the_run_that_continues_from_its_next_offset():
    from streams.pipeline import unbroken_runs

    next_offsets = {0: 5}
    messages = [_Message(0, 3), _Message(0, 5), _Message(1, 10), _Message(0, 6), _Message(2, 7),
                _Message(2, 9), _Message(2, 10), _Message(1, 11), _Message(0, 8)]
    runs, gaps = unbroken_runs(messages, next_offsets, resume_offset={1: 10, 2: 7}.__getitem__)
    assert {p: [m.offset() for m in run] for p, run in runs.items()} == {0: [3, 5, 6], 1: [10, 11], 2: [7]}
    assert gaps == {0: (7, 8), 2: (8, 9)}
    assert next_offsets == {0: 7, 1: 12, 2: 8}
    runs, gaps = unbroken_runs([_Message(2, 8), _Message(2, 9)], next_offsets, resume_offset=lambda p: 0)
    assert ([m.offset() for m in runs[2]], gaps, next_offsets[2]) == ([8, 9], {}, 10)


# --- the fast path for the common meter event changes nothing ------------------------------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from billing.facts import (  # noqa: E402
    AlertCrossing,
    AlertStatus,
    AlertType,
    BillingAlertCreated,
    BillingAlertCrossed,
    BillingAlertStatusChanged,
    EventTimeWindow,
    MeterAggregation,
    MeterDeactivated,
    MeterDefined,
    MeterEventCanceled,
    PriceCreated,
    RecurringInterval,
    SubscriptionCanceled,
    TimeTicked,
    UsageType,
)
from billing.meter_events import MAX_EVENT_AGE_MS, MAX_EVENT_LEAD_MS  # noqa: E402
from tests.unit.meter_event_strategies import meter_events as shared_meter_events  # noqa: E402

PERIOD_END_MS = w.first_period_end_ms()
NOW_MS = PERIOD_END_MS - 2 * w.HOUR_MS
# The walkthrough's two token meters, plus a count meter with its own payload keys and a price, an
# hourly-windowed meter, a deactivated one and one whose event name is too long.
EXTRA_METERS = [
    MeterDefined(meter_id="mtr_img", display_name="Images", event_name="images", aggregation=MeterAggregation.COUNT,
                 customer_payload_key="account", value_payload_key="quantity", created_at_ms=w.START_MS),
    MeterDefined(meter_id="mtr_hourly", display_name="Hourly", event_name="hourly", aggregation=MeterAggregation.SUM,
                 event_time_window=EventTimeWindow.HOUR, created_at_ms=w.START_MS),
    MeterDefined(meter_id="mtr_old", display_name="Old", event_name="old", aggregation=MeterAggregation.SUM,
                 created_at_ms=w.START_MS),
    MeterDefined(meter_id="mtr_long", display_name="Long", event_name="n" * 101, aggregation=MeterAggregation.SUM,
                 created_at_ms=w.START_MS),
    PriceCreated(price_id="price_img", product_id="prod_in", currency="usd", unit_amount_decimal=Decimal("7"),
                 usage_type=UsageType.METERED, meter_id="mtr_img", recurring_interval=RecurringInterval.MONTH,
                 created_at_ms=w.START_MS),
    MeterDeactivated(meter_id="mtr_old", deactivated_at_ms=w.START_MS),
]


def mixed_catalog() -> Catalog:
    folded = catalog()
    for fact in EXTRA_METERS:
        folded = evolve_catalog(folded, fact)
    return folded


MIXED = mixed_catalog()
CUSTOMERS = st.sampled_from(["cus_a", "cus_a", "cus_b", "cus_b", "cus_c", "cus_d", ""])  # c: test clock; d: unknown
EVENT_NAMES = st.sampled_from(["hypernian_input_tokens", "hypernian_output_tokens", "images"] * 3
                              + ["hourly", "old", "n" * 101, "unknown"])
VALUES = st.one_of(st.from_regex(r"[0-9]{1,18}", fullmatch=True), st.from_regex(r"[0-9]{1,3}", fullmatch=True),
                   st.none(), st.sampled_from(["9" * 19, "-5", "1.50", "1e3", " 5", "", "abc", "١٢"]))
# Event times around "now" and around the first period's end (where cached period keys expire).
EVENT_TIMES_MS = st.sampled_from([NOW_MS, NOW_MS + 20_000, NOW_MS + 61_000, PERIOD_END_MS - 1, PERIOD_END_MS,
                                  PERIOD_END_MS + 30_000, w.START_MS - 1, w.START_MS])
LATENESS_MS = st.sampled_from([0, 0, 0, 5, -MAX_EVENT_LEAD_MS, -MAX_EVENT_LEAD_MS - 1, MAX_EVENT_AGE_MS,
                               MAX_EVENT_AGE_MS + 1])
IDENTIFIERS = st.sampled_from([f"e{n}" for n in range(12)] + ["i" * 101])


def meter_events():
    return shared_meter_events(MIXED, event_names=EVENT_NAMES, customer_ids=CUSTOMERS, values=VALUES,
                               event_times_ms=EVENT_TIMES_MS, lateness_ms=LATENESS_MS, identifiers=IDENTIFIERS,
                               unknown_meter_keys=("x", "y"), other_keys_one_in=6)


FACTS = st.one_of(
    *[meter_events()] * 6,
    st.builds(MeterEventCanceled, event_name=EVENT_NAMES, identifier=IDENTIFIERS,
              customer_id=st.one_of(st.none(), CUSTOMERS), received_at_ms=st.just(NOW_MS + 1)),
    st.builds(TimeTicked, now_ms=st.sampled_from([NOW_MS, NOW_MS + 60_000, PERIOD_END_MS + 1,
                                                  PERIOD_END_MS + 2 * w.HOUR_MS])),
    st.builds(lambda frozen_ms: w.clock_advanced("clock", frozen_ms), st.sampled_from([NOW_MS, PERIOD_END_MS + 2 * w.HOUR_MS])),
    st.builds(lambda customer_id, items, effective_from_ms: SubscriptionItemsChanged(
        subscription_id=f"sub_{customer_id}", customer_id=customer_id, changed_at_ms=NOW_MS,
        items=tuple(SubscriptionItem(item_id=f"si_{price}_{customer_id}", price_id=price) for price in items),
        effective_from_ms=effective_from_ms),
        st.sampled_from(["cus_a", "cus_b"]),
        st.lists(st.sampled_from(["price_in", "price_out", "price_img"]), min_size=1, max_size=3, unique=True),
        st.sampled_from([None, PERIOD_END_MS])),  # at once, or from the next period
    st.builds(lambda customer_id: SubscriptionCanceled(subscription_id=f"sub_{customer_id}", customer_id=customer_id,
                                                       invoice_now=False, canceled_at_ms=NOW_MS),
              st.sampled_from(["cus_a", "cus_b"])),
    # a usage alert on every customer of a meter (its events then take the general path), and its status
    st.builds(lambda meter_id, gte: BillingAlertCreated(
        alert_id=f"alrt_{meter_id}", customer_id="", alert_type=AlertType.USAGE_THRESHOLD, title="t",
        meter_id=meter_id, gte=gte, created_at_ms=NOW_MS),
        st.sampled_from(["mtr_in", "mtr_img"]), st.sampled_from([1, 5, 1000])),
    st.builds(lambda meter_id, status: BillingAlertStatusChanged(alert_id=f"alrt_{meter_id}", customer_id="",
                                                                 status=status, changed_at_ms=NOW_MS),
              st.sampled_from(["mtr_in", "mtr_img"]), st.sampled_from(list(AlertStatus))),
)
SETUP = [w.clock_created("clock", NOW_MS), TimeTicked(now_ms=NOW_MS),
         *w.customer_setup("cus_a", None, grant_minor=10**6), *w.customer_setup("cus_b", None, grant_minor=500),
         *w.customer_setup("cus_c", "clock", grant_minor=10**6)]


def fold_in_batches(proc: PartitionProcessor, log: list, batch_ends: set[int], start: int = 0) -> list:
    out = []
    for offset, fact in enumerate(log[start:], start):
        out.extend(proc.process(offset, fact, b"bytes"))
        if offset in batch_ends:
            out.extend(proc.finish_batch())
    return out + proc.finish_batch()


def run(log: list, batch_ends: set[int], reread_from: int, fast_path: bool):
    """Fold the log, then read it again from `reread_from` over the same state (a crash)."""
    customers, ledger, state = {}, UsageLedger(), PartitionState()

    def new_processor() -> PartitionProcessor:
        proc = PartitionProcessor(topic="customer-facts", partition=0, customers=customers, ledger=ledger,
                                  partition_state=state, catalog=MIXED, config=CONFIG,
                                  existing_customers=list(customers.values()))
        proc.fast_path = fast_path
        return proc

    out = fold_in_batches(new_processor(), log, batch_ends)
    again = fold_in_batches(new_processor(), log, batch_ends, start=reread_from)
    return (out, again, customers, {key: repr(bucket) for key, bucket in ledger.buckets.items()},
            {key: repr(seen) for key, seen in ledger.seen.items()}, state)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=st.lists(FACTS, min_size=1, max_size=40), batch_ends=st.sets(st.integers(0, 60), max_size=6),
       reread=st.integers(0, 60))
@example(facts=[w.meter_event("cus_a", "3", "e1", NOW_MS), w.meter_event("cus_a", "4", "e2", PERIOD_END_MS - 1),
                w.meter_event("cus_a", "5", "e3", PERIOD_END_MS), TimeTicked(now_ms=PERIOD_END_MS + 2 * w.HOUR_MS),
                w.meter_event("cus_a", "6", "e4", PERIOD_END_MS + 30_000,
                              received_at_ms=PERIOD_END_MS + 2 * w.HOUR_MS)],
         batch_ends=set(), reread=0)
# A customer's subscription changing between two of its events (the period keys a fast-path event
# found must not outlive it), and events at the bounds of accepted event times.
@example(facts=[w.meter_event("cus_a", "3", "e1", NOW_MS),
                SubscriptionItemsChanged(subscription_id="sub_cus_a", customer_id="cus_a", changed_at_ms=NOW_MS,
                                         items=(SubscriptionItem(item_id="si_img", price_id="price_img"),)),
                w.meter_event("cus_a", "4", "e2", NOW_MS),
                SubscriptionCanceled(subscription_id="sub_cus_b", customer_id="cus_b", invoice_now=False,
                                     canceled_at_ms=NOW_MS),
                w.meter_event("cus_b", "4", "e3", NOW_MS), w.meter_event("cus_b", "4", "e4", NOW_MS)],
         batch_ends=set(), reread=0)
@example(facts=[w.meter_event("cus_a", "1", "e1", NOW_MS, received_at_ms=NOW_MS - MAX_EVENT_LEAD_MS),
                w.meter_event("cus_a", "1", "e2", NOW_MS, received_at_ms=NOW_MS - MAX_EVENT_LEAD_MS - 1),
                w.meter_event("cus_a", "1", "e3", NOW_MS - MAX_EVENT_AGE_MS, received_at_ms=NOW_MS),
                w.meter_event("cus_a", "1", "e4", NOW_MS - MAX_EVENT_AGE_MS - 1, received_at_ms=NOW_MS)],
         batch_ends=set(), reread=0)
# A batch ends between two events of a customer: the second (period keys cached by the first) must
# still owe a live balance.
@example(facts=[w.meter_event("cus_a", "3", "e1", NOW_MS), w.meter_event("cus_a", "4", "e2", NOW_MS + 1000)],
         batch_ends={len(SETUP)}, reread=0)
# Digits that are not ASCII, and a customer with a record but never created (a grant came first).
@example(facts=[w.meter_event("cus_a", "١٢", "e1", NOW_MS), w.customer_setup("cus_d", None)[1],
                w.meter_event("cus_d", "1", "e2", NOW_MS)], batch_ends=set(), reread=0)
def test_the_fast_path_folds_every_log_exactly_as_the_general_path(facts, batch_ends, reread):
    log = [*SETUP, *facts]
    fast, general = run(log, batch_ends, reread % len(log), True), run(log, batch_ends, reread % len(log), False)
    assert fast == general


def test_the_fast_path_takes_the_common_event():
    proc = processor()
    proc.catalog = MIXED
    fold(proc, [*SETUP, w.meter_event("cus_a", "3", "e1", NOW_MS)])
    calls = []
    proc._meter_event_general = lambda *args: calls.append(args) or []
    proc.process(100, w.meter_event("cus_a", "4", "e2", NOW_MS), b"")
    proc.process(101, w.meter_event("cus_a", "4", "e2", NOW_MS), b"")  # a duplicate: the general path
    assert len(calls) == 1 and calls[0][0] == 101


def test_a_deleted_customers_later_events_are_refused_by_the_worker_and_the_replay_alike():
    """Worked by hand: 2000 before the deletion counts; the 500 after it is a dead letter
    (meter_event_customer_not_found), on the fast path and in the analysts' replay fold."""
    from billing.facts import CustomerDeleted
    from billing.replay_fold import PartitionFold

    at = w.START_MS + w.HOUR_MS
    log = [*w.customer_setup("cus_gone", None),
           w.meter_event("cus_gone", "2000", "before", at),
           CustomerDeleted(customer_id="cus_gone", deleted_at_ms=at + 1),
           w.meter_event("cus_gone", "500", "after", at + 2)]
    proc = processor()
    out = fold(proc, log)
    (letter,) = [f for f in out if isinstance(f, DeadLetter)]
    assert (letter.reason_code, letter.customer_id) == ("meter_event_customer_not_found", "cus_gone")
    engine = {key: bucket.usage.value_sum for key, bucket in proc.ledger.buckets.items()}
    assert list(engine.values()) == [2000]

    replay = PartitionFold(catalog())
    for offset, fact in enumerate(log):
        replay.apply(offset, fact)
    assert {key: usage.value_sum for key, usage in replay.usage_buckets()} == engine
    assert replay.rejected["meter_event_customer_not_found"] == 1


def _mid_minute_log(clock_id: str | None) -> list:
    """A subscription starting at 00:00:30 and two input-token events in its first minute: 3 at
    00:00:20 (before the period) and 5 at 00:00:40 (inside it)."""
    start_ms = w.START_MS + 30_000
    setup = w.customer_setup("cus_1", clock_id, start_ms=start_ms)
    events = [w.meter_event("cus_1", "3", "e1", w.START_MS + 20_000),
              w.meter_event("cus_1", "5", "e2", w.START_MS + 40_000)]
    return ([w.clock_created(clock_id, start_ms)] if clock_id else []) + setup + events


def _period_usage(out: list) -> dict:
    """The last period usage per (subscription, period start, meter), as the projection keeps it
    from UsageBucketUpdated.period_usage and from PeriodUsageUpdated."""
    kept = {}
    for f in out:
        if isinstance(f, UsageBucketUpdated):
            kept.update({(u.subscription_id, u.period_start_ms, f.meter_id): (u.value, u.event_count)
                         for u in f.period_usage})
        elif isinstance(f, PeriodUsageUpdated):
            kept[(f.subscription_id, f.period_start_ms, f.meter_id)] = (f.value, f.event_count)
    return kept


def test_a_period_starting_mid_minute_publishes_only_its_part_of_that_minute():
    # Hand-worked: the minute bucket 00:00 holds both events (3 + 5 = 8, two events); the period
    # that starts at 00:00:30 counts only the event at 00:00:40 (5, one event).
    for clock_id in ("clock", None):  # the general path (a test clock) and the fast path (the wall clock)
        proc = processor()
        out = fold(proc, _mid_minute_log(clock_id))
        assert _period_usage(out) == {("sub_cus_1", w.START_MS + 30_000, "mtr_in"): (Decimal("5"), 1)}, clock_id
        (bucket,) = [f for f in out if isinstance(f, UsageBucketUpdated)]
        assert (bucket.bucket_start_ms, bucket.value, bucket.event_count) == (w.START_MS, Decimal("8"), 2), clock_id


def test_the_period_usage_rides_on_the_bucket_record_not_a_fact_of_its_own():
    # One record per touched customer and meter: whoever sees the bucket sees its period's usage.
    for clock_id in ("clock", None):
        out = fold(processor(), _mid_minute_log(clock_id))
        assert [type(f) for f in out if isinstance(f, (PeriodUsageUpdated, UsageBucketUpdated))] == [
            UsageBucketUpdated], clock_id


def test_only_the_bucket_of_the_last_event_carries_the_period_usage():
    # Hand-worked: 3 at 00:00:40 and 4 at 00:02:10, one batch: buckets 00:00 (3) and 00:02 (4);
    # the period from 00:00:30 holds 7 in two events, carried by 00:02's record alone.
    log = _mid_minute_log(None)[:-2] + [w.meter_event("cus_1", "3", "e1", w.START_MS + 40_000),
                                        w.meter_event("cus_1", "4", "e2", w.START_MS + 130_000)]
    buckets = [f for f in fold(processor(), log) if isinstance(f, UsageBucketUpdated)]
    assert [(b.bucket_start_ms, b.value, [(u.value, u.event_count) for u in b.period_usage]) for b in buckets] == [
        (w.START_MS, Decimal("3"), []), (w.START_MS + 120_000, Decimal("4"), [(Decimal("7"), 2)])]


def test_a_reread_event_its_bucket_had_and_its_period_had_not_still_publishes_the_period_usage():
    # A crash left the buckets ahead of the customer's state: the bucket has the last event (5 at
    # 00:00:40), the customer's period has not. Re-reading it counts the 5 in the period and
    # republishes the bucket, unchanged (3 + 5), to carry it.
    log = _mid_minute_log("clock")
    last = len(log) - 1
    customers, ledger, state = {}, UsageLedger(), PartitionState()
    fold(processor(customers, ledger, state), log[:last])
    customers_before, state_before = records.loads(records.dumps((customers, state)))
    fold(processor(customers, ledger, state), log, start=last)
    out = fold(processor(customers_before, ledger, state_before), log, start=last)
    assert [(f.bucket_start_ms, f.value, f.event_count) for f in out if isinstance(f, UsageBucketUpdated)] == [
        (w.START_MS, Decimal("8"), 2)]
    assert _period_usage(out) == {("sub_cus_1", w.START_MS + 30_000, "mtr_in"): (Decimal("5"), 1)}


def test_usage_away_from_a_split_minute_publishes_no_period_usage():
    # The minute buckets tell the period's usage exactly there: nothing more to publish (the cost
    # of exactness is paid only in a period's first and last minute).
    for clock_id in ("clock", None):
        setup = _mid_minute_log(clock_id)[:-2]
        out = fold(processor(), setup + [w.meter_event("cus_1", "5", "e1", w.START_MS + 5 * 60_000)])
        (bucket,) = [f for f in out if isinstance(f, UsageBucketUpdated)]
        assert (bucket.value, bucket.period_usage) == (Decimal("5"), ()), clock_id
        assert not [f for f in out if isinstance(f, PeriodUsageUpdated)], clock_id


def test_an_event_before_the_period_in_its_split_minute_publishes_the_period_s_zero():
    # 3 at 00:00:20, before the period that starts at 00:00:30: its bucket (00:00, 3) would make
    # the preview bill 3; the period's own usage, 0, is published instead.
    for clock_id in ("clock", None):
        out = fold(processor(), _mid_minute_log(clock_id)[:-1])
        assert _period_usage(out) == {("sub_cus_1", w.START_MS + 30_000, "mtr_in"): (Decimal("0"), 0)}, clock_id


def test_an_event_in_a_period_s_last_split_minute_publishes_it_and_the_next_period():
    # The period ends at P1_END (00:00:30 a month on); 4 at P1_END - 10 s lands in the bucket
    # P1_END - 30 s, which the next period's first 30 seconds share: both periods are published,
    # the first with 4, the next with 0, and each again as its usage changes (2 at P1_END + 5 s).
    start_ms = w.START_MS + 30_000
    end_ms = w.first_period_end_ms(start_ms)
    log = _mid_minute_log("clock")[:-2] + [w.clock_advanced("clock", end_ms - 5_000),
                                          w.meter_event("cus_1", "4", "e1", end_ms - 10_000)]
    proc = processor()
    out = fold(proc, log)
    assert _period_usage(out) == {("sub_cus_1", start_ms, "mtr_in"): (Decimal("4"), 1),
                                  ("sub_cus_1", end_ms, "mtr_in"): (Decimal("0"), 0)}
    later = fold(proc, log + [w.clock_advanced("clock", end_ms + 10_000),
                              w.meter_event("cus_1", "2", "e2", end_ms + 5_000)], start=len(log))
    assert _period_usage(later) == {("sub_cus_1", start_ms, "mtr_in"): (Decimal("4"), 1),
                                    ("sub_cus_1", end_ms, "mtr_in"): (Decimal("2"), 1)}


def test_the_invoice_of_a_mid_minute_period_bills_what_its_period_usage_said():
    # 5 input tokens at 3 cents: 15 cents, covered by the 10 USD grant.
    log = _mid_minute_log("clock") + [w.clock_advanced("clock", w.first_period_end_ms(w.START_MS + 30_000)
                                                       + w.HOUR_MS)]
    (invoice,) = [f for f in fold(processor(), log) if isinstance(f, InvoiceFinalized)]
    assert (invoice.subtotal_minor, invoice.amount_due_minor) == (15, 0)


def test_a_subscription_invoice_carries_the_subscription_metadata_it_was_finalized_with():
    # Stripe's parent.subscription_details.metadata: a snapshot at finalization. Period 1 is
    # finalized after the update to "pro", period 2 after the one to "max".
    from billing.facts import SubscriptionUpdated

    def updated(plan: str, at_ms: int) -> SubscriptionUpdated:
        return SubscriptionUpdated(subscription_id="sub_cus_1", customer_id="cus_1", metadata={"plan": plan},
                                   updated_at_ms=at_ms)

    end_1, end_2 = w.first_period_end_ms(), w.first_period_end_ms(w.first_period_end_ms())
    log = [w.clock_created("clock"), *w.customer_setup("cus_1", "clock"), updated("pro", w.START_MS + w.HOUR_MS),
           w.clock_advanced("clock", end_1 + 2 * w.HOUR_MS), updated("max", end_1 + 3 * w.HOUR_MS),
           w.clock_advanced("clock", end_2 + 2 * w.HOUR_MS)]
    invoices = [f for f in fold(processor(), log) if isinstance(f, InvoiceFinalized)]
    assert [(i.period_start_ms, i.subscription_metadata) for i in invoices] == [
        (w.START_MS, {"plan": "pro"}), (end_1, {"plan": "max"})]


# --- subscription items changed from the next period (hand-worked; walkthrough prices: an input
# token 3 cents, an output token 5 cents) ---

P1_END_MS = w.first_period_end_ms()
P2_END_MS = w.first_period_end_ms(P1_END_MS)
P3_END_MS = w.first_period_end_ms(P2_END_MS)
IN_ITEM = SubscriptionItem(item_id="si_in_cus_1", price_id="price_in")
OUT_ITEM = SubscriptionItem(item_id="si_out_cus_1", price_id="price_out")


def _items_log(changes: list[tuple[int, tuple, int | None]]) -> list:
    """cus_1 on a test clock, subscribed to input tokens only, then `changes` (changed at, items,
    effective from) and 100 input and 200 output tokens two hours into each of the first three
    periods, in time order; the clock ends past period 3's end and grace."""
    created, grant, subscription = w.customer_setup("cus_1", "clock", grant_minor=1)
    timed = [(changed_at_ms, [SubscriptionItemsChanged(subscription_id="sub_cus_1", customer_id="cus_1", items=items,
                                                       changed_at_ms=changed_at_ms,
                                                       effective_from_ms=effective_from_ms)])
             for changed_at_ms, items, effective_from_ms in changes]
    timed += [(start_ms + 2 * w.HOUR_MS, [w.meter_event("cus_1", "100", f"in{start_ms}", start_ms + 2 * w.HOUR_MS),
                                          w.meter_event("cus_1", "200", f"out{start_ms}", start_ms + 2 * w.HOUR_MS,
                                                        output=True)])
              for start_ms in (w.START_MS, P1_END_MS, P2_END_MS)]
    log = [w.clock_created("clock"), created, grant, replace(subscription, items=(IN_ITEM,))]
    for at_ms, facts in sorted(timed, key=lambda entry: entry[0]):
        log += [w.clock_advanced("clock", at_ms), *facts]
    return log + [w.clock_advanced("clock", P3_END_MS + 2 * w.HOUR_MS)]


def _subtotals(log: list) -> list[tuple[int, dict]]:
    """Each finalized invoice's (period start, {price: quantity})."""
    return [(f.period_start_ms, {line.price_id: line.quantity for line in f.lines})
            for f in fold(processor(), log) if isinstance(f, InvoiceFinalized)]


def test_an_item_added_from_the_next_period_bills_from_that_period_on():
    log = _items_log([(w.START_MS + w.HOUR_MS, (IN_ITEM, OUT_ITEM), P1_END_MS)])
    assert _subtotals(log) == [
        (w.START_MS, {"price_in": Decimal(100)}),  # the output tokens of period 1 are not billed
        (P1_END_MS, {"price_in": Decimal(100), "price_out": Decimal(200)}),
        (P2_END_MS, {"price_in": Decimal(100), "price_out": Decimal(200)}),
    ]


def test_an_item_removed_from_the_next_period_bills_its_period_to_the_end():
    log = _items_log([(w.START_MS + w.HOUR_MS, (OUT_ITEM,), P1_END_MS)])
    assert _subtotals(log) == [
        (w.START_MS, {"price_in": Decimal(100)}),
        (P1_END_MS, {"price_out": Decimal(200)}),
        (P2_END_MS, {"price_out": Decimal(200)}),
    ]


def test_a_second_change_made_before_the_first_took_effect_keeps_the_first_for_its_period():
    # During period 1's grace (period 2 has begun, period 1 is not invoiced yet) a second change
    # for period 3: period 2 keeps the first change's items.
    log = _items_log([(w.START_MS + w.HOUR_MS, (IN_ITEM, OUT_ITEM), P1_END_MS),
                      (P1_END_MS + w.HOUR_MS // 2, (OUT_ITEM,), P2_END_MS)])
    assert _subtotals(log) == [
        (w.START_MS, {"price_in": Decimal(100)}),
        (P1_END_MS, {"price_in": Decimal(100), "price_out": Decimal(200)}),
        (P2_END_MS, {"price_out": Decimal(200)}),
    ]


def test_a_change_at_once_replaces_the_items_of_the_open_period():
    log = _items_log([(w.START_MS + w.HOUR_MS, (IN_ITEM, OUT_ITEM), None)])
    assert _subtotals(log)[0] == (w.START_MS, {"price_in": Decimal(100), "price_out": Decimal(200)})


def test_item_metadata_bills_nothing_and_its_change_at_once_leaves_a_waiting_item_change_waiting():
    # Items with metadata, and a metadata change (SubscriptionItemUpdated) after a change that waits
    # for period 2: the invoices are those of the same change without metadata.
    tagged = (replace(IN_ITEM, metadata={"team": "ml"}), replace(OUT_ITEM, metadata={"team": "ml"}))
    log = _items_log([(w.START_MS + w.HOUR_MS, tagged, P1_END_MS)])
    at = next(index for index, fact in enumerate(log) if isinstance(fact, SubscriptionItemsChanged)) + 1
    update = SubscriptionItemUpdated(subscription_id="sub_cus_1", customer_id="cus_1", item_id=IN_ITEM.item_id,
                                     metadata={"team": "search"}, updated_at_ms=w.START_MS + w.HOUR_MS)
    customers: dict = {}
    proc = processor(customers)
    fold(proc, log[:at])
    waiting = customers["cus_1"].subscriptions["sub_cus_1"].item_changes

    assert proc.process(at, update, b"") + proc.finish_batch() == []
    assert customers["cus_1"].subscriptions["sub_cus_1"].item_changes == waiting != ()
    assert _subtotals([*log[:at], update, *log[at:]]) == \
        _subtotals(_items_log([(w.START_MS + w.HOUR_MS, (IN_ITEM, OUT_ITEM), P1_END_MS)])) == [
        (w.START_MS, {"price_in": Decimal(100)}),
        (P1_END_MS, {"price_in": Decimal(100), "price_out": Decimal(200)}),
        (P2_END_MS, {"price_in": Decimal(100), "price_out": Decimal(200)}),
    ]


# --- a usage alert without a customer filter watches every customer of its meter (hand-worked) ---


EVERY_CUSTOMER_ALERT = BillingAlertCreated(alert_id="alrt_all", customer_id="", alert_type=AlertType.USAGE_THRESHOLD,
                                           title="100 input tokens", meter_id="mtr_in", gte=100,
                                           created_at_ms=w.START_MS)


def _status(status: AlertStatus) -> BillingAlertStatusChanged:
    return BillingAlertStatusChanged(alert_id="alrt_all", customer_id="", status=status, changed_at_ms=w.START_MS)


def _crossings_batch_by_batch(log: list) -> list[tuple[str, int]]:
    """(customer, value) of each crossing, folding each fact as a batch of its own."""
    proc, crossed = processor(), []
    for offset, fact in enumerate(log):
        out = proc.process(offset, fact, b"") + proc.finish_batch()
        crossed += [(f.customer_id, f.value) for f in out if isinstance(f, BillingAlertCrossed)
                    and f.crossing == AlertCrossing.TRIGGERED]
    return crossed


def _two_customers() -> list:
    return [*w.customer_setup("cus_a", None), *w.customer_setup("cus_b", None)]


def test_a_usage_alert_without_customer_triggers_once_for_each_customer_that_reaches_it():
    at = w.START_MS + w.HOUR_MS
    log = [*_two_customers(), w.meter_event("cus_a", "70", "a0", at),  # before the alert: not counted
           EVERY_CUSTOMER_ALERT,
           w.meter_event("cus_a", "50", "a1", at), w.meter_event("cus_b", "120", "b1", at),  # b: 120 >= 100
           w.meter_event("cus_a", "60", "a2", at),  # a: 50 + 60 = 110 >= 100
           w.meter_event("cus_b", "30", "b2", at), w.meter_event("cus_a", "1", "a3", at)]  # once each
    assert _crossings_batch_by_batch(log) == [("cus_b", 120), ("cus_a", 110)]


def test_an_inactive_alert_without_customer_triggers_only_once_active_again():
    at = w.START_MS + w.HOUR_MS
    log = [*_two_customers(), EVERY_CUSTOMER_ALERT, _status(AlertStatus.INACTIVE),
           w.meter_event("cus_a", "150", "a1", at),  # counted, not judged while inactive
           _status(AlertStatus.ACTIVE), w.meter_event("cus_a", "1", "a2", at)]
    assert _crossings_batch_by_batch(log) == [("cus_a", 151)]
    archived = [*_two_customers(), EVERY_CUSTOMER_ALERT, _status(AlertStatus.ARCHIVED),
                w.meter_event("cus_b", "500", "b1", at)]
    assert _crossings_batch_by_batch(archived) == []

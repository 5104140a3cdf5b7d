"""One customer's state and its fold: (state, fact, catalog, now) -> (state, facts emitted).

The stream workers call this for every fact in a customer's log, and the fault test's brute-force
reference calls the very same functions over the log read back from Kafka, so the engine and the
reference cannot disagree by construction of two implementations.

For speed the state is a mutable record that `evolve` updates in place and returns (the worker
writes it back to its table once per batch); treat a state passed to evolve as consumed.

Exactly once: `CustomerState.applied_offset` is the last position in the customer's log this
record has applied. The caller skips facts at or below it (`already_applied`), and the record
and its guard are written together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

from billing.alerts import AlertWatch, change_status, count_reading, crossings, define_alert, uncount_reading
from billing.balances import LowBalanceWatch, UninvoicedPeriod, detect_low_balances, live_balance
from billing.bounds import AmountCheck, check_amounts
from billing.errors import BillingError
from billing.facts import (
    BillingAlertCreated,
    BillingAlertStatusChanged,
    BillingReason,
    CreditGrantCreated,
    CreditGrantExpired,
    CreditGrantUpdated,
    CreditGrantVoided,
    CustomerCreated,
    CustomerDeleted,
    CustomerUpdated,
    InvoiceCreated,
    InvoiceFinalized,
    InvoiceFinalizeRequested,
    InvoiceItemCreated,
    InvoiceItemDeleted,
    InvoiceItemUpdated,
    InvoiceUpdated,
    InvoiceMarkedUncollectible,
    InvoiceMarkUncollectibleRequested,
    InvoicePaid,
    InvoicePayRequested,
    InvoiceVoidRequested,
    SubscriptionCancelScheduled,
    SubscriptionCanceled,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionItem,
    SubscriptionItemsChanged,
    SubscriptionItemUpdated,
    UsageType,
)
from billing.grants import GrantState, create_grant, expire_grant, update_grant, void_grant
from billing.invoices import compute_invoice, rate_lines, void_invoice
from billing.lifecycle import (
    MAX_INVOICE_ITEMS,
    MAX_PENDING_INVOICE_ITEMS,
    InvoiceAction,
    InvoiceItemNotPending,
    InvoiceNotFound,
    InvoiceStatus,
    TooManyInvoiceItems,
    check_action,
    finalize_one_off,
    finalized_status,
)
from billing.meters import MeterAggregator, MeterReading, MeterUsage
from billing.periods import (
    MILLISECONDS_PER_MINUTE,
    BillingPeriod,
    cancel_immediately,
    next_period,
    subscription_period_containing,
)
from billing import ids
from billing.catalog import Catalog
from billing.usage import ReadingsBetween, remove_reading


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemsChange:
    """Items a subscription bills from the first period starting at or after `effective_from_ms`."""

    effective_from_ms: int
    items: tuple[SubscriptionItem, ...]


@dataclass(slots=True)
class SubscriptionState:
    created: SubscriptionCreated
    items: tuple[SubscriptionItem, ...]
    interval: object  # RecurringInterval of its prices
    interval_count: int
    open_period: BillingPeriod  # the oldest period not yet invoiced
    final_period_end_ms: int | None = None  # canceled: the last period ends here (then no more)
    final_reason: BillingReason | None = None
    ended: bool = False
    # Item changes waiting for a later period, oldest first (each after the open period's start):
    # `items` stays the open period's, which is what the fast path and finalization read.
    item_changes: tuple[ItemsChange, ...] = ()
    # Its metadata as last updated (SubscriptionUpdated); None: as created. Nothing the money
    # depends on: kept for the snapshot its invoices carry (Stripe's subscription_details.metadata).
    metadata: Mapping[str, str] | None = None

    @property
    def subscription_id(self) -> str:
        return self.created.subscription_id

    @property
    def current_metadata(self) -> Mapping[str, str]:
        return self.created.metadata if self.metadata is None else self.metadata

    def items_at(self, period_start_ms: int) -> tuple[SubscriptionItem, ...]:
        """The items that bill the period starting at `period_start_ms`: a period keeps the items it
        started with."""
        items = self.items
        for change in self.item_changes:
            if change.effective_from_ms <= period_start_ms:
                items = change.items
        return items

    def change_items(self, items: tuple[SubscriptionItem, ...], effective_from_ms: int | None) -> None:
        """Bill `items` from the periods starting at or after `effective_from_ms` (None: at once,
        the open period included). A later change replaces the waiting ones from its instant on."""
        if effective_from_ms is None or effective_from_ms <= self.open_period.start_ms:
            self.items, self.item_changes = items, ()
        else:
            kept = tuple(change for change in self.item_changes if change.effective_from_ms < effective_from_ms)
            self.item_changes = (*kept, ItemsChange(effective_from_ms, items))

    def roll_items(self) -> None:
        """The open period moved on: the changes effective by its start become its items."""
        self.items = self.items_at(self.open_period.start_ms)
        self.item_changes = tuple(change for change in self.item_changes
                                  if change.effective_from_ms > self.open_period.start_ms)

    def current_end_ms(self) -> int:
        if self.final_period_end_ms is not None:
            return min(self.final_period_end_ms, self.open_period.end_ms)
        return self.open_period.end_ms


@dataclass(slots=True)
class CustomerState:
    """Everything the engine keeps about one customer, and the last log offset it applied."""

    customer_id: str
    applied_offset: int = -1
    created: CustomerCreated | None = None
    grants: dict[str, GrantState] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    # Usage of periods not yet invoiced: (subscription_id, period_start_ms, meter_id) -> usage.
    period_usage: dict[tuple[str, int, str], MeterUsage] = field(default_factory=dict)
    invoices: dict[str, InvoiceFinalized] = field(default_factory=dict)
    voided_invoice_ids: set[str] = field(default_factory=set)
    live_pending: bool = False
    last_received_ms: int = 0  # latest receipt time of a counted meter event (live balance as-of)
    live_published_ms: int | None = None
    low_balance_watches: dict[str, tuple[LowBalanceWatch, ...]] = field(default_factory=dict)
    # Its last exact amount check found a large line (billing/bounds.py): check every fact exactly.
    large_amounts: bool = False
    # The customer's time that advance_time has reached: a grant effective later is due at its
    # effective_at (the live balance counts it from then on). A record written before this field
    # reads 0: each of its grants is due once more, and the live balance is republished once.
    time_reached_ms: int = 0
    # One-off invoices (billing/lifecycle.py): items not on a finalized invoice yet (pending, or on
    # the draft their invoice_id names), drafts, and the finalized invoices paid or uncollectible.
    invoice_items: dict[str, InvoiceItemCreated] = field(default_factory=dict)
    drafts: dict[str, InvoiceCreated] = field(default_factory=dict)
    settled_invoices: dict[str, str] = field(default_factory=dict)  # invoice id -> paid | uncollectible
    # Billing alerts on this customer (billing/alerts.py), by alert id.
    billing_alerts: dict[str, AlertWatch] = field(default_factory=dict)
    deleted_at_ms: int | None = None  # deleted: its meter events are refused (as an unknown customer's)
    # Period-usage keys whose period shares a minute bucket with a neighbouring period's usage (see
    # mark_split_minutes): only there do minute buckets not tell the period's usage, so only their
    # usage is published (UsageBucketUpdated.period_usage) for the invoice preview.
    split_period_usage: set[tuple[str, int, str]] = field(default_factory=set)

    @property
    def test_clock_id(self) -> str | None:
        return self.created.test_clock_id if self.created else None

    @property
    def exists(self) -> bool:
        """Created and not deleted: its meter events count."""
        return self.created is not None and self.deleted_at_ms is None

    def already_applied(self, offset: int) -> bool:
        return offset <= self.applied_offset


def copy_state(state: CustomerState) -> CustomerState:
    """A copy to fold a fact on, so that a fact that cannot be folded leaves `state` as it was:
    the containers the fold changes are copied, their frozen values shared."""
    return replace(state, grants=dict(state.grants),
                   subscriptions={key: replace(sub) for key, sub in state.subscriptions.items()},
                   period_usage=dict(state.period_usage), invoices=dict(state.invoices),
                   voided_invoice_ids=set(state.voided_invoice_ids),
                   low_balance_watches=dict(state.low_balance_watches),
                   invoice_items=dict(state.invoice_items), drafts=dict(state.drafts),
                   settled_invoices=dict(state.settled_invoices), billing_alerts=dict(state.billing_alerts),
                   split_period_usage=set(state.split_period_usage))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A fact the rules refuse: the worker turns it into a DeadLetter with this code."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class FoldConfig:
    grace_period_ms: int
    live_balance_interval_ms: int = 250
    low_balance_thresholds_minor: tuple[int, ...] = (0,)


# --- subscriptions -------------------------------------------------------------------------------


def _subscription_interval(items: Iterable[SubscriptionItem], catalog: Catalog) -> tuple[object, int]:
    for item in items:
        price = catalog.prices.get(item.price_id)
        if price is not None:
            return price.recurring_interval, price.recurring_interval_count
    raise BillingError("subscription has no known price")


def _period_of(sub: SubscriptionState, instant_ms: int) -> BillingPeriod | None:
    if sub.open_period.start_ms <= instant_ms < sub.current_end_ms():
        return sub.open_period  # the common case, without calendar arithmetic
    start_ms = sub.created.created_at_ms
    if instant_ms < start_ms:
        return None
    if sub.final_period_end_ms is not None and instant_ms >= sub.final_period_end_ms:
        return None
    period = subscription_period_containing(
        start_ms, sub.created.billing_cycle_anchor_ms, sub.interval, sub.interval_count, instant_ms)
    if period.start_ms < sub.open_period.start_ms:
        return None  # already invoiced: late usage is not billed (replay still reports it)
    return period


def _bills_meter(items: tuple[SubscriptionItem, ...], meter_id: str, catalog: Catalog) -> bool:
    """Whether the items have a metered price of the meter. (Plain loops, no generators: this runs
    for every meter event.)"""
    prices = catalog.prices
    for item in items:
        price = prices.get(item.price_id)
        if price is not None and price.meter_id == meter_id and price.usage_type == UsageType.METERED:
            return True
    return False


def _subscriptions_billing(state: CustomerState, meter_id: str,
                           catalog: Catalog) -> list[tuple[SubscriptionState, bool]]:
    """The customer's subscriptions not ended that bill the meter in some period not invoiced yet,
    each with whether its open period does."""
    billing = []
    for sub in state.subscriptions.values():
        if sub.ended:
            continue
        open_bills = _bills_meter(sub.items, meter_id, catalog)
        if open_bills or any(_bills_meter(change.items, meter_id, catalog) for change in sub.item_changes):
            billing.append((sub, open_bills))
    return billing


def _open_periods(state: CustomerState, meter_id: str, event_time_ms: int,
                  catalog: Catalog) -> list[tuple[tuple[str, int, str], BillingPeriod]]:
    """Every not-yet-invoiced period that bills the meter at that event time (with the items it
    started with), with its period-usage key (subscription, period start, meter)."""
    periods = []
    for sub, _ in _subscriptions_billing(state, meter_id, catalog):
        period = _period_of(sub, event_time_ms)
        if period is not None and _bills_meter(sub.items_at(period.start_ms), meter_id, catalog):
            periods.append(((sub.created.subscription_id, period.start_ms, meter_id), period))
    return periods


def _open_period_usage_keys(state: CustomerState, meter_id: str, event_time_ms: int,
                            catalog: Catalog) -> list[tuple[str, int, str]]:
    """(subscription, period start, meter) of every not-yet-invoiced period that bills the meter
    at that event time."""
    return [key for key, _ in _open_periods(state, meter_id, event_time_ms, catalog)]


def open_period_usage_span(state: CustomerState, meter_id: str, event_time_ms: int,
                           catalog: Catalog) -> tuple[list[tuple[str, int, str]], int, int] | None:
    """The period-usage keys that count a reading of the meter at `event_time_ms` (as add_usage
    finds them) and the event-time span [start, end) holding it over which they stay the same:
    while the customer's subscriptions and the catalog do not change, a caller may reuse the keys
    for any event time in the span. None when the time lies outside some billing subscription's
    open period (the keys are then a calendar's work: ask add_usage)."""
    start_ms, end_ms = 0, 1 << 62
    billing = _subscriptions_billing(state, meter_id, catalog)
    for sub, _ in billing:
        period_start_ms, period_end_ms = sub.open_period.start_ms, sub.current_end_ms()
        if not period_start_ms <= event_time_ms < period_end_ms:
            return None
        start_ms, end_ms = max(start_ms, period_start_ms), min(end_ms, period_end_ms)
    # inside every open period: each key is its subscription's open period (as _period_of finds it),
    # billed by the open period's items
    return ([(sub.created.subscription_id, sub.open_period.start_ms, meter_id) for sub, open_bills in billing
             if open_bills], start_ms, end_ms)


def add_usage(state: CustomerState, meter_id: str, reading: MeterReading, aggregator: MeterAggregator,
              catalog: Catalog, keys: list[tuple[str, int, str]] | None = None) -> None:
    """Count one accepted, first-seen reading toward every open period that bills its meter
    (`keys`: those periods' keys, when the caller has them from open_period_usage_span)."""
    period_usage = state.period_usage
    if keys is None:  # (the fast path, which has the keys, leaves the split minutes to this path)
        keys = _open_period_usage_keys(state, meter_id, reading.event_time_ms, catalog)
        mark_split_minutes(state, meter_id, reading.event_time_ms, catalog)
    for key in keys:
        usage = period_usage.get(key)
        period_usage[key] = aggregator.add(aggregator.initialize() if usage is None else usage, reading)
    if state.billing_alerts:
        count_reading(state.billing_alerts, meter_id, reading, aggregator)
    state.live_pending = True


def _boundary_in_minute(sub: SubscriptionState, minute_ms: int) -> int | None:
    """The start of one of the subscription's periods inside the minute's bucket after its first
    instant (a period boundary that splits the bucket), if any: there is at most one, periods
    being a day long at least."""
    end_ms = minute_ms + MILLISECONDS_PER_MINUTE
    created_at_ms, open_start_ms, open_end_ms = sub.created.created_at_ms, sub.open_period.start_ms, sub.current_end_ms()
    for boundary_ms in (created_at_ms, open_start_ms, open_end_ms):
        if minute_ms < boundary_ms < end_ms:
            return boundary_ms
    if open_start_ms <= minute_ms and end_ms <= open_end_ms or end_ms <= created_at_ms:
        return None  # inside the open period, or before the subscription: no calendar needed
    period = subscription_period_containing(created_at_ms, sub.created.billing_cycle_anchor_ms, sub.interval,
                                            sub.interval_count, end_ms - 1)
    return period.start_ms if minute_ms < period.start_ms else None


def mark_split_minutes(state: CustomerState, meter_id: str, event_time_ms: int, catalog: Catalog) -> None:
    """A first-seen event of the meter in a minute that a period boundary splits (a subscription
    created at 12:00:30 starts its periods mid-minute): the minute bucket there holds usage of two
    periods and tells neither's, so both periods' usage of the meter is published exactly from now
    on, whichever of them the event counts in (or none: an event before the subscription)."""
    minute_ms = event_time_ms - event_time_ms % MILLISECONDS_PER_MINUTE
    for sub, _ in _subscriptions_billing(state, meter_id, catalog):
        boundary_ms = _boundary_in_minute(sub, minute_ms)
        if boundary_ms is None:
            continue
        for instant_ms in (boundary_ms - 1, boundary_ms):  # the periods either side, if not invoiced yet
            period = _period_of(sub, instant_ms)
            if period is not None:
                state.split_period_usage.add((sub.subscription_id, period.start_ms, meter_id))


def usage_within(state: CustomerState, meter_id: str, reading: MeterReading, aggregator: MeterAggregator,
                 catalog: Catalog, limit: Decimal) -> bool:
    """Whether, with `reading` counted, every open period's quantity of the meter stays within
    `limit` in size (billing/bounds.py: then no amount it forms needs an exact check)."""
    for key in _open_period_usage_keys(state, meter_id, reading.event_time_ms, catalog):
        usage = state.period_usage.get(key)
        counted = aggregator.add(aggregator.initialize() if usage is None else usage, reading)
        if abs(aggregator.result(counted)) > limit or abs(reading.value) > limit:
            return False
    return True


def remove_usage(state: CustomerState, meter_id: str, reading: MeterReading, aggregator: MeterAggregator,
                 catalog: Catalog, readings_between: ReadingsBetween, counted_at_offset: int) -> None:
    """Take a canceled reading (counted at log offset `counted_at_offset`) back out of the open
    periods and the usage alerts that counted it (`readings_between`: the usage ledger's readings
    left of this customer and meter, for meters that fold again)."""
    if state.billing_alerts:
        uncount_reading(state.billing_alerts, meter_id, reading, counted_at_offset, aggregator)
    for key, period in _open_periods(state, meter_id, reading.event_time_ms, catalog):
        if key in state.period_usage:
            state.period_usage[key] = remove_reading(aggregator, state.period_usage[key], reading, period.start_ms,
                                                     period.end_ms, readings_between)
    state.live_pending = True


def _period_usage_by_meter(state: CustomerState, sub: SubscriptionState, period_start_ms: int,
                           catalog: Catalog) -> dict[str, Decimal]:
    usage = {}
    for (sub_id, start_ms, meter_id), meter_usage in state.period_usage.items():
        if sub_id == sub.subscription_id and start_ms == period_start_ms:
            usage[meter_id] = catalog.aggregator(meter_id).result(meter_usage)
    return usage


# --- the fold ------------------------------------------------------------------------------------


def evolve(state: CustomerState, fact: object, catalog: Catalog, now_ms: int,
           config: FoldConfig) -> tuple[CustomerState, list]:
    """Apply one customer fact (not a meter event: see add_usage) and then let time reach `now_ms`.

    Returns the state and what to emit: derived facts and `Rejected` markers.
    """
    emitted: list = []
    try:
        # A create whose id exists already is a retried command (the API derives ids from the
        # Idempotency-Key): the first fact of an id wins, so a re-published create changes nothing.
        if isinstance(fact, CustomerCreated):
            if state.created is None:
                state.created = fact
        elif isinstance(fact, SubscriptionUpdated):
            sub = state.subscriptions.get(fact.subscription_id)
            if sub is not None:  # (its metadata: what its next invoices say it had)
                sub.metadata = fact.metadata
        elif isinstance(fact, (CustomerUpdated, SubscriptionItemUpdated, InvoiceUpdated, InvoiceItemUpdated)):
            pass  # names and metadata: nothing the money depends on (the projection keeps them)
        elif isinstance(fact, CustomerDeleted):
            if state.deleted_at_ms is None:
                state.deleted_at_ms = fact.deleted_at_ms
        elif isinstance(fact, SubscriptionCreated) and fact.subscription_id in state.subscriptions:
            pass
        elif isinstance(fact, CreditGrantCreated) and fact.grant_id in state.grants:
            pass
        elif isinstance(fact, SubscriptionCreated):
            interval, count = _subscription_interval(fact.items, catalog)
            open_period = subscription_period_containing(
                fact.created_at_ms, fact.billing_cycle_anchor_ms, interval, count, fact.created_at_ms)
            state.subscriptions[fact.subscription_id] = SubscriptionState(
                created=fact, items=tuple(fact.items), interval=interval, interval_count=count,
                open_period=open_period)
        elif isinstance(fact, SubscriptionItemsChanged):
            sub = state.subscriptions.get(fact.subscription_id)
            if sub is None:
                emitted.append(Rejected("resource_missing", f"no subscription {fact.subscription_id}"))
            else:
                sub.change_items(tuple(fact.items), fact.effective_from_ms)
        elif isinstance(fact, SubscriptionCancelScheduled):
            sub = state.subscriptions.get(fact.subscription_id)
            if sub is not None and fact.cancel_at_period_end:
                # The period the request falls in: the open period, or, when that one has ended and
                # waits out its grace period, the one that began at its end (Stripe's subscription
                # rolls over at period end; the invoice is only finalized later).
                sub.final_period_end_ms = sub.open_period.end_ms if fact.scheduled_at_ms < sub.open_period.end_ms \
                    else subscription_period_containing(sub.created.created_at_ms,
                                                        sub.created.billing_cycle_anchor_ms, sub.interval,
                                                        sub.interval_count, fact.scheduled_at_ms).end_ms
                sub.final_reason = BillingReason.SUBSCRIPTION_CANCEL
            elif sub is not None:
                sub.final_period_end_ms = None
                sub.final_reason = None
        elif isinstance(fact, SubscriptionCanceled):
            sub = state.subscriptions.get(fact.subscription_id)
            if sub is not None and not sub.ended:
                plan = cancel_immediately(sub.open_period, fact.canceled_at_ms, fact.invoice_now)
                if plan.period is None and fact.canceled_at_ms >= sub.open_period.end_ms:
                    # The open period ended before the cancel and waits out its grace period: it is
                    # still invoiced (its cycle invoice); only the usage since its end goes unbilled.
                    sub.final_period_end_ms = sub.open_period.end_ms
                    sub.final_reason = BillingReason.SUBSCRIPTION_CYCLE
                elif plan.period is None:
                    _end_subscription(state, sub)
                else:
                    sub.final_period_end_ms = plan.period.end_ms
                    sub.final_reason = plan.billing_reason
        elif isinstance(fact, CreditGrantCreated):
            grant, transactions = create_grant(fact)
            state.grants[fact.grant_id] = grant
            emitted.extend(transactions)
            state.live_pending = True
        elif isinstance(fact, CreditGrantUpdated):
            if fact.grant_id in state.grants:
                state.grants[fact.grant_id] = update_grant(state.grants[fact.grant_id], fact)
        elif isinstance(fact, CreditGrantExpired):
            grant, transactions = expire_grant(_grant(state, fact.grant_id), fact.expired_at_ms)
            state.grants[fact.grant_id] = grant
            emitted.extend(transactions)
            state.live_pending = True
        elif isinstance(fact, CreditGrantVoided):
            grant, transactions = void_grant(_grant(state, fact.grant_id), fact.voided_at_ms)
            state.grants[fact.grant_id] = grant
            emitted.extend(transactions)
            state.live_pending = True
        elif isinstance(fact, BillingAlertCreated):
            define_alert(state.billing_alerts, fact, state.applied_offset)
            state.live_pending = True  # judged at the next live balance (a balance already low triggers then)
        elif isinstance(fact, BillingAlertStatusChanged):
            change_status(state.billing_alerts, fact)
            state.live_pending = True
        elif isinstance(fact, INVOICE_LIFECYCLE_FACTS):
            emitted.extend(_invoice_lifecycle(state, fact))
        elif isinstance(fact, InvoiceVoidRequested):
            invoice = state.invoices.get(fact.invoice_id)
            if invoice is None:
                emitted.append(Rejected("resource_missing", f"no finalized invoice {fact.invoice_id}"))
            else:
                status = finalized_status(invoice, state.settled_invoices, state.voided_invoice_ids)
                if status != InvoiceStatus.VOID:  # (a second void is refused by void_invoice, as before)
                    check_action(fact.invoice_id, status, InvoiceAction.VOID)
                state.settled_invoices.pop(fact.invoice_id, None)
                voiding = void_invoice(invoice, state.grants, fact.requested_at_ms,
                                       frozenset(state.voided_invoice_ids))
                state.grants = dict(voiding.grants)
                state.voided_invoice_ids.add(fact.invoice_id)
                emitted.append(voiding.voided)
                emitted.extend(voiding.transactions)
                state.live_pending = True
    except BillingError as error:
        emitted.append(Rejected(error.code, str(error)))
    emitted.extend(advance_time(state, now_ms, catalog, config))
    return state, emitted


# --- one-off invoices and invoice status (rules in billing/lifecycle.py) --------------------------

INVOICE_LIFECYCLE_FACTS = (InvoiceItemCreated, InvoiceItemDeleted, InvoiceCreated, InvoiceFinalizeRequested,
                           InvoicePayRequested, InvoiceMarkUncollectibleRequested)


def _invoice_lifecycle(state: CustomerState, fact: object) -> list:
    """Fold one invoice-item or invoice command; raises BillingError when the rules refuse it.
    A create whose id exists already is a retried command and changes nothing."""
    if isinstance(fact, InvoiceItemCreated):
        if fact.invoice_item_id in state.invoice_items:
            return []
        on_invoice = [item for item in state.invoice_items.values() if item.invoice_id == fact.invoice_id]
        if fact.invoice_id is not None and fact.invoice_id not in state.drafts:
            raise InvoiceItemNotPending(f"invoice {fact.invoice_id} is not a draft: it takes no more items")
        if len(on_invoice) >= (MAX_INVOICE_ITEMS if fact.invoice_id else MAX_PENDING_INVOICE_ITEMS):
            raise TooManyInvoiceItems(f"customer {state.customer_id} has too many invoice items waiting")
        state.invoice_items[fact.invoice_item_id] = fact
        return []
    if isinstance(fact, InvoiceItemDeleted):
        if state.invoice_items.pop(fact.invoice_item_id, None) is None:
            raise InvoiceItemNotPending(f"invoice item {fact.invoice_item_id} is not pending or on a draft")
        return []
    if isinstance(fact, InvoiceCreated):
        if fact.invoice_id in state.drafts or fact.invoice_id in state.invoices:
            return []
        state.drafts[fact.invoice_id] = fact
        # The items the API chose that are still pending in the invoice's currency (the projector
        # applies the same condition in the same log order).
        for item_id in fact.invoice_item_ids[:MAX_INVOICE_ITEMS]:
            item = state.invoice_items.get(item_id)
            if item is not None and item.invoice_id is None and item.currency == fact.currency:
                state.invoice_items[item_id] = replace(item, invoice_id=fact.invoice_id)
        return []
    invoice = state.invoices.get(fact.invoice_id)  # type: ignore[attr-defined]
    if isinstance(fact, InvoiceFinalizeRequested):
        draft = state.drafts.get(fact.invoice_id)
        if draft is None:
            if invoice is None:
                raise InvoiceNotFound(f"no invoice {fact.invoice_id}")
            check_action(fact.invoice_id, _status(state, invoice), InvoiceAction.FINALIZE)
        items = [item for item in state.invoice_items.values() if item.invoice_id == fact.invoice_id]
        finalized = finalize_one_off(draft, items, fact.requested_at_ms)
        del state.drafts[fact.invoice_id]
        for item in items:
            del state.invoice_items[item.invoice_item_id]
        state.invoices[fact.invoice_id] = finalized
        return [finalized]
    if invoice is None:
        raise InvoiceNotFound(f"no finalized invoice {fact.invoice_id}")  # type: ignore[attr-defined]
    if isinstance(fact, InvoicePayRequested):
        check_action(fact.invoice_id, _status(state, invoice), InvoiceAction.PAY)
        state.settled_invoices[fact.invoice_id] = InvoiceStatus.PAID.value
        return [InvoicePaid(invoice_id=fact.invoice_id, customer_id=state.customer_id,
                            amount_paid_minor=invoice.amount_due_minor, paid_out_of_band=fact.paid_out_of_band,
                            paid_at_ms=fact.requested_at_ms)]
    assert isinstance(fact, InvoiceMarkUncollectibleRequested)
    check_action(fact.invoice_id, _status(state, invoice), InvoiceAction.MARK_UNCOLLECTIBLE)
    state.settled_invoices[fact.invoice_id] = InvoiceStatus.UNCOLLECTIBLE.value
    return [InvoiceMarkedUncollectible(invoice_id=fact.invoice_id, customer_id=state.customer_id,
                                       marked_uncollectible_at_ms=fact.requested_at_ms)]


def _status(state: CustomerState, invoice: InvoiceFinalized) -> InvoiceStatus:
    return finalized_status(invoice, state.settled_invoices, state.voided_invoice_ids)


def _grant(state: CustomerState, grant_id: str) -> GrantState:
    grant = state.grants.get(grant_id)
    if grant is None:
        raise BillingError(f"no credit grant {grant_id}")
    return grant


def _end_subscription(state: CustomerState, sub: SubscriptionState) -> None:
    sub.ended = True
    for key in [key for key in state.period_usage if key[0] == sub.subscription_id]:
        del state.period_usage[key]
    state.split_period_usage = {key for key in state.split_period_usage if key[0] != sub.subscription_id}


# --- time ----------------------------------------------------------------------------------------


# What falls due, in this order at one instant: a grant is expired at its expires_at
# (GrantState.is_expired_at), so an invoice finalized at that instant finds it expired.
_EXPIRY, _FINALIZATION, _TAKING_EFFECT = 0, 1, 2


def _due_items(state: CustomerState, config: FoldConfig) -> list[tuple[int, int, str]]:
    """(due_ms, kind, id): grant expiries, finalizations and grants taking effect."""
    due = []
    for sub in state.subscriptions.values():
        if not sub.ended:
            due.append((sub.current_end_ms() + config.grace_period_ms, _FINALIZATION, sub.subscription_id))
    for grant in state.grants.values():
        if grant.is_voided() or grant.expired_at_ms is not None:
            continue
        if grant.expires_at_ms is not None:
            due.append((grant.expires_at_ms, _EXPIRY, grant.grant_id))
        if grant.grant.effective_at_ms > state.time_reached_ms:
            due.append((grant.grant.effective_at_ms, _TAKING_EFFECT, grant.grant_id))
    return due


def next_due_ms(state: CustomerState, config: FoldConfig) -> int | None:
    """When time next changes this customer (an invoice to finalize, a grant to expire or to take
    effect), or None."""
    due = _due_items(state, config)
    return min(due)[0] if due else None


def advance_time(state: CustomerState, now_ms: int, catalog: Catalog, config: FoldConfig) -> list:
    """Everything due at or before `now_ms`, in due order: expired grants, finalized invoices, and
    grants taking effect (they change only the live balance)."""
    emitted: list = []
    while True:
        due = [item for item in _due_items(state, config) if item[0] <= now_ms]
        if not due:
            state.time_reached_ms = max(state.time_reached_ms, now_ms)
            return emitted
        due_ms, kind, item_id = min(due)
        if kind == _TAKING_EFFECT:
            state.time_reached_ms = due_ms
        elif kind == _EXPIRY:
            grant, transactions = expire_grant(state.grants[item_id], due_ms)
            state.grants[item_id] = grant
            emitted.extend(transactions)
        else:
            emitted.extend(_finalize(state, state.subscriptions[item_id], due_ms, catalog))
        state.live_pending = True


def _finalize(state: CustomerState, sub: SubscriptionState, due_ms: int, catalog: Catalog) -> list:
    period = BillingPeriod(sub.open_period.start_ms, sub.current_end_ms())
    final = sub.final_period_end_ms is not None and period.end_ms >= sub.final_period_end_ms
    computation = compute_invoice(
        customer_id=state.customer_id,
        subscription_id=sub.subscription_id,
        currency=sub.created.currency,
        period=period,
        billing_reason=(sub.final_reason or BillingReason.SUBSCRIPTION_CANCEL) if final
        else BillingReason.SUBSCRIPTION_CYCLE,
        finalized_at_ms=due_ms,
        items=sub.items,
        prices=catalog.prices,
        usage_by_meter_id=_period_usage_by_meter(state, sub, period.start_ms, catalog),
        grants=state.grants,
    )
    # The subscription's metadata as it is now: Stripe's snapshot in parent.subscription_details.
    invoice = replace(computation.invoice, subscription_metadata=dict(sub.current_metadata))
    state.grants = dict(computation.grants)
    state.invoices[invoice.invoice_id] = invoice
    for key in [key for key in state.period_usage if key[0] == sub.subscription_id and key[1] == period.start_ms]:
        del state.period_usage[key]
    if state.split_period_usage:
        state.split_period_usage = {key for key in state.split_period_usage
                                    if key[0] != sub.subscription_id or key[1] > period.start_ms}
    if final:
        _end_subscription(state, sub)
    else:
        sub.open_period = next_period(sub.open_period, sub.created.billing_cycle_anchor_ms, sub.interval,
                                      sub.interval_count)
        sub.roll_items()
    return [invoice, *computation.transactions]


# --- live balance --------------------------------------------------------------------------------


def live_balance_facts(state: CustomerState, catalog: Catalog, as_of_ms: int, config: FoldConfig,
                       arrival_ms: int, force: bool = False) -> list:
    """LiveBalanceChanged per currency (and LowBalanceAlerts) as of the customer's now `as_of_ms`,
    if a change is pending and at least the throttle interval of arrival time (`arrival_ms`: the
    wall clock as the log tells it, also for customers on a frozen test clock) has passed since
    the last one (or `force`)."""
    if not state.live_pending:
        return []
    if not force and state.live_published_ms is not None and \
            arrival_ms - state.live_published_ms < config.live_balance_interval_ms:
        return []
    emitted: list = []
    balances: dict[str, int] = {}
    for currency in _currencies(state):
        # Open periods without usage too: the grants counted are those that will pay this period.
        periods = _uninvoiced_periods(state, catalog, currency, with_open_periods=True)
        balance = live_balance(state.customer_id, currency, state.grants.values(), periods, catalog.prices, as_of_ms)
        emitted.append(balance)
        balances[currency] = balance.live_balance_minor
        watches = state.low_balance_watches.get(currency) or tuple(
            LowBalanceWatch(customer_id=state.customer_id, currency=currency, threshold_minor=threshold)
            for threshold in config.low_balance_thresholds_minor)
        watches, alerts = detect_low_balances(watches, balance.live_balance_minor, as_of_ms)
        state.low_balance_watches[currency] = watches
        emitted.extend(alerts)
    if state.billing_alerts:
        aggregators = {watch.meter_id: catalog.aggregator(watch.meter_id) for watch in state.billing_alerts.values()
                       if watch.meter_id in catalog.meters}
        emitted.extend(crossings(state.customer_id, state.billing_alerts, balances, aggregators, as_of_ms))
    state.live_pending = False
    state.live_published_ms = arrival_ms
    return emitted


def _currencies(state: CustomerState) -> list[str]:
    return sorted({grant.currency for grant in state.grants.values()}
                  | {sub.created.currency for sub in state.subscriptions.values() if not sub.ended})


def _uninvoiced_periods(state: CustomerState, catalog: Catalog, currency: str,
                        with_open_periods: bool = False) -> list[UninvoicedPeriod]:
    """The rated periods of `currency` with usage not invoiced yet (and every subscription's open
    period, usage or not, `with_open_periods`)."""
    periods = []
    for sub in state.subscriptions.values():
        if sub.ended or sub.created.currency != currency:
            continue
        starts = {key[1] for key in state.period_usage if key[0] == sub.subscription_id}
        if with_open_periods:
            starts.add(sub.open_period.start_ms)
        for start_ms in sorted(starts):
            period = subscription_period_containing(
                sub.created.created_at_ms, sub.created.billing_cycle_anchor_ms, sub.interval,
                sub.interval_count, start_ms)
            invoice_id = ids.invoice_id(sub.subscription_id, start_ms)
            lines = rate_lines(invoice_id, sub.items_at(start_ms), catalog.prices,
                               _period_usage_by_meter(state, sub, start_ms, catalog), currency)
            periods.append(UninvoicedPeriod(period_end_ms=period.end_ms, lines=lines))
    return periods


def check_customer_amounts(state: CustomerState, catalog: Catalog, as_of_ms: int) -> AmountCheck:
    """Whether every amount the engine forms from this state fits (billing/bounds.py): the lines of
    every period not invoiced yet (open periods included: licensed lines bill without usage), their
    invoices' subtotals, and the live balance per currency."""
    lines: list[int] = []
    sums: list[tuple[str, int]] = []
    for currency in _currencies(state):
        periods = _uninvoiced_periods(state, catalog, currency, with_open_periods=True)
        for period in periods:
            amounts = [line.amount_minor for line in period.lines]
            lines.extend(amounts)
            sums.append((f"an invoice subtotal in {currency}", sum(amounts)))
        balance = live_balance(state.customer_id, currency, state.grants.values(), periods, catalog.prices, as_of_ms)
        sums += [(f"available credits in {currency}", balance.available_credits_minor),
                 (f"accrued usage in {currency}", balance.accrued_usage_minor),
                 (f"the live balance in {currency}", balance.live_balance_minor)]
    return check_amounts(lines, sums)

"""Every drawdown fact as a frozen, typed class: the Python side of schemas/*.avsc.

schemas/FACTS.md is the contract; field names here are binding. Conventions:
- times are epoch milliseconds in `int` fields named `*_ms`;
- money is `int` minor units in `*_minor` fields plus a lowercase ISO 4217 `currency`;
- quantities, unit prices and meter values are `decimal.Decimal` (never float);
- optional fields are `T | None = None`; maps default to an empty dict (treat as immutable);
- arrays are tuples.

Pure: no Avro here. Conversion to and from the wire happens only in schemas/codec.py.
Classes are keyword-only so that adding an optional field later never shifts positions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

# Facts are values: frozen, slotted, keyword-only.
_fact = dataclass(frozen=True, slots=True, kw_only=True)


def _empty_map() -> dict[str, str]:
    return {}


# --- enums (values equal the Avro enum symbols) ------------------------------------------------


class MeterAggregation(enum.StrEnum):
    SUM = "sum"
    COUNT = "count"
    LAST = "last"


class EventTimeWindow(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"


class UsageType(enum.StrEnum):
    METERED = "metered"
    LICENSED = "licensed"


class RecurringInterval(enum.StrEnum):
    MONTH = "month"
    YEAR = "year"


class AlertType(enum.StrEnum):
    USAGE_THRESHOLD = "usage_threshold"
    CREDIT_BALANCE_THRESHOLD = "credit_balance_threshold"


class AlertStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    ARCHIVED = "archived"


class AlertCrossing(enum.StrEnum):
    TRIGGERED = "triggered"
    RECOVERED = "recovered"  # drawdown's own: a credit balance back above its threshold (re-armed)


class GrantPriceType(enum.StrEnum):
    METERED = "metered"


class GrantCategory(enum.StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class BillingReason(enum.StrEnum):
    SUBSCRIPTION_CYCLE = "subscription_cycle"
    SUBSCRIPTION_CANCEL = "subscription_cancel"
    MANUAL = "manual"  # a one-off invoice (Stripe's billing_reason for invoices created by hand)


class TransactionType(enum.StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"


class TransactionReason(enum.StrEnum):
    CREDITS_GRANTED = "credits_granted"
    CREDITS_APPLICATION_INVOICE_VOIDED = "credits_application_invoice_voided"
    CREDITS_APPLIED = "credits_applied"
    CREDITS_EXPIRED = "credits_expired"
    CREDITS_VOIDED = "credits_voided"


# --- nested types --------------------------------------------------------------------------------


@_fact
class SubscriptionItem:
    item_id: str
    price_id: str
    quantity: int = 1  # used by licensed prices only
    # (v3 of the facts holding items) Not billing: no invoice line copies it (Stripe's lines show
    # the subscription's metadata); its changes are SubscriptionItemUpdated, at once.
    metadata: Mapping[str, str] = field(default_factory=_empty_map)


@_fact
class GrantScope:
    """Which prices a grant pays for: exactly one of price_type and price_ids is used."""

    price_type: GrantPriceType | None = None
    price_ids: tuple[str, ...] = ()


@_fact
class AppliedCredit:
    credit_balance_transaction_id: str
    grant_id: str
    amount_minor: int


@_fact
class InvoiceLine:
    line_id: str
    subscription_item_id: str | None = None  # None on a one-off invoice's line
    price_id: str | None = None  # None for an invoice item given as an amount
    meter_id: str | None = None
    quantity: Decimal
    unit_amount_decimal: Decimal
    amount_minor: int
    credits: tuple[AppliedCredit, ...] = ()
    invoice_item_id: str | None = None  # the invoice item a one-off invoice's line bills
    description: str | None = None


# --- catalog facts -------------------------------------------------------------------------------


@_fact
class MeterDefined:
    meter_id: str
    display_name: str
    event_name: str
    aggregation: MeterAggregation
    customer_payload_key: str = "stripe_customer_id"
    value_payload_key: str = "value"
    event_time_window: EventTimeWindow | None = None  # None: raw, no event-time window
    created_at_ms: int


@_fact
class MeterDisplayNameChanged:
    meter_id: str
    display_name: str
    changed_at_ms: int


@_fact
class MeterDeactivated:
    meter_id: str
    deactivated_at_ms: int


@_fact
class MeterReactivated:
    meter_id: str
    reactivated_at_ms: int


@_fact
class ProductCreated:
    product_id: str
    name: str
    created_at_ms: int
    metadata: Mapping[str, str] = field(default_factory=_empty_map)


@_fact
class PriceCreated:
    price_id: str
    product_id: str
    currency: str
    unit_amount_decimal: Decimal  # minor units (cents) per unit, up to 12 decimal places
    usage_type: UsageType
    meter_id: str | None = None  # required when usage_type is metered
    recurring_interval: RecurringInterval
    recurring_interval_count: int = 1
    created_at_ms: int
    nickname: str | None = None  # (v2)
    lookup_key: str | None = None  # (v2)
    metadata: Mapping[str, str] = field(default_factory=_empty_map)  # (v2)


@_fact
class ProductUpdated:
    """A product's name, active flag, description and metadata (each the full new value)."""
    product_id: str
    name: str
    active: bool = True
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class PriceUpdated:
    """A price's active flag, nickname, lookup_key and metadata (each the full new value). An
    inactive price takes no new subscriptions; the ones it has go on billing, as Stripe's do."""
    price_id: str
    active: bool = True
    nickname: str | None = None
    lookup_key: str | None = None
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


# --- customer facts ------------------------------------------------------------------------------


@_fact
class CustomerCreated:
    customer_id: str
    name: str | None = None
    email: str | None = None
    test_clock_id: str | None = None
    created_at_ms: int
    metadata: Mapping[str, str] = field(default_factory=_empty_map)


@_fact
class CustomerUpdated:
    """New name, email and metadata of a customer (each the full new value; null clears it)."""
    customer_id: str
    name: str | None = None
    email: str | None = None
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class CustomerDeleted:
    """A customer was deleted (DELETE /v1/customers/{id}, after its subscriptions were canceled):
    its meter events are refused from here on; what it was billed stays."""
    customer_id: str
    deleted_at_ms: int


@_fact
class SubscriptionCreated:
    subscription_id: str
    customer_id: str
    items: tuple[SubscriptionItem, ...]
    currency: str
    billing_cycle_anchor_ms: int
    created_at_ms: int
    test_clock_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=_empty_map)  # (v2)


@_fact
class SubscriptionUpdated:
    """A subscription's metadata (the full new map): nothing the money depends on."""
    subscription_id: str
    customer_id: str
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class SubscriptionItemsChanged:
    subscription_id: str
    customer_id: str
    items: tuple[SubscriptionItem, ...]
    changed_at_ms: int
    # The items bill the periods starting at or after this (the API: the current period's end, so
    # a change takes effect from the next period); None: at once, the open period included (v1).
    effective_from_ms: int | None = None


@_fact
class SubscriptionItemUpdated:
    """A subscription item's metadata (the full new map): nothing the money depends on, so at once
    (unlike SubscriptionItemsChanged), for the item in every period that has it."""
    subscription_id: str
    customer_id: str
    item_id: str
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class SubscriptionCancelScheduled:
    subscription_id: str
    customer_id: str
    cancel_at_period_end: bool
    scheduled_at_ms: int


@_fact
class SubscriptionCanceled:
    subscription_id: str
    customer_id: str
    invoice_now: bool
    canceled_at_ms: int


@_fact
class CreditGrantCreated:
    grant_id: str
    customer_id: str
    name: str | None = None
    amount_minor: int  # > 0
    currency: str
    scope: GrantScope
    category: GrantCategory
    priority: int = 50  # 0..100
    effective_at_ms: int
    expires_at_ms: int | None = None
    created_at_ms: int
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    test_clock_id: str | None = None


@_fact
class CreditGrantUpdated:
    grant_id: str
    customer_id: str
    expires_at_ms: int | None = None  # the new value; None = never expires
    metadata: Mapping[str, str] = field(default_factory=_empty_map)  # the new full map
    updated_at_ms: int


@_fact
class CreditGrantExpired:
    grant_id: str
    customer_id: str
    expired_at_ms: int


@_fact
class CreditGrantVoided:
    grant_id: str
    customer_id: str
    voided_at_ms: int


@_fact
class BillingAlertCreated:
    """A billing alert on one customer: usage_threshold (meter_id, gte) or credit_balance_threshold
    (currency, lte_minor: the live balance at or below it triggers). A usage alert without a
    customer filter has customer_id "" and goes to every partition (as its status changes do)."""
    alert_id: str
    customer_id: str
    alert_type: AlertType
    title: str
    meter_id: str | None = None
    gte: int | None = None
    currency: str | None = None
    lte_minor: int | None = None
    created_at_ms: int


@_fact
class BillingAlertStatusChanged:
    alert_id: str
    customer_id: str
    status: AlertStatus
    changed_at_ms: int


@_fact
class InvoiceVoidRequested:
    invoice_id: str
    customer_id: str
    requested_at_ms: int


@_fact
class InvoiceItemCreated:
    """A one-off charge for the customer's next one-off invoice (or the draft `invoice_id`)."""

    invoice_item_id: str
    customer_id: str
    currency: str
    quantity: Decimal
    unit_amount_decimal: Decimal  # minor units per unit
    amount_minor: int  # quantity x unit_amount_decimal rounded half up, >= 0
    price_id: str | None = None
    description: str | None = None
    invoice_id: str | None = None  # attach to this draft; None: pending until an invoice includes it
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    created_at_ms: int


@_fact
class InvoiceItemDeleted:
    invoice_item_id: str
    customer_id: str
    deleted_at_ms: int


@_fact
class InvoiceItemUpdated:
    """An invoice item's metadata (the full new map): nothing the money depends on."""

    invoice_item_id: str
    customer_id: str
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class InvoiceUpdated:
    """An invoice's metadata (the full new map; a subscription's invoice too): nothing the money
    depends on."""

    invoice_id: str
    customer_id: str
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    updated_at_ms: int


@_fact
class InvoiceCreated:
    """A draft one-off invoice, holding the pending items the API chose (`invoice_item_ids`)."""

    invoice_id: str
    customer_id: str
    currency: str
    auto_advance: bool = False
    invoice_item_ids: tuple[str, ...] = ()
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=_empty_map)
    created_at_ms: int


@_fact
class InvoiceFinalizeRequested:
    invoice_id: str
    customer_id: str
    requested_at_ms: int


@_fact
class InvoicePayRequested:
    invoice_id: str
    customer_id: str
    paid_out_of_band: bool = True
    requested_at_ms: int


@_fact
class InvoiceMarkUncollectibleRequested:
    invoice_id: str
    customer_id: str
    requested_at_ms: int


# The one fact without slots (still frozen and keyword-only): the codec builds a decoded
# MeterEventRecorded by adopting fastavro's record dict as its __dict__ (~0.17 us) instead of
# filling six slots (~0.32 us) or calling the frozen __init__ (~0.78 us). Measured, that is the
# difference between missing and meeting decode >= 0.8 of bare fastavro for the hot fact
# (benchmarks/codec_bench.py).
@dataclass(frozen=True, kw_only=True)
class MeterEventRecorded:
    """One meter event as received: the hot fact (one per usage record)."""

    customer_id: str  # the Kafka key; "" when the producer could not find one
    event_name: str
    identifier: str
    payload: Mapping[str, str] = field(default_factory=_empty_map)  # exactly as received
    event_time_ms: int
    received_at_ms: int


@_fact
class MeterEventCanceled:
    event_name: str
    identifier: str
    customer_id: str | None = None  # None: unknown, written to every partition
    received_at_ms: int


# --- time facts (written to every partition of drawdown.customer-facts) -------------------------


@_fact
class TimeTicked:
    now_ms: int


@_fact
class TestClockCreated:
    __test__ = False  # not a pytest test class, despite the name

    test_clock_id: str
    name: str | None = None
    frozen_time_ms: int
    created_at_ms: int


@_fact
class TestClockAdvanced:
    __test__ = False

    test_clock_id: str
    frozen_time_ms: int
    advanced_at_ms: int


@_fact
class TestClockDeleted:
    __test__ = False

    test_clock_id: str
    deleted_at_ms: int


# --- derived facts -------------------------------------------------------------------------------


@_fact
class InvoiceFinalized:
    invoice_id: str
    customer_id: str
    subscription_id: str | None = None  # None on a one-off invoice (billing_reason manual)
    currency: str
    period_start_ms: int
    period_end_ms: int
    billing_reason: BillingReason
    finalized_at_ms: int
    lines: tuple[InvoiceLine, ...]
    subtotal_minor: int
    total_credits_minor: int
    amount_due_minor: int
    # v3: the subscription's metadata when the invoice was finalized (Stripe's snapshot in
    # parent.subscription_details.metadata); None on one-off invoices and on facts before v3.
    subscription_metadata: Mapping[str, str] | None = None


@_fact
class InvoiceVoided:
    invoice_id: str
    customer_id: str
    voided_at_ms: int


@_fact
class InvoicePaid:
    invoice_id: str
    customer_id: str
    amount_paid_minor: int
    paid_out_of_band: bool
    paid_at_ms: int


@_fact
class InvoiceMarkedUncollectible:
    invoice_id: str
    customer_id: str
    marked_uncollectible_at_ms: int


@_fact
class CreditBalanceTransaction:
    transaction_id: str
    customer_id: str
    grant_id: str
    currency: str
    amount_minor: int  # > 0; the direction is `type`
    type: TransactionType
    reason: TransactionReason
    invoice_id: str | None = None
    invoice_line_id: str | None = None
    effective_at_ms: int


@_fact
class PeriodUsage:
    """A subscription period's usage of one meter, counted by each event's exact time: the quantity
    its invoice would rate now. Minute buckets cannot tell it where a period starts mid-minute (a
    subscription created at 12:00:30 bills the events from 12:00:30 on, half of the minute bucket
    12:00); the invoice preview reads this instead."""

    subscription_id: str
    period_start_ms: int
    value: Decimal  # the meter's aggregate over the period's events so far (the invoice line's quantity)
    event_count: int


@_fact
class UsageBucketUpdated:
    customer_id: str
    meter_id: str
    bucket_start_ms: int  # minute-aligned
    value: Decimal  # the bucket's current aggregate after this update
    event_count: int
    updated_at_ms: int
    # `last` and hour/day-windowed meters: the reading `value` comes from (billing/usage_windows.py
    # needs its order to pick, across buckets, the readings that count); None for sum/count meters
    counted_event_time_ms: int | None = None
    counted_received_at_ms: int | None = None
    counted_identifier: str | None = None
    # v3: the open periods' usage of this customer and meter, by exact event time, when the batch
    # changed it (on the batch's last bucket of the meter: one record, not two, per touched customer)
    period_usage: tuple[PeriodUsage, ...] = ()


@_fact
class PeriodUsageUpdated:
    """One PeriodUsage as a fact of its own: what workers wrote before UsageBucketUpdated v3 carried
    it, and what they still write when a batch changed a period's usage but none of the meter's
    buckets (an event already in the buckets, re-read after a crash). The projector keeps both."""
    customer_id: str
    subscription_id: str
    period_start_ms: int
    meter_id: str
    value: Decimal  # the meter's aggregate over the period's events so far (the invoice line's quantity)
    event_count: int
    updated_at_ms: int


@_fact
class LiveBalanceChanged:
    customer_id: str
    currency: str
    available_credits_minor: int
    accrued_usage_minor: int
    live_balance_minor: int  # available - accrued; may be negative
    as_of_ms: int


@_fact
class LowBalanceAlert:
    alert_id: str
    customer_id: str
    currency: str
    threshold_minor: int
    live_balance_minor: int
    alerted_at_ms: int


@_fact
class BillingAlertCrossed:
    """A billing alert's threshold crossed: `triggered` (Stripe's billing.alert.triggered), or, for
    a credit-balance alert, `recovered` when the balance is back above it (the alert re-armed)."""
    crossing_id: str
    alert_id: str
    customer_id: str
    crossing: AlertCrossing
    value: int  # the usage (usage_threshold) or the live balance in minor units (credit_balance_threshold)
    crossed_at_ms: int


@_fact
class DeadLetter:
    original_bytes: bytes
    topic: str
    partition: int
    offset: int
    reason_code: str  # e.g. meter_event_customer_not_found, undecodable_fact
    message: str
    customer_id: str | None = None
    dead_lettered_at_ms: int


ALL_FACTS: tuple[type, ...] = (
    MeterDefined,
    MeterDisplayNameChanged,
    MeterDeactivated,
    MeterReactivated,
    ProductCreated,
    PriceCreated,
    ProductUpdated,
    PriceUpdated,
    CustomerCreated,
    CustomerUpdated,
    CustomerDeleted,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionItemsChanged,
    SubscriptionItemUpdated,
    SubscriptionCancelScheduled,
    SubscriptionCanceled,
    CreditGrantCreated,
    CreditGrantUpdated,
    CreditGrantExpired,
    CreditGrantVoided,
    BillingAlertCreated,
    BillingAlertStatusChanged,
    InvoiceVoidRequested,
    InvoiceItemCreated,
    InvoiceItemDeleted,
    InvoiceItemUpdated,
    InvoiceUpdated,
    InvoiceCreated,
    InvoiceFinalizeRequested,
    InvoicePayRequested,
    InvoiceMarkUncollectibleRequested,
    MeterEventRecorded,
    MeterEventCanceled,
    TimeTicked,
    TestClockCreated,
    TestClockAdvanced,
    TestClockDeleted,
    InvoiceFinalized,
    InvoiceVoided,
    InvoicePaid,
    InvoiceMarkedUncollectible,
    CreditBalanceTransaction,
    UsageBucketUpdated,
    PeriodUsageUpdated,
    LiveBalanceChanged,
    LowBalanceAlert,
    BillingAlertCrossed,
    DeadLetter,
)
"""Every top-level fact class (nested types are not facts)."""

Fact = (
    MeterDefined
    | MeterDisplayNameChanged
    | MeterDeactivated
    | MeterReactivated
    | ProductCreated
    | PriceCreated
    | ProductUpdated
    | PriceUpdated
    | CustomerCreated
    | CustomerUpdated
    | CustomerDeleted
    | SubscriptionCreated
    | SubscriptionUpdated
    | SubscriptionItemsChanged
    | SubscriptionItemUpdated
    | SubscriptionCancelScheduled
    | SubscriptionCanceled
    | CreditGrantCreated
    | CreditGrantUpdated
    | CreditGrantExpired
    | CreditGrantVoided
    | BillingAlertCreated
    | BillingAlertStatusChanged
    | InvoiceVoidRequested
    | InvoiceItemCreated
    | InvoiceItemDeleted
    | InvoiceItemUpdated
    | InvoiceUpdated
    | InvoiceCreated
    | InvoiceFinalizeRequested
    | InvoicePayRequested
    | InvoiceMarkUncollectibleRequested
    | MeterEventRecorded
    | MeterEventCanceled
    | TimeTicked
    | TestClockCreated
    | TestClockAdvanced
    | TestClockDeleted
    | InvoiceFinalized
    | InvoiceVoided
    | InvoicePaid
    | InvoiceMarkedUncollectible
    | CreditBalanceTransaction
    | UsageBucketUpdated
    | PeriodUsageUpdated
    | LiveBalanceChanged
    | LowBalanceAlert
    | BillingAlertCrossed
    | DeadLetter
)
"""Any top-level fact, for annotations (`def evolve(state, fact: Fact)`)."""

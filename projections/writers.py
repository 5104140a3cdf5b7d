"""Facts -> rows: what the projector writes for each fact, collected per batch.

Low-volume facts (catalog, customers, subscriptions, grants, invoices, clocks) become SQL
statements executed in log order inside the batch's transaction. The high-volume facts (usage
buckets, credit balance transactions) are collected as rows and merged with one binary COPY into
a staging table each. Every write is an idempotent upsert keyed by the fact's deterministic id,
so replaying a fact changes nothing.

Facts that Stripe announces also write their Stripe event (projections/events.py) at their place in
the statements, so an event shows its object as that fact left it. To add an event type: one
`self._event(...)` line in the rule of its fact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from billing import facts as f
from billing.lifecycle import MAX_INVOICE_ITEMS, status_after_finalization
from billing.usage import CANCEL_NOT_FOUND, CANCEL_NOT_IN_PARTITION
from projections import events

Statement = tuple[str, tuple[Any, ...]]  # or a step run in its place: events.EventStep / BeforeStep

USAGE_BUCKET_COLUMNS = ("customer_id", "meter_id", "bucket_start_ms", "value", "event_count", "updated_at_ms",
                        "counted_event_time_ms", "counted_received_at_ms", "counted_identifier",
                        "source_partition", "source_offset")
USAGE_BUCKET_TYPES = ("text", "text", "int8", "numeric", "int8", "int8", "int8", "int8", "text", "int4", "int8")
PERIOD_USAGE_COLUMNS = ("subscription_id", "period_start_ms", "meter_id", "customer_id", "value", "event_count",
                        "updated_at_ms", "source_partition", "source_offset")
PERIOD_USAGE_TYPES = ("text", "int8", "text", "text", "numeric", "int8", "int8", "int4", "int8")
TRANSACTION_COLUMNS = ("id", "customer_id", "grant_id", "currency", "amount_minor", "type", "reason", "invoice_id",
                       "invoice_line_id", "effective_at_ms")
TRANSACTION_TYPES = ("text", "text", "text", "text", "int8", "text", "text", "text", "text", "int8")

# Facts the projector reads past: the hot meter events (the workers fold them into usage buckets)
# and time facts other than test clocks.
IGNORED_FACTS = (f.MeterEventRecorded, f.MeterEventCanceled, f.TimeTicked, f.InvoiceVoidRequested,
                 f.InvoiceFinalizeRequested, f.InvoicePayRequested, f.InvoiceMarkUncollectibleRequested)


# fact class -> the Batch method that collects its rows (a dict lookup: singledispatch cost ~5 us a fact)
_RULES: dict[type, Any] = {}


def _rule(fact_class: type) -> Any:
    """Register the decorated Batch method as the rule for `fact_class`."""

    def register(method: Any) -> Any:
        _RULES[fact_class] = method
        return method

    return register


@dataclass
class Batch:
    """The rows one consumed batch writes; `add` in log order, then `write` in one transaction."""

    statements: list[Statement] = field(default_factory=list)
    cancel_fan_out: int = 1  # partitions a cancel without customer goes to: all must miss for "not found"
    usage_buckets: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    period_usage: dict[tuple[str, int, str], tuple[Any, ...]] = field(default_factory=dict)
    transactions: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    live_balances: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    facts_applied: int = 0
    # (topic, partition, offset, value, timestamp_ms) of each record collected: to write them one by
    # one when the database refuses the batch (see Projector._write_one_by_one)
    sources: list[tuple] = field(default_factory=list)
    decode: Any = None  # bytes -> fact (the projector's codec): what a dead letter held, for its error report
    # (logical topic, partition, offset, record timestamp ms) of the fact being added: its events' ids and times
    current: tuple[str, int, int, int] = ("", 0, 0, 0)
    request: tuple[str | None, str | None] | None = None  # (Request-Id, Idempotency-Key) of the fact being added

    @property
    def row_count(self) -> int:
        return (len(self.statements) + len(self.usage_buckets) + len(self.period_usage) + len(self.transactions)
                + len(self.live_balances))

    def add(self, fact: Any, partition: int, offset: int, topic: str = "", timestamp_ms: int = 0,
            request: tuple[str | None, str | None] | None = None) -> None:
        """Collect what `fact` (read at topic/partition/offset, written at timestamp_ms, by the API
        request `request` = (Request-Id, Idempotency-Key) when one published it) writes."""
        rule = _RULES.get(type(fact))
        if rule is None:
            if isinstance(fact, IGNORED_FACTS):
                return
            raise TypeError(f"the projector has no rule for {type(fact).__name__}")
        self.facts_applied += 1
        self.current = (topic, partition, offset, timestamp_ms)
        self.request = request
        rule(self, fact, partition, offset)

    def _event(self, event_type: str, render: events.Render, *key: Any) -> events.EventStep:
        """The event `event_type` with the object `render` reads, here in the statements. Its id comes
        from `key` (the object's id, for what happens once to it), else from the fact's place in the log."""
        topic, partition, offset, timestamp_ms = self.current
        step = events.EventStep(events.event_id(event_type, *(key or (topic, partition, offset))), event_type,
                                timestamp_ms, render, request=self.request)
        self.statements.append(step)
        return step

    def _changed(self, event_type: str, render: events.Render, statements: list[Statement], *key: Any) -> None:
        """`statements` that change an object, and their event with data.previous_attributes."""
        position = len(self.statements)
        self.statements.extend(statements)
        step = self._event(event_type, render, *key)
        self.statements.insert(position, step.before_step())

    def add_undecodable(self, topic: str, partition: int, offset: int, value: bytes, reason_code: str,
                        message: str, now_ms: int) -> None:
        """A record the projector cannot decode or write becomes a dead-letter row, so it is seen, not lost."""
        message = message[:1000].replace("\x00", "\\x00")  # (a text column holds no NUL)
        self.statements.append((
            "insert into dead_letters (topic, partition, \"offset\", reason_code, message, customer_id, original_bytes,"
            " dead_lettered_at_ms) values (%s, %s, %s, %s, %s, null, %s, %s) on conflict do nothing",
            (topic, partition, offset, reason_code, message, value or b"", now_ms)))

    # --- catalog ----------------------------------------------------------------------------

    @_rule(f.MeterDefined)
    def _(self, fact: f.MeterDefined, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into meters (id, display_name, event_name, aggregation, customer_payload_key, value_payload_key,"
            " event_time_window, status, created_ms, updated_ms) values (%s, %s, %s, %s, %s, %s, %s, 'active', %s, %s)"
            " on conflict do nothing",
            (fact.meter_id, fact.display_name, fact.event_name, str(fact.aggregation), fact.customer_payload_key,
             fact.value_payload_key, _text(fact.event_time_window), fact.created_at_ms, fact.created_at_ms)))
        self._event("billing.meter.created", events.meter(fact.meter_id), fact.meter_id)

    @_rule(f.MeterDisplayNameChanged)
    def _(self, fact: f.MeterDisplayNameChanged, partition: int, offset: int) -> None:
        self._changed("billing.meter.updated", events.meter(fact.meter_id), [(
            "update meters set display_name = %s, updated_ms = %s where id = %s",
            (fact.display_name, fact.changed_at_ms, fact.meter_id))])

    @_rule(f.MeterDeactivated)
    def _(self, fact: f.MeterDeactivated, partition: int, offset: int) -> None:
        self.statements.append(("update meters set status = 'inactive', updated_ms = %s where id = %s",
                                (fact.deactivated_at_ms, fact.meter_id)))
        self._event("billing.meter.deactivated", events.meter(fact.meter_id))

    @_rule(f.MeterReactivated)
    def _(self, fact: f.MeterReactivated, partition: int, offset: int) -> None:
        self.statements.append(("update meters set status = 'active', updated_ms = %s where id = %s",
                                (fact.reactivated_at_ms, fact.meter_id)))
        self._event("billing.meter.reactivated", events.meter(fact.meter_id))

    @_rule(f.ProductCreated)
    def _(self, fact: f.ProductCreated, partition: int, offset: int) -> None:
        self.statements.append(("insert into products (id, name, metadata, created_ms) values (%s, %s, %s, %s)"
                                " on conflict do nothing",
                                (fact.product_id, fact.name, Jsonb(dict(fact.metadata)), fact.created_at_ms)))

    @_rule(f.PriceCreated)
    def _(self, fact: f.PriceCreated, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into prices (id, product_id, currency, unit_amount_decimal, usage_type, meter_id, recurring_interval,"
            " recurring_interval_count, created_ms, nickname, lookup_key, metadata)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (fact.price_id, fact.product_id, fact.currency, fact.unit_amount_decimal, str(fact.usage_type),
             fact.meter_id, str(fact.recurring_interval), fact.recurring_interval_count, fact.created_at_ms,
             fact.nickname, fact.lookup_key, Jsonb(dict(fact.metadata)))))

    @_rule(f.ProductUpdated)
    def _(self, fact: f.ProductUpdated, partition: int, offset: int) -> None:
        self._changed("product.updated", events.product(fact.product_id), [(
            "update products set name = %s, active = %s, description = %s, metadata = %s, updated_ms = %s"
            " where id = %s", (fact.name, fact.active, fact.description, Jsonb(dict(fact.metadata)),
                               fact.updated_at_ms, fact.product_id))])

    @_rule(f.PriceUpdated)
    def _(self, fact: f.PriceUpdated, partition: int, offset: int) -> None:
        self._changed("price.updated", events.price(fact.price_id), [(
            "update prices set active = %s, nickname = %s, lookup_key = %s, metadata = %s, updated_ms = %s"
            " where id = %s", (fact.active, fact.nickname, fact.lookup_key, Jsonb(dict(fact.metadata)),
                               fact.updated_at_ms, fact.price_id))])

    # --- customers, subscriptions, grants ---------------------------------------------------

    @_rule(f.CustomerCreated)
    def _(self, fact: f.CustomerCreated, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into customers (id, name, email, test_clock_id, metadata, created_ms) values (%s, %s, %s, %s, %s, %s)"
            " on conflict do nothing",
            (fact.customer_id, fact.name, fact.email, fact.test_clock_id, Jsonb(dict(fact.metadata)), fact.created_at_ms)))
        self._event("customer.created", events.customer(fact.customer_id), fact.customer_id)

    @_rule(f.CustomerUpdated)
    def _(self, fact: f.CustomerUpdated, partition: int, offset: int) -> None:
        self._changed("customer.updated", events.customer(fact.customer_id), [(
            "update customers set name = %s, email = %s, metadata = %s where id = %s",
            (fact.name, fact.email, Jsonb(dict(fact.metadata)), fact.customer_id))])

    @_rule(f.CustomerDeleted)
    def _(self, fact: f.CustomerDeleted, partition: int, offset: int) -> None:
        self._event("customer.deleted", events.customer(fact.customer_id), fact.customer_id)  # (as it was)
        self.statements.append(("update customers set deleted_ms = coalesce(deleted_ms, %s) where id = %s",
                                (fact.deleted_at_ms, fact.customer_id)))

    @_rule(f.SubscriptionCreated)
    def _(self, fact: f.SubscriptionCreated, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into subscriptions (id, customer_id, currency, billing_cycle_anchor_ms, test_clock_id, status,"
            " created_ms, metadata) values (%s, %s, %s, %s, %s, 'active', %s, %s) on conflict do nothing",
            (fact.subscription_id, fact.customer_id, fact.currency, fact.billing_cycle_anchor_ms, fact.test_clock_id,
             fact.created_at_ms, Jsonb(dict(fact.metadata)))))
        # Its final invoice may have been projected first (invoices is another topic): then it has ended.
        self.statements.append((
            "update subscriptions s set status = 'canceled', ended_ms = coalesce(s.ended_ms, i.period_end_ms)"
            " from invoices i where s.id = %s and i.subscription_id = s.id"
            " and i.billing_reason = 'subscription_cancel'", (fact.subscription_id,)))
        self.statements.extend(self._items(fact.subscription_id, fact.items))
        self._event("customer.subscription.created", events.subscription(fact.subscription_id, fact.created_at_ms),
                    fact.subscription_id)

    @_rule(f.SubscriptionItemsChanged)
    def _(self, fact: f.SubscriptionItemsChanged, partition: int, offset: int) -> None:
        # A version of the items from effective_from_ms on (0: at once), replacing the versions from
        # that instant on, as the workers' fold does (billing.customer.SubscriptionState.change_items).
        from_ms = fact.effective_from_ms or 0
        render = events.subscription(fact.subscription_id, fact.changed_at_ms)
        self._changed("customer.subscription.updated", render, [
            ("delete from subscription_items where subscription_id = %s and effective_from_ms >= %s",
             (fact.subscription_id, from_ms)),
            *self._items(fact.subscription_id, fact.items, from_ms)])

    @staticmethod
    def _items(subscription_id: str, items: tuple[f.SubscriptionItem, ...], from_ms: int = 0) -> list[Statement]:
        return [("insert into subscription_items (id, subscription_id, price_id, quantity, position, effective_from_ms,"
                 " metadata) values (%s, %s, %s, %s, %s, %s, %s) on conflict (id, effective_from_ms) do update set"
                 " price_id = excluded.price_id, quantity = excluded.quantity, position = excluded.position,"
                 " metadata = excluded.metadata",
                 (item.item_id, subscription_id, item.price_id, item.quantity, position, from_ms,
                  Jsonb(dict(item.metadata))))
                for position, item in enumerate(items)]

    @_rule(f.SubscriptionItemUpdated)
    def _(self, fact: f.SubscriptionItemUpdated, partition: int, offset: int) -> None:
        # Metadata is not billing: at once, on every version of the item (the current period's and a
        # waiting one), unlike SubscriptionItemsChanged.
        self._changed("customer.subscription.updated", events.subscription(fact.subscription_id, fact.updated_at_ms), [(
            "update subscription_items set metadata = %s where id = %s and subscription_id = %s",
            (Jsonb(dict(fact.metadata)), fact.item_id, fact.subscription_id))])

    @_rule(f.SubscriptionCancelScheduled)
    def _(self, fact: f.SubscriptionCancelScheduled, partition: int, offset: int) -> None:
        # Stripe: canceled_at is the time of the latest request to cancel at period end (none once taken back)
        # (a subscription canceled now, invoice_now set, stays as that made it)
        render = events.subscription(fact.subscription_id, fact.scheduled_at_ms)
        self._changed("customer.subscription.updated", render, [
            ("update subscriptions set cancel_at_period_end = %s, canceled_ms = %s where id = %s and invoice_now is null",
             (fact.cancel_at_period_end, fact.scheduled_at_ms if fact.cancel_at_period_end else None,
              fact.subscription_id))])

    @_rule(f.SubscriptionUpdated)
    def _(self, fact: f.SubscriptionUpdated, partition: int, offset: int) -> None:
        self._changed("customer.subscription.updated", events.subscription(fact.subscription_id, fact.updated_at_ms), [(
            "update subscriptions set metadata = %s where id = %s", (Jsonb(dict(fact.metadata)), fact.subscription_id))])

    @_rule(f.SubscriptionCanceled)
    def _(self, fact: f.SubscriptionCanceled, partition: int, offset: int) -> None:
        self.statements.append((
            "update subscriptions set status = 'canceled', canceled_ms = %s, ended_ms = %s, invoice_now = %s"
            " where id = %s", (fact.canceled_at_ms, fact.canceled_at_ms, fact.invoice_now, fact.subscription_id)))
        self._event("customer.subscription.deleted", events.subscription(fact.subscription_id, fact.canceled_at_ms),
                    fact.subscription_id)

    @_rule(f.CreditGrantCreated)
    def _(self, fact: f.CreditGrantCreated, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into credit_grants (id, customer_id, name, amount_minor, currency, scope_price_type, scope_price_ids,"
            " category, priority, effective_at_ms, expires_at_ms, metadata, test_clock_id, created_ms, updated_ms)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (fact.grant_id, fact.customer_id, fact.name, fact.amount_minor, fact.currency,
             _text(fact.scope.price_type), list(fact.scope.price_ids), str(fact.category), fact.priority,
             fact.effective_at_ms, fact.expires_at_ms, Jsonb(dict(fact.metadata)), fact.test_clock_id,
             fact.created_at_ms, fact.created_at_ms)))
        self._event("billing.credit_grant.created", events.credit_grant(fact.grant_id), fact.grant_id)

    @_rule(f.CreditGrantUpdated)
    def _(self, fact: f.CreditGrantUpdated, partition: int, offset: int) -> None:
        self._changed("billing.credit_grant.updated", events.credit_grant(fact.grant_id), [(
            "update credit_grants set expires_at_ms = %s, metadata = %s, updated_ms = %s where id = %s",
            (fact.expires_at_ms, Jsonb(dict(fact.metadata)), fact.updated_at_ms, fact.grant_id))])

    @_rule(f.CreditGrantExpired)
    def _(self, fact: f.CreditGrantExpired, partition: int, offset: int) -> None:
        self._changed("billing.credit_grant.updated", events.credit_grant(fact.grant_id), [(
            "update credit_grants set expired_ms = coalesce(expired_ms, %s), updated_ms = %s where id = %s",
            (fact.expired_at_ms, fact.expired_at_ms, fact.grant_id))], fact.grant_id, "expired")

    @_rule(f.CreditGrantVoided)
    def _(self, fact: f.CreditGrantVoided, partition: int, offset: int) -> None:
        self._changed("billing.credit_grant.updated", events.credit_grant(fact.grant_id), [(
            "update credit_grants set voided_ms = coalesce(voided_ms, %s), updated_ms = %s where id = %s",
            (fact.voided_at_ms, fact.voided_at_ms, fact.grant_id))], fact.grant_id, "voided")

    # --- billing alerts ---------------------------------------------------------------------

    @_rule(f.BillingAlertCreated)
    def _(self, fact: f.BillingAlertCreated, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into billing_alerts (id, customer_id, alert_type, title, status, meter_id, gte, currency,"
            " lte_minor, created_ms, updated_ms) values (%s, %s, %s, %s, 'active', %s, %s, %s, %s, %s, %s)"
            " on conflict do nothing",
            (fact.alert_id, fact.customer_id or None, str(fact.alert_type), fact.title, fact.meter_id, fact.gte,
             fact.currency, fact.lte_minor, fact.created_at_ms, fact.created_at_ms)))  # "": every customer, each partition's copy

    @_rule(f.BillingAlertStatusChanged)
    def _(self, fact: f.BillingAlertStatusChanged, partition: int, offset: int) -> None:
        # (the workers refuse to bring an archived alert back; the projection follows the same rule)
        self.statements.append((
            "update billing_alerts set status = %s, updated_ms = %s where id = %s"
            " and (status <> 'archived' or %s = 'archived')",
            (str(fact.status), fact.changed_at_ms, fact.alert_id, str(fact.status))))

    @_rule(f.BillingAlertCrossed)
    def _(self, fact: f.BillingAlertCrossed, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into billing_alert_crossings (id, alert_id, customer_id, crossing, value, crossed_ms)"
            " values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
            (fact.crossing_id, fact.alert_id, fact.customer_id, str(fact.crossing), fact.value, fact.crossed_at_ms)))
        event_type = "billing.alert.triggered" if fact.crossing == f.AlertCrossing.TRIGGERED \
            else events.BILLING_ALERT_RECOVERED
        self._event(event_type, events.billing_alert_crossing(fact.crossing_id), fact.crossing_id)

    # --- test clocks (one copy per partition: the upserts make the copies one row) ----------

    @_rule(f.TestClockCreated)
    def _(self, fact: f.TestClockCreated, partition: int, offset: int) -> None:
        self.statements.append(("insert into test_clocks (id, name, frozen_time_ms, created_ms) values (%s, %s, %s, %s)"
                                " on conflict do nothing",
                                (fact.test_clock_id, fact.name, fact.frozen_time_ms, fact.created_at_ms)))

    @_rule(f.TestClockAdvanced)
    def _(self, fact: f.TestClockAdvanced, partition: int, offset: int) -> None:
        self.statements.append(("update test_clocks set frozen_time_ms = greatest(frozen_time_ms, %s) where id = %s",
                                (fact.frozen_time_ms, fact.test_clock_id)))

    @_rule(f.TestClockDeleted)
    def _(self, fact: f.TestClockDeleted, partition: int, offset: int) -> None:
        self.statements.append(("update test_clocks set deleted_ms = coalesce(deleted_ms, %s) where id = %s",
                                (fact.deleted_at_ms, fact.test_clock_id)))

    # --- one-off invoices (the customer's log, in order: the same conditions as billing/customer.py)

    @_rule(f.InvoiceItemCreated)
    def _(self, fact: f.InvoiceItemCreated, partition: int, offset: int) -> None:
        # An item for a draft exists only if the draft does (the worker refuses it otherwise).
        self.statements.append((
            "insert into invoice_items (id, customer_id, invoice_id, currency, quantity, unit_amount_decimal,"
            " amount_minor, price_id, description, metadata, created_ms)"
            " select %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
            " where %s::text is null or exists (select 1 from invoices where id = %s and status = 'draft')"
            " on conflict do nothing",
            (fact.invoice_item_id, fact.customer_id, fact.invoice_id, fact.currency, fact.quantity,
             fact.unit_amount_decimal, fact.amount_minor, fact.price_id, fact.description,
             Jsonb(dict(fact.metadata)), fact.created_at_ms, fact.invoice_id, fact.invoice_id)))

    @_rule(f.InvoiceItemUpdated)
    def _(self, fact: f.InvoiceItemUpdated, partition: int, offset: int) -> None:
        self.statements.append(("update invoice_items set metadata = %s where id = %s",
                                (Jsonb(dict(fact.metadata)), fact.invoice_item_id)))

    @_rule(f.InvoiceUpdated)
    def _(self, fact: f.InvoiceUpdated, partition: int, offset: int) -> None:
        self._changed("invoice.updated", events.invoice(fact.invoice_id), [(
            "update invoices set metadata = %s where id = %s", (Jsonb(dict(fact.metadata)), fact.invoice_id))])

    @_rule(f.InvoiceItemDeleted)
    def _(self, fact: f.InvoiceItemDeleted, partition: int, offset: int) -> None:
        self.statements.append((
            "delete from invoice_items i where i.id = %s and (i.invoice_id is null or exists"
            " (select 1 from invoices d where d.id = i.invoice_id and d.status = 'draft'))",
            (fact.invoice_item_id,)))

    @_rule(f.InvoiceCreated)
    def _(self, fact: f.InvoiceCreated, partition: int, offset: int) -> None:
        # The draft (or, when its finalization was projected first, the invoice's draft fields).
        self.statements.append((
            "insert into invoices (id, customer_id, subscription_id, currency, period_start_ms, period_end_ms,"
            " billing_reason, finalized_ms, subtotal_minor, total_credits_minor, amount_due_minor, status, created_ms,"
            " description, metadata, auto_advance) values (%s, %s, null, %s, %s, %s, 'manual', null, 0, 0, 0,"
            " 'draft', %s, %s, %s, %s) on conflict (id) do update set description = excluded.description,"
            " metadata = excluded.metadata, auto_advance = excluded.auto_advance",
            (fact.invoice_id, fact.customer_id, fact.currency, fact.created_at_ms, fact.created_at_ms,
             fact.created_at_ms, fact.description, Jsonb(dict(fact.metadata)), fact.auto_advance)))
        self.statements.append((
            "update invoice_items set invoice_id = %s where id = any(%s) and customer_id = %s and invoice_id is null"
            " and currency = %s",
            (fact.invoice_id, list(fact.invoice_item_ids[:MAX_INVOICE_ITEMS]), fact.customer_id, fact.currency)))
        self._event("invoice.created", events.invoice(fact.invoice_id), fact.invoice_id)

    # --- derived facts ----------------------------------------------------------------------

    @_rule(f.InvoiceFinalized)
    def _(self, fact: f.InvoiceFinalized, partition: int, offset: int) -> None:
        status = str(status_after_finalization(fact.amount_due_minor))
        # A one-off invoice's draft row becomes the finalized invoice; a finalized row is left as it
        # is (a replayed fact must not turn a paid or void invoice back to open).
        # A subscription invoice keeps its subscription's metadata at finalization (Stripe's
        # snapshot), which the workers put in the fact (v3). An older fact has none: the projection's
        # view of the subscription as of now stands in (customer-facts and invoices are separate
        # topics, so a rebuild that reads a later SubscriptionUpdated first would snapshot that).
        self.statements.append((
            "insert into invoices (id, customer_id, subscription_id, currency, period_start_ms, period_end_ms,"
            " billing_reason, finalized_ms, subtotal_minor, total_credits_minor, amount_due_minor, status, created_ms,"
            " subscription_metadata) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " coalesce(%s::jsonb, (select metadata from subscriptions where id = %s))) on conflict (id) do update set"
            " finalized_ms = excluded.finalized_ms, subtotal_minor = excluded.subtotal_minor,"
            " total_credits_minor = excluded.total_credits_minor, amount_due_minor = excluded.amount_due_minor,"
            " status = excluded.status where invoices.status = 'draft'",
            (fact.invoice_id, fact.customer_id, fact.subscription_id, fact.currency, fact.period_start_ms,
             fact.period_end_ms, str(fact.billing_reason), fact.finalized_at_ms, fact.subtotal_minor,
             fact.total_credits_minor, fact.amount_due_minor, status,
             fact.period_start_ms if fact.subscription_id is None else fact.finalized_at_ms,
             None if fact.subscription_metadata is None else Jsonb(dict(fact.subscription_metadata)),
             fact.subscription_id)))
        if fact.billing_reason == f.BillingReason.SUBSCRIPTION_CANCEL:
            # The final invoice: a subscription canceled at period end ends with the period it bills
            # (one canceled now has ended already: its own time stays).
            self.statements.append((
                "update subscriptions set status = 'canceled', ended_ms = coalesce(ended_ms, %s) where id = %s",
                (fact.period_end_ms, fact.subscription_id)))
        for position, line in enumerate(fact.lines):
            self.statements.append((
                "insert into invoice_lines (id, invoice_id, position, subscription_item_id, price_id, meter_id, quantity,"
                " unit_amount_decimal, amount_minor, invoice_item_id, description)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
                (line.line_id, fact.invoice_id, position, line.subscription_item_id, line.price_id, line.meter_id,
                 line.quantity, line.unit_amount_decimal, line.amount_minor, line.invoice_item_id, line.description)))
            for credit_position, credit in enumerate(line.credits):
                self.statements.append((
                    "insert into invoice_line_credits (credit_balance_transaction_id, invoice_id, invoice_line_id,"
                    " grant_id, amount_minor, position) values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
                    (credit.credit_balance_transaction_id, fact.invoice_id, line.line_id, credit.grant_id,
                     credit.amount_minor, credit_position)))
        # A period invoice is created and finalized at once (and paid at once when nothing is due, as
        # Stripe does); a one-off invoice's invoice.created came with its draft (same id: written once).
        self._event("invoice.created", events.invoice(fact.invoice_id), fact.invoice_id)
        self._event("invoice.finalized", events.invoice(fact.invoice_id), fact.invoice_id)
        if fact.amount_due_minor == 0:
            self._event("invoice.paid", events.invoice(fact.invoice_id), fact.invoice_id)
        if fact.billing_reason == f.BillingReason.SUBSCRIPTION_CANCEL:
            self._event("customer.subscription.deleted", events.subscription(fact.subscription_id, fact.period_end_ms),
                        fact.subscription_id)

    @_rule(f.InvoiceVoided)
    def _(self, fact: f.InvoiceVoided, partition: int, offset: int) -> None:
        self._changed("invoice.voided", events.invoice(fact.invoice_id), [(
            "update invoices set status = 'void', voided_ms = coalesce(voided_ms, %s) where id = %s",
            (fact.voided_at_ms, fact.invoice_id))], fact.invoice_id)

    @_rule(f.InvoicePaid)
    def _(self, fact: f.InvoicePaid, partition: int, offset: int) -> None:
        self._changed("invoice.paid", events.invoice(fact.invoice_id), [(
            "update invoices set status = 'paid', amount_paid_minor = %s, paid_out_of_band = %s,"
            " paid_ms = coalesce(paid_ms, %s) where id = %s",
            (fact.amount_paid_minor, fact.paid_out_of_band, fact.paid_at_ms, fact.invoice_id))], fact.invoice_id)

    @_rule(f.InvoiceMarkedUncollectible)
    def _(self, fact: f.InvoiceMarkedUncollectible, partition: int, offset: int) -> None:
        self._changed("invoice.marked_uncollectible", events.invoice(fact.invoice_id), [(
            "update invoices set status = 'uncollectible',"
            " marked_uncollectible_ms = coalesce(marked_uncollectible_ms, %s) where id = %s",
            (fact.marked_uncollectible_at_ms, fact.invoice_id))], fact.invoice_id)

    @_rule(f.CreditBalanceTransaction)
    def _(self, fact: f.CreditBalanceTransaction, partition: int, offset: int) -> None:
        row = self.transactions[fact.transaction_id] = (
            fact.transaction_id, fact.customer_id, fact.grant_id, fact.currency, fact.amount_minor, str(fact.type),
            str(fact.reason), fact.invoice_id, fact.invoice_line_id, fact.effective_at_ms)
        self._event("billing.credit_balance_transaction.created",
                    events.credit_balance_transaction(dict(zip(TRANSACTION_COLUMNS, row))), fact.transaction_id)

    @_rule(f.UsageBucketUpdated)
    def _(self, fact: f.UsageBucketUpdated, partition: int, offset: int) -> None:
        # The fact carries the bucket's whole current aggregate: the last one in the batch wins.
        self.usage_buckets[(fact.customer_id, fact.meter_id, fact.bucket_start_ms)] = (
            fact.customer_id, fact.meter_id, fact.bucket_start_ms, fact.value, fact.event_count, fact.updated_at_ms,
            fact.counted_event_time_ms, fact.counted_received_at_ms, fact.counted_identifier, partition, offset)
        for usage in fact.period_usage:  # the whole current usage of the period: the last one in the batch wins
            self.period_usage[(usage.subscription_id, usage.period_start_ms, fact.meter_id)] = (
                usage.subscription_id, usage.period_start_ms, fact.meter_id, fact.customer_id, usage.value,
                usage.event_count, fact.updated_at_ms, partition, offset)

    @_rule(f.PeriodUsageUpdated)
    def _(self, fact: f.PeriodUsageUpdated, partition: int, offset: int) -> None:
        # The whole current usage of the period: the last one in the batch wins.
        self.period_usage[(fact.subscription_id, fact.period_start_ms, fact.meter_id)] = (
            fact.subscription_id, fact.period_start_ms, fact.meter_id, fact.customer_id, fact.value,
            fact.event_count, fact.updated_at_ms, partition, offset)

    @_rule(f.LiveBalanceChanged)
    def _(self, fact: f.LiveBalanceChanged, partition: int, offset: int) -> None:
        self.live_balances[(fact.customer_id, fact.currency)] = (
            fact.customer_id, fact.currency, fact.available_credits_minor, fact.accrued_usage_minor,
            fact.live_balance_minor, fact.as_of_ms)

    @_rule(f.LowBalanceAlert)
    def _(self, fact: f.LowBalanceAlert, partition: int, offset: int) -> None:
        self.statements.append((
            "insert into low_balance_alerts (id, customer_id, currency, threshold_minor, live_balance_minor,"
            " alerted_at_ms) values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
            (fact.alert_id, fact.customer_id, fact.currency, fact.threshold_minor, fact.live_balance_minor,
             fact.alerted_at_ms)))

    @_rule(f.DeadLetter)
    def _(self, fact: f.DeadLetter, partition: int, offset: int) -> None:
        if fact.reason_code == CANCEL_NOT_IN_PARTITION:
            self._cancel_missed(fact)
            return
        self.statements.append((
            "insert into dead_letters (topic, partition, \"offset\", reason_code, message, customer_id, original_bytes,"
            " dead_lettered_at_ms) values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (fact.topic, fact.partition, fact.offset, fact.reason_code, fact.message, fact.customer_id,
             fact.original_bytes, fact.dead_lettered_at_ms)))
        self._meter_error_report(fact, fact.reason_code, fact.message, (
            "select 1 from dead_letters where topic = %s and partition = %s and \"offset\" = %s",
            (fact.topic, fact.partition, fact.offset)), fact.topic, fact.partition, fact.offset)

    def _meter_error_report(self, fact: f.DeadLetter, reason_code: str, message: str,
                            written: tuple[str, tuple[Any, ...]], *key: Any) -> None:
        """A dead-lettered meter event or adjustment is reported as Stripe reports meter errors."""
        try:
            original = self.decode(fact.original_bytes) if self.decode is not None else None
        except Exception:  # noqa: BLE001 - an undecodable record is no meter event: no report
            original = None
        if not isinstance(original, (f.MeterEventRecorded, f.MeterEventCanceled)):
            return
        self._event(events.METER_ERROR_REPORT, events.meter_error_report(
            reason_code, message, fact.customer_id or getattr(original, "customer_id", None) or None,
            original.event_name, original.identifier, fact.dead_lettered_at_ms, written), *key)

    def _cancel_missed(self, fact: f.DeadLetter) -> None:
        """One partition's miss of a cancel (the same fact bytes on every partition); the miss that
        completes the set becomes the cancel's `meter_event_not_found` dead letter."""
        self.statements.append((
            "insert into meter_event_cancel_misses (fact_sha256, partition, missed_at_ms)"
            " values (sha256(%s), %s, %s) on conflict do nothing",
            (fact.original_bytes, fact.partition, fact.dead_lettered_at_ms)))
        self.statements.append((
            "insert into dead_letters (topic, partition, \"offset\", reason_code, message, customer_id, original_bytes,"
            " dead_lettered_at_ms) select %s, %s, %s, %s, %s, null, %s, %s"
            " where (select count(*) from meter_event_cancel_misses where fact_sha256 = sha256(%s)) >= %s"
            " on conflict do nothing",
            (fact.topic, fact.partition, fact.offset, CANCEL_NOT_FOUND,
             fact.message.replace(" in this partition", "") + ": no partition holds it", fact.original_bytes,
             fact.dead_lettered_at_ms, fact.original_bytes, self.cancel_fan_out)))
        # Keyed by the cancel's bytes: whichever partition's miss completes the set, it is one report.
        self._meter_error_report(fact, CANCEL_NOT_FOUND, fact.message.replace(" in this partition", "") +
                                 ": no partition holds it", (
            "select 1 from meter_event_cancel_misses where fact_sha256 = sha256(%s) having count(*) >= %s",
            (fact.original_bytes, self.cancel_fan_out)), "cancel", hashlib.sha256(fact.original_bytes).hexdigest())

    # --- writing ------------------------------------------------------------------------------

    def write(self, conn: Any) -> None:
        """Write everything collected, inside the caller's open transaction on `conn`."""
        with conn.cursor() as cursor:
            if self.statements:
                with conn.pipeline():
                    for statement in self.statements:
                        if type(statement) is tuple:
                            cursor.execute(*statement)
                        else:
                            statement.run(conn)
            if self.usage_buckets:
                for month_ms in sorted({month_start_ms(key[2]) for key in self.usage_buckets}):
                    cursor.execute("select ensure_usage_bucket_partition(%s)", (month_ms,))
                _copy_merge(cursor, "usage_buckets", USAGE_BUCKET_COLUMNS, USAGE_BUCKET_TYPES,
                            self.usage_buckets.values(),
                            "on conflict (customer_id, meter_id, bucket_start_ms) do update set value = excluded.value,"
                            " event_count = excluded.event_count, updated_at_ms = excluded.updated_at_ms,"
                            " counted_event_time_ms = excluded.counted_event_time_ms,"
                            " counted_received_at_ms = excluded.counted_received_at_ms,"
                            " counted_identifier = excluded.counted_identifier,"
                            " source_partition = excluded.source_partition, source_offset = excluded.source_offset"
                            " where usage_buckets.source_offset < excluded.source_offset")
            if self.period_usage:
                _copy_merge(cursor, "period_usage", PERIOD_USAGE_COLUMNS, PERIOD_USAGE_TYPES,
                            self.period_usage.values(),
                            "on conflict (subscription_id, period_start_ms, meter_id) do update set"
                            " value = excluded.value, event_count = excluded.event_count,"
                            " updated_at_ms = excluded.updated_at_ms, source_partition = excluded.source_partition,"
                            " source_offset = excluded.source_offset"
                            " where period_usage.source_offset < excluded.source_offset")
            if self.transactions:
                _copy_merge(cursor, "credit_balance_transactions", TRANSACTION_COLUMNS, TRANSACTION_TYPES,
                            self.transactions.values(), "on conflict (id) do nothing")
            if self.live_balances:
                cursor.executemany(
                    "insert into live_balances (customer_id, currency, available_credits_minor, accrued_usage_minor,"
                    " live_balance_minor, as_of_ms) values (%s, %s, %s, %s, %s, %s) on conflict (customer_id, currency)"
                    " do update set available_credits_minor = excluded.available_credits_minor,"
                    " accrued_usage_minor = excluded.accrued_usage_minor, live_balance_minor = excluded.live_balance_minor,"
                    " as_of_ms = excluded.as_of_ms", list(self.live_balances.values()))


def month_start_ms(instant_ms: int) -> int:
    """The start of the UTC month holding `instant_ms`: usage buckets are partitioned by month
    (migration 0019's ensure_usage_bucket_partition makes a month's partition). An instant outside
    the years 1-9999 is a psycopg.DataError, which the projector dead-letters (no number may stop it)."""
    try:
        instant = datetime.fromtimestamp(instant_ms // 1000, timezone.utc)
    except (ValueError, OverflowError, OSError) as error:
        raise psycopg.DataError(f"bucket_start_ms {instant_ms} is outside the years 1-9999") from error
    return int(datetime(instant.year, instant.month, 1, tzinfo=timezone.utc).timestamp()) * 1000


def _copy_merge(cursor: Any, table: str, columns: tuple[str, ...], types: tuple[str, ...], rows: Any,
                conflict_clause: str) -> None:
    """Binary COPY into a temp staging table, then one INSERT ... SELECT ... ON CONFLICT merge
    (measured ~160k rows/s against ~10k for row-by-row upserts; see STACK.md section 5)."""
    staging = f"staging_{table}"
    column_list = ", ".join(columns)
    cursor.execute(f"create temp table if not exists {staging} (like {table}) on commit delete rows")
    cursor.execute(f"delete from {staging}")  # what an earlier write of this transaction left (savepoints)
    with cursor.copy(f"copy {staging} ({column_list}) from stdin (format binary)") as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
    cursor.execute(f"insert into {table} ({column_list}) select {column_list} from {staging} {conflict_clause}")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


"""The billing rules, written out plainly from the documents, folded over the raw log.

Sources: STRIPE.md (the behaviour drawdown matches), schemas/FACTS.md (facts, topics, ids),
README.md and DESIGN.md (grace period, dedupe window, live balance). Nothing here is imported from
the engine: facts are plain dicts as wire.py decodes them, money is int minor units and Decimal.

Where the documents leave a choice open, the choice is written down here, next to the rule:

- ORDER: each partition of customer-facts is one ordered log (FACTS.md). Facts are folded in offset
  order; time facts (ticks, test clocks) are on every partition and move "now" for the customers of
  that partition only. A customer on a test clock lives at its clock's frozen time; a wall-clock
  customer at the latest tick (a meter event of a wall-clock customer is judged at its received_at,
  the moment it was received).
- CATALOG: the catalog is small and written before the customer facts that use it; the oracle
  uses the whole catalog topic (first meter per id and per event name, first price per id win).
  A meter's status is judged at the event's received_at (STRIPE.md: once deactivated, NEW events
  are rejected): inactive when its latest deactivation/reactivation at or before that instant
  (deactivated_at / reactivated_at; ties: the later in the catalog) is a deactivation.
- IDENTIFIERS: an identifier is taken by the first ACCEPTED event with that (customer, event name,
  identifier); a later one within the dedupe window (from the first one's receipt) counts nothing.
- "LAST": the `last` formula takes the event latest in event time (ties: later received, then
  identifier); an hour/day window keeps the event received last (ties: later event time, then
  identifier).
- CANCEL: removes the event's value from its minute bucket and from any invoice not finalized yet,
  once, if received within 24 h of the event's receipt (STRIPE.md puts no limit on meter kinds).
- ITEMS CHANGED (ISSUE 15: "add or remove a metered price from the next period"): a period bills
  the items it started with; a change with effective_from_ms bills its items in the periods that
  start at or after it (a later change overtakes the versions from its instant on); one without
  (v1) replaces the items of every period not invoiced yet.
- TIME TIES: at the instant expires_at a grant is expired (STRIPE.md: eligible while
  period_end < expires_at; balances exclude expired credits), so an expiry due at the same instant
  as an invoice runs first.
- "EARLIEST CREATED": created_at_ms, then the earlier grant in the log.
- LIVE BALANCE (DESIGN.md "Credits", README): per currency, the ledger balance of the grants that
  will pay the customer's not-yet-invoiced periods (not voided, not expired now, eligible for one of
  those periods; with no such period, the grants effective now) minus the amounts of those periods'
  lines whose price such a grant covers. A not-yet-invoiced period is every period of a live
  subscription that has begun and is not finalized yet, with or without usage.
- INVOICE LIFECYCLE (STRIPE.md "Invoice lifecycle"): draft -> open (finalize) -> paid (pay) |
  uncollectible (mark_uncollectible) | void (only from open or uncollectible); an uncollectible
  invoice can still be paid or voided. A finalized invoice with nothing due is paid at once, as
  Stripe does, so it cannot be voided. One-off invoices: invoice items wait (pending) until an
  invoice takes them: a draft takes the pending items it names that are in its currency (at most
  250, Stripe's line limit); an item given for a draft joins it if it is still a draft. Finalizing
  bills one line per item, amount = quantity x unit amount rounded half up, and NO credits
  (STRIPE.md "Invoices": credits never apply to one-off items); its period is its creation time.
  Paying records the amount due as paid. At most 1000 pending items per customer (OURS).
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MAX_EVENT_AGE_MS = 35 * DAY_MS  # STRIPE.md: at most 35 days in the past
MAX_EVENT_LEAD_MS = 5 * MINUTE_MS  # ... at most 5 minutes in the future
CANCEL_WINDOW_MS = DAY_MS  # STRIPE.md: adjustments only for events received in the last 24 hours
EXACT = Context(prec=100)  # wide enough that nothing here is ever rounded by accident


# --- ids (FACTS.md "Deterministic ids": prefix + 24 hex of sha256 over the parts, joined by \x1f) ---


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()[:24]


def invoice_id(subscription_id: str, period_start_ms: int) -> str:
    return "in_" + _digest("invoice", subscription_id, period_start_ms)


def line_id(invoice: str, item_id: str) -> str:
    return "il_" + _digest(invoice, item_id)


def transaction_id(reason: str, grant_id: str, invoice: str | None = None, line: str | None = None) -> str:
    return "cbtxn_" + _digest(reason, grant_id, invoice or "", line or "")


# --- calendar (STRIPE.md "Period": from the interval and the anchor; the 31st bills on the last day) ---


def add_months(instant_ms: int, months: int) -> int:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=instant_ms)
    year, month0 = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    shifted = moment.replace(year=year, month=month0 + 1, day=day)
    return int((shifted - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))


def period_containing(anchor_ms: int, months: int, created_ms: int, instant_ms: int) -> tuple[int, int]:
    """[start, end) of the subscription period holding `instant_ms`: boundaries are anchor + k
    intervals (each from the anchor), and the first period starts at the creation."""
    k = 0
    while add_months(anchor_ms, k * months) > instant_ms:
        k -= 1
    while add_months(anchor_ms, (k + 1) * months) <= instant_ms:
        k += 1
    return max(add_months(anchor_ms, k * months), created_ms), add_months(anchor_ms, (k + 1) * months)


# --- money ----------------------------------------------------------------------------------------


def line_amount(quantity: Decimal, unit_amount: Decimal) -> int:
    """STRIPE.md: quantity x unit_amount_decimal, rounded to a whole minor unit per line, half up."""
    return int(EXACT.multiply(quantity, unit_amount).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- usage ----------------------------------------------------------------------------------------


@dataclass
class Event:
    """An accepted, first-seen meter event."""

    position: tuple[int, int]  # (partition, offset)
    customer_id: str
    meter_id: str
    identifier: str
    value: Decimal
    event_time_ms: int
    received_at_ms: int
    canceled: bool = False


def aggregate(meter: dict, events: list[Event]) -> tuple[Decimal, int]:
    """(aggregated value, events that count) of `events` under the meter's formula and window."""
    window = meter["event_time_window"]
    if window is not None:  # only the last event received per hour/day window counts
        size = HOUR_MS if window == "hour" else DAY_MS
        survivors: dict[int, Event] = {}
        for event in events:
            start = event.event_time_ms - event.event_time_ms % size
            current = survivors.get(start)
            if current is None or (event.received_at_ms, event.event_time_ms, event.identifier) > (
                    current.received_at_ms, current.event_time_ms, current.identifier):
                survivors[start] = event
        events = list(survivors.values())
    formula = meter["aggregation"]
    if formula == "sum":
        return sum((event.value for event in events), Decimal(0)), len(events)
    if formula == "count":
        return Decimal(len(events)), len(events)
    if not events:  # last
        return Decimal(0), 0
    latest = max(events, key=lambda event: (event.event_time_ms, event.received_at_ms, event.identifier))
    return latest.value, len(events)


def parse_value(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip())
    except Exception:  # noqa: BLE001 - not a number at all
        return None
    if not value.is_finite():
        return None
    sign, digits, exponent = value.as_tuple()
    if -exponent > 12 or len(digits) + exponent > 18:  # README/engine bound: keeps sums exact (OURS)
        return None
    return value


# --- customers ------------------------------------------------------------------------------------


@dataclass
class Grant:
    created: dict
    position: tuple[int, int]
    expires_at_ms: int | None
    transactions: list[dict] = field(default_factory=list)
    voided: bool = False
    expired: bool = False

    @property
    def grant_id(self) -> str:
        return self.created["grant_id"]

    @property
    def ledger(self) -> int:
        return sum(t["amount_minor"] if t["type"] == "credit" else -t["amount_minor"] for t in self.transactions)

    def expired_by(self, instant_ms: int) -> bool:
        return self.expired or (self.expires_at_ms is not None and self.expires_at_ms <= instant_ms)

    def eligible(self, period_end_ms: int, currency: str) -> bool:
        """STRIPE.md: period_end >= effective_at, period_end < expires_at, balance left, same currency."""
        return (not self.voided and self.created["currency"] == currency and self.ledger > 0
                and period_end_ms >= self.created["effective_at_ms"]
                and (self.expires_at_ms is None or period_end_ms < self.expires_at_ms))

    def covers(self, price: dict) -> bool:
        """Only metered prices; scope price_type metered, or the price among the listed ones."""
        if price["usage_type"] != "metered":
            return False
        scope = self.created["scope"]
        return scope["price_type"] == "metered" or price["price_id"] in scope["price_ids"]

    def order(self) -> tuple:
        """STRIPE.md: priority, earliest expiry (never last), promotional first, earliest effective,
        earliest created."""
        c = self.created
        return (c["priority"], self.expires_at_ms is None, self.expires_at_ms or 0,
                c["category"] != "promotional", c["effective_at_ms"], c["created_at_ms"], self.position)


@dataclass
class Subscription:
    created: dict
    months: int  # months per period, from its prices
    open_start_ms: int  # start of the oldest period not invoiced yet
    final_end_ms: int | None = None  # canceled: no period after this instant
    final_is_cancel: bool = False  # the period ending at final_end_ms is billed as the cancel's invoice
    ended: bool = False
    # (from instant, items): a period bills the items of the newest version from at or before its start
    item_versions: list[tuple[int, list]] = field(default_factory=list)
    # its metadata as last set (None: as created); an invoice shows it as of its finalization
    # (Stripe: parent.subscription_details.metadata is a snapshot)
    metadata: dict | None = None

    def items_of_period(self, start_ms: int) -> list:
        items = self.created["items"]
        for from_ms, version in self.item_versions:
            if from_ms <= start_ms:
                items = version
        return items

    def period_at(self, instant_ms: int) -> tuple[int, int]:
        c = self.created
        return period_containing(c["billing_cycle_anchor_ms"], self.months, c["created_at_ms"], instant_ms)

    def open_period(self) -> tuple[int, int]:
        start, end = self.open_start_ms, self.period_at(self.open_start_ms)[1]
        if self.final_end_ms is not None:
            end = min(end, self.final_end_ms)
        return start, end


@dataclass
class Customer:
    customer_id: str
    test_clock_id: str | None
    created: bool = True  # False: facts about it arrived, its CustomerCreated did not
    grants: dict[str, Grant] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    by_identifier: dict[tuple[str, str], Event] = field(default_factory=dict)  # (meter, identifier) -> latest
    invoices: dict[str, dict] = field(default_factory=dict)
    voided_invoices: dict[str, int] = field(default_factory=dict)
    items: dict[str, dict] = field(default_factory=dict)  # invoice items not billed yet (pending or on a draft)
    drafts: dict[str, dict] = field(default_factory=dict)
    settled: dict[str, str] = field(default_factory=dict)  # invoice id -> "paid" | "uncollectible"

    def status(self, invoice: dict) -> str:
        if invoice["invoice_id"] in self.voided_invoices:
            return "void"
        return self.settled.get(invoice["invoice_id"], "paid" if invoice["amount_due_minor"] == 0 else "open")


# --- the fold -------------------------------------------------------------------------------------


@dataclass
class Results:
    """What the oracle says the engine must have emitted (by id or key) and hold."""

    invoices: dict[str, dict] = field(default_factory=dict)
    voided_invoices: dict[str, dict] = field(default_factory=dict)
    paid_invoices: dict[str, dict] = field(default_factory=dict)
    uncollectible_invoices: dict[str, dict] = field(default_factory=dict)
    transactions: dict[str, dict] = field(default_factory=dict)
    buckets: dict[tuple[str, str, int], tuple[Decimal, int]] = field(default_factory=dict)
    live_balances: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    grant_balances: dict[str, tuple[int, int]] = field(default_factory=dict)  # grant -> (ledger, available)
    rejected: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset) -> code
    customers: dict[str, Customer] = field(default_factory=dict)


class Oracle:
    def __init__(self, catalog_facts: list[tuple[str, dict]], grace_ms: int, dedupe_window_ms: int) -> None:
        self.grace_ms = grace_ms
        self.dedupe_window_ms = dedupe_window_ms
        self.meters: dict[str, dict] = {}
        self.meters_by_name: dict[str, dict] = {}
        self.status_changes: dict[str, list[tuple[int, bool]]] = {}  # meter id -> (at_ms, active), catalog order
        self.prices: dict[str, dict] = {}
        for name, fact in catalog_facts:
            if name == "MeterDefined" and fact["meter_id"] not in self.meters \
                    and fact["event_name"] not in self.meters_by_name:
                self.meters[fact["meter_id"]] = self.meters_by_name[fact["event_name"]] = fact
            elif name == "MeterDeactivated":
                self.status_changes.setdefault(fact["meter_id"], []).append((fact["deactivated_at_ms"], False))
            elif name == "MeterReactivated":
                self.status_changes.setdefault(fact["meter_id"], []).append((fact["reactivated_at_ms"], True))
            elif name == "PriceCreated" and fact["price_id"] not in self.prices:
                self.prices[fact["price_id"]] = fact
        self.results = Results()

    def active_at(self, meter_id: str, instant_ms: int) -> bool:
        changes = [(at_ms, n, active) for n, (at_ms, active) in enumerate(self.status_changes.get(meter_id, []))
                   if at_ms <= instant_ms]
        return max(changes)[2] if changes else True

    # --- one partition --------------------------------------------------------------------------

    def fold_partition(self, partition: int, facts: list[tuple[int, str | None, object]]) -> None:
        customers: dict[str, Customer] = {}
        wall_now = 0
        clocks: dict[str, int] = {}

        def now_of(customer: Customer) -> int:
            return wall_now if customer.test_clock_id is None else clocks.get(customer.test_clock_id, 0)

        for offset, name, fact in facts:
            position = (partition, offset)
            if name is None:
                self.results.rejected[position] = "undecodable_fact"
            elif name == "TimeTicked":
                wall_now = max(wall_now, fact["now_ms"])
                for customer in customers.values():
                    if customer.test_clock_id is None:
                        self._advance(customer, wall_now)
            elif name in ("TestClockCreated", "TestClockAdvanced"):
                clock = fact["test_clock_id"]
                clocks[clock] = max(clocks.get(clock, fact["frozen_time_ms"]), fact["frozen_time_ms"])
                for customer in customers.values():
                    if customer.test_clock_id == clock:
                        self._advance(customer, clocks[clock])
            elif name == "TestClockDeleted":
                pass
            elif name == "MeterEventRecorded":
                self._meter_event(position, fact, customers, clocks)
            elif name == "MeterEventCanceled":
                self._cancel(position, fact, customers)
            elif name == "CustomerCreated":
                existing = customers.get(fact["customer_id"])
                if existing is None or not existing.created:  # the first fact of an id wins
                    customers[fact["customer_id"]] = Customer(fact["customer_id"], fact["test_clock_id"])
                self._advance(customers[fact["customer_id"]], now_of(customers[fact["customer_id"]]))
            else:
                customer = customers.get(fact["customer_id"])
                if customer is None:  # a fact about a customer never created: not ours to apply
                    customer = customers[fact["customer_id"]] = Customer(fact["customer_id"], None, created=False)
                code = self._customer_fact(position, name, fact, customer)
                if code is not None:
                    self.results.rejected[position] = code
                self._advance(customer, now_of(customer))
        for customer in customers.values():
            self._finish(customer, now_of(customer))
        self.results.customers.update(customers)

    # --- meter events -----------------------------------------------------------------------------

    def _meter_event(self, position, fact: dict, customers: dict[str, Customer], clocks: dict[str, int]) -> None:
        meter = self.meters_by_name.get(fact["event_name"])
        code = None
        customer_id = meter and fact["payload"].get(meter["customer_payload_key"], "")
        value_text = meter and fact["payload"].get(meter["value_payload_key"])
        if len(fact["event_name"]) > 100:
            code = "event_name_too_long"
        elif len(fact["identifier"]) > 100:
            code = "identifier_too_long"
        elif meter is None:
            code = "no_meter"
        elif not self.active_at(meter["meter_id"], fact["received_at_ms"]):
            code = "archived_meter"
        elif not customer_id:
            code = "meter_event_no_customer_defined"
        elif customer_id not in customers or not customers[customer_id].created:
            code = "meter_event_customer_not_found"
        elif value_text is None and meter["aggregation"] != "count":
            code = "meter_event_value_not_found"
        elif value_text is not None and parse_value(value_text) is None:
            code = "meter_event_invalid_value"
        if code is None:
            customer = customers[customer_id]
            now = fact["received_at_ms"] if customer.test_clock_id is None else clocks.get(customer.test_clock_id, 0)
            if fact["event_time_ms"] < now - MAX_EVENT_AGE_MS:
                code = "timestamp_too_far_in_past"
            elif fact["event_time_ms"] > now + MAX_EVENT_LEAD_MS:
                code = "timestamp_in_future"
        if code is not None:
            self.results.rejected[position] = code
            return
        earlier = customer.by_identifier.get((meter["meter_id"], fact["identifier"]))
        if earlier is not None and fact["received_at_ms"] - earlier.received_at_ms <= self.dedupe_window_ms:
            return  # a retry of an event already counted
        value = Decimal(1) if value_text is None else parse_value(value_text)
        event = Event(position, customer_id, meter["meter_id"], fact["identifier"], value,
                      fact["event_time_ms"], fact["received_at_ms"])
        customer.events.append(event)
        customer.by_identifier[(meter["meter_id"], fact["identifier"])] = event

    def _cancel(self, position, fact: dict, customers: dict[str, Customer]) -> None:
        meter = self.meters_by_name.get(fact["event_name"])
        named = fact["customer_id"]
        targets = []
        for customer in customers.values():
            if named is not None and customer.customer_id != named:
                continue
            event = meter and customer.by_identifier.get((meter["meter_id"], fact["identifier"]))
            if event is not None:
                targets.append(event)  # the event the identifier names now
        if not targets:
            if named is not None:
                self.results.rejected[position] = "meter_event_not_found"
            return
        canceled_now = too_late = False
        for event in targets:
            if event.canceled:
                continue  # canceled once
            if fact["received_at_ms"] - event.received_at_ms > CANCEL_WINDOW_MS:
                too_late = True
                continue
            event.canceled = canceled_now = True
        if too_late and not canceled_now:
            # It found its event, too late: an error reported later (Stripe's meter error reports),
            # with or without a customer named.
            self.results.rejected[position] = "meter_event_cancel_window_passed"

    # --- customer facts -----------------------------------------------------------------------------

    def _customer_fact(self, position, name: str, fact: dict, customer: Customer) -> str | None:
        """Apply one customer fact; returns a rejection code, or None."""
        if name == "SubscriptionCreated":
            if fact["subscription_id"] not in customer.subscriptions:
                price = self.prices[fact["items"][0]["price_id"]]
                months = price["recurring_interval_count"] * (12 if price["recurring_interval"] == "year" else 1)
                c = fact
                start = period_containing(c["billing_cycle_anchor_ms"], months, c["created_at_ms"], c["created_at_ms"])[0]
                customer.subscriptions[fact["subscription_id"]] = Subscription(fact, months, start)
            return None
        if name == "SubscriptionUpdated":
            sub = customer.subscriptions.get(fact["subscription_id"])
            if sub is not None:
                sub.metadata = dict(fact["metadata"])
            return None
        if name == "SubscriptionCanceled":
            sub = customer.subscriptions.get(fact["subscription_id"])
            if sub is None or sub.ended:
                return None
            at = fact["canceled_at_ms"]
            # Periods already over keep their invoices; the period the cancel falls in is billed up
            # to the cancel with invoice_now, else not at all (STRIPE.md "Cancel").
            sub.final_end_ms = at if fact["invoice_now"] else max(sub.period_at(at)[0], sub.open_start_ms)
            sub.final_is_cancel = fact["invoice_now"]
            if sub.final_end_ms <= sub.open_start_ms:
                sub.ended = True
            return None
        if name == "SubscriptionCancelScheduled":
            sub = customer.subscriptions.get(fact["subscription_id"])
            if sub is not None and not sub.ended:
                sub.final_end_ms = sub.period_at(fact["scheduled_at_ms"])[1] if fact["cancel_at_period_end"] else None
                sub.final_is_cancel = fact["cancel_at_period_end"]
            return None
        if name == "SubscriptionItemsChanged":
            sub = customer.subscriptions.get(fact["subscription_id"])
            if sub is None:
                return "resource_missing"
            from_ms = fact.get("effective_from_ms")
            if from_ms is None:  # at once: every period not invoiced yet
                sub.created, sub.item_versions = {**sub.created, "items": fact["items"]}, []
            else:  # from the periods starting at or after it; later versions it overtakes go
                sub.item_versions = [v for v in sub.item_versions if v[0] < from_ms] + [(from_ms, fact["items"])]
            return None
        if name == "CreditGrantCreated":
            if fact["grant_id"] not in customer.grants:
                grant = Grant(fact, position, fact["expires_at_ms"])
                self._write(customer, grant, "credits_granted", fact["amount_minor"], fact["effective_at_ms"])
                customer.grants[fact["grant_id"]] = grant
            return None
        grant = customer.grants.get(fact.get("grant_id", ""))
        if name == "CreditGrantUpdated":
            if grant is not None:
                grant.expires_at_ms = fact["expires_at_ms"]
            return None
        if name in ("CreditGrantExpired", "CreditGrantVoided"):
            if grant is None:
                return "billing_error"
            if grant.voided:
                return "credit_grant_already_voided"
            if grant.expired:
                return "credit_grant_already_expired"
            if name == "CreditGrantExpired":
                self._expire(customer, grant, fact["expired_at_ms"])
                return None
            if any(t["reason"] == "credits_applied" for t in grant.transactions):
                return "credit_grant_already_applied"  # STRIPE.md: only if none was ever applied
            if grant.ledger > 0:
                self._write(customer, grant, "credits_voided", grant.ledger, fact["voided_at_ms"])
            grant.voided = True
            return None
        if name in ("InvoiceItemCreated", "InvoiceItemDeleted", "InvoiceCreated", "InvoiceFinalizeRequested",
                    "InvoicePayRequested", "InvoiceMarkUncollectibleRequested"):
            return self._invoice_lifecycle(name, fact, customer)
        if name == "InvoiceVoidRequested":
            invoice = customer.invoices.get(fact["invoice_id"])
            if invoice is None:
                return "resource_missing"
            if fact["invoice_id"] in customer.voided_invoices:
                return "invoice_already_voided"
            if customer.status(invoice) not in ("open", "uncollectible"):
                return "invoice_unexpected_status"
            at = fact["requested_at_ms"]
            customer.settled.pop(fact["invoice_id"], None)
            customer.voided_invoices[fact["invoice_id"]] = at
            self.results.voided_invoices[fact["invoice_id"]] = {
                "invoice_id": fact["invoice_id"], "customer_id": customer.customer_id, "voided_at_ms": at}
            for line in invoice["lines"]:  # STRIPE.md: credits go back, and expire at once if the grant has
                for credit in line["credits"]:
                    grant = customer.grants[credit["grant_id"]]
                    self._write(customer, grant, "credits_application_invoice_voided", credit["amount_minor"], at,
                                invoice["invoice_id"], line["line_id"])
                    if grant.expired_by(at):
                        self._write(customer, grant, "credits_expired", credit["amount_minor"], at,
                                    invoice["invoice_id"], line["line_id"])
                        grant.expired = True
            return None
        return "unexpected_fact"

    def _invoice_lifecycle(self, name: str, fact: dict, customer: Customer) -> str | None:
        if name == "InvoiceItemCreated":
            if fact["invoice_item_id"] in customer.items:
                return None  # a retried create
            if fact["invoice_id"] is not None and fact["invoice_id"] not in customer.drafts:
                return "invoice_item_not_pending"
            waiting = sum(1 for item in customer.items.values() if item["invoice_id"] == fact["invoice_id"])
            if waiting >= (250 if fact["invoice_id"] else 1000):
                return "too_many_invoice_items"
            customer.items[fact["invoice_item_id"]] = dict(fact)
            return None
        if name == "InvoiceItemDeleted":
            return None if customer.items.pop(fact["invoice_item_id"], None) else "invoice_item_not_pending"
        if name == "InvoiceCreated":
            if fact["invoice_id"] in customer.drafts or fact["invoice_id"] in customer.invoices:
                return None
            customer.drafts[fact["invoice_id"]] = fact
            for item_id in fact["invoice_item_ids"][:250]:
                item = customer.items.get(item_id)
                if item is not None and item["invoice_id"] is None and item["currency"] == fact["currency"]:
                    item["invoice_id"] = fact["invoice_id"]
            return None
        invoice_id_ = fact["invoice_id"]
        invoice = customer.invoices.get(invoice_id_)
        at = fact["requested_at_ms"]
        if name == "InvoiceFinalizeRequested":
            draft = customer.drafts.pop(invoice_id_, None)
            if draft is None:
                return "resource_missing" if invoice is None else "invoice_unexpected_status"
            items = [item for item in customer.items.values() if item["invoice_id"] == invoice_id_]
            lines = []
            for item in items:
                quantity, unit = Decimal(item["quantity"]), Decimal(item["unit_amount_decimal"])
                lines.append({"line_id": line_id(invoice_id_, item["invoice_item_id"]), "subscription_item_id": None,
                              "price_id": item["price_id"], "meter_id": None, "quantity": quantity,
                              "unit_amount_decimal": unit, "amount_minor": line_amount(quantity, unit), "credits": [],
                              "invoice_item_id": item["invoice_item_id"], "description": item["description"]})
                del customer.items[item["invoice_item_id"]]
            subtotal = sum(line["amount_minor"] for line in lines)
            record = {"invoice_id": invoice_id_, "customer_id": customer.customer_id, "subscription_id": None,
                      "currency": draft["currency"], "period_start_ms": draft["created_at_ms"],
                      "period_end_ms": draft["created_at_ms"], "billing_reason": "manual", "finalized_at_ms": at,
                      "lines": lines, "subtotal_minor": subtotal, "total_credits_minor": 0, "amount_due_minor": subtotal,
                      "subscription_metadata": None}
            customer.invoices[invoice_id_] = self.results.invoices[invoice_id_] = record
            return None
        if invoice is None:
            return "resource_missing"
        status = customer.status(invoice)
        if name == "InvoicePayRequested":
            if status not in ("open", "uncollectible"):
                return "invoice_unexpected_status"
            customer.settled[invoice_id_] = "paid"
            self.results.paid_invoices[invoice_id_] = {
                "invoice_id": invoice_id_, "customer_id": customer.customer_id,
                "amount_paid_minor": invoice["amount_due_minor"], "paid_out_of_band": fact["paid_out_of_band"],
                "paid_at_ms": at}
            return None
        if status != "open":  # mark uncollectible
            return "invoice_unexpected_status"
        customer.settled[invoice_id_] = "uncollectible"
        self.results.uncollectible_invoices[invoice_id_] = {
            "invoice_id": invoice_id_, "customer_id": customer.customer_id, "marked_uncollectible_at_ms": at}
        return None

    def _write(self, customer: Customer, grant: Grant, reason: str, amount: int, effective_at_ms: int,
               invoice: str | None = None, line: str | None = None) -> dict:
        credit = reason in ("credits_granted", "credits_application_invoice_voided")
        transaction = {
            "transaction_id": transaction_id(reason, grant.grant_id, invoice, line),
            "customer_id": customer.customer_id, "grant_id": grant.grant_id,
            "currency": grant.created["currency"], "amount_minor": amount,
            "type": "credit" if credit else "debit", "reason": reason,
            "invoice_id": invoice, "invoice_line_id": line, "effective_at_ms": effective_at_ms}
        assert amount > 0 and (credit or amount <= grant.ledger), transaction
        grant.transactions.append(transaction)
        self.results.transactions[transaction["transaction_id"]] = transaction
        return transaction

    def _expire(self, customer: Customer, grant: Grant, at_ms: int) -> None:
        if grant.ledger > 0:
            self._write(customer, grant, "credits_expired", grant.ledger, at_ms)
        grant.expired = True

    # --- time ---------------------------------------------------------------------------------------

    def _advance(self, customer: Customer, now_ms: int) -> None:
        """Everything due by `now_ms`, in time order: grant expiries, invoice finalizations."""
        while True:
            due = []
            for grant in customer.grants.values():
                if grant.expires_at_ms is not None and not grant.voided and not grant.expired:
                    due.append((grant.expires_at_ms, 0, grant.grant_id))
            for sub in customer.subscriptions.values():
                if not sub.ended:
                    due.append((sub.open_period()[1] + self.grace_ms, 1, sub.created["subscription_id"]))
            due = sorted(item for item in due if item[0] <= now_ms)
            if not due:
                return
            at_ms, kind, item_id = due[0]
            if kind == 0:
                self._expire(customer, customer.grants[item_id], at_ms)
            else:
                self._finalize(customer, customer.subscriptions[item_id], at_ms)

    def _period_usage(self, customer: Customer, meter_id: str, start_ms: int, end_ms: int) -> Decimal:
        events = [e for e in customer.events if e.meter_id == meter_id and not e.canceled
                  and start_ms <= e.event_time_ms < end_ms]
        return aggregate(self.meters[meter_id], events)[0]

    def _lines(self, customer: Customer, sub: Subscription, start_ms: int, end_ms: int) -> list[dict]:
        invoice = invoice_id(sub.created["subscription_id"], start_ms)
        lines = []
        for item in sub.items_of_period(start_ms):
            price = self.prices[item["price_id"]]
            if price["usage_type"] == "metered":  # a negative period total bills 0
                quantity = max(self._period_usage(customer, price["meter_id"], start_ms, end_ms), Decimal(0))
            else:
                quantity = Decimal(item["quantity"])
            unit = Decimal(price["unit_amount_decimal"])
            lines.append({"line_id": line_id(invoice, item["item_id"]), "subscription_item_id": item["item_id"],
                          "price_id": price["price_id"],
                          "meter_id": price["meter_id"] if price["usage_type"] == "metered" else None,
                          "quantity": quantity, "unit_amount_decimal": unit,
                          "amount_minor": line_amount(quantity, unit), "credits": [], "invoice_item_id": None,
                          "description": None})
        return lines

    def _finalize(self, customer: Customer, sub: Subscription, due_ms: int) -> None:
        start_ms, end_ms = sub.open_period()
        currency = sub.created["currency"]
        invoice = invoice_id(sub.created["subscription_id"], start_ms)
        lines = self._lines(customer, sub, start_ms, end_ms)
        grants = sorted((g for g in customer.grants.values() if g.eligible(end_ms, currency)), key=Grant.order)
        for line in lines:  # lines in invoice order, each from the grants in application order
            price = self.prices[line["price_id"]]
            left = line["amount_minor"]
            for grant in grants:
                if left == 0:
                    break
                if grant.ledger == 0 or not grant.covers(price):
                    continue
                amount = min(left, grant.ledger)
                transaction = self._write(customer, grant, "credits_applied", amount, due_ms, invoice, line["line_id"])
                line["credits"].append({"credit_balance_transaction_id": transaction["transaction_id"],
                                        "grant_id": grant.grant_id, "amount_minor": amount})
                left -= amount
        final = sub.final_end_ms is not None and end_ms >= sub.final_end_ms
        subtotal = sum(line["amount_minor"] for line in lines)
        credits = sum(credit["amount_minor"] for line in lines for credit in line["credits"])
        record = {"invoice_id": invoice, "customer_id": customer.customer_id,
                  "subscription_id": sub.created["subscription_id"], "currency": currency,
                  "period_start_ms": start_ms, "period_end_ms": end_ms,
                  "billing_reason": "subscription_cancel" if final and sub.final_is_cancel else "subscription_cycle",
                  "finalized_at_ms": due_ms, "lines": lines, "subtotal_minor": subtotal,
                  "total_credits_minor": credits, "amount_due_minor": subtotal - credits,
                  "subscription_metadata": dict(sub.created.get("metadata") or {}) if sub.metadata is None
                  else dict(sub.metadata)}
        customer.invoices[invoice] = self.results.invoices[invoice] = record
        if final:
            sub.ended = True
        else:
            sub.open_start_ms = end_ms

    # --- what is left at the end of the log --------------------------------------------------------

    def _uninvoiced_periods(self, customer: Customer, sub: Subscription, now_ms: int) -> list[tuple[int, int]]:
        """The periods of a live subscription that have begun by `now_ms` and are not invoiced."""
        periods = []
        start = sub.open_start_ms
        while not sub.ended and start <= now_ms and (sub.final_end_ms is None or start < sub.final_end_ms):
            end = sub.period_at(start)[1]
            if sub.final_end_ms is not None:
                end = min(end, sub.final_end_ms)
            periods.append((start, end))
            start = end
        return periods

    def _finish(self, customer: Customer, now_ms: int) -> None:
        results = self.results
        by_minute: dict[tuple[str, int], list[Event]] = {}  # every minute that ever counted an event
        for event in customer.events:
            minute = event.event_time_ms - event.event_time_ms % MINUTE_MS
            by_minute.setdefault((event.meter_id, minute), [])
            if not event.canceled:
                by_minute[(event.meter_id, minute)].append(event)
        for (meter_id, minute), events in by_minute.items():
            results.buckets[(customer.customer_id, meter_id, minute)] = aggregate(self.meters[meter_id], events)
        currencies = {g.created["currency"] for g in customer.grants.values()} | {
            s.created["currency"] for s in customer.subscriptions.values()}  # a currency once used keeps a balance
        for currency in sorted(currencies):
            live_grants = [g for g in customer.grants.values() if g.created["currency"] == currency
                           and not g.voided and not g.expired_by(now_ms)]
            counted: set[str] = set()
            accrued = 0
            held: dict[str, int] = {}
            any_period = False
            for sub in customer.subscriptions.values():
                if sub.created["currency"] != currency:
                    continue
                for start, end in self._uninvoiced_periods(customer, sub, now_ms):
                    any_period = True
                    eligible = [g for g in live_grants if g.eligible(end, currency)]
                    counted.update(g.grant_id for g in eligible)
                    for line in self._lines(customer, sub, start, end):
                        if any(g.covers(self.prices[line["price_id"]]) for g in eligible):
                            accrued += line["amount_minor"]
                    if end <= now_ms:  # a draft waiting out its grace period holds its credits
                        self._hold(customer, sub, start, end, currency, held)
            if not any_period:
                counted = {g.grant_id for g in live_grants if g.created["effective_at_ms"] <= now_ms}
            available = sum(g.ledger for g in live_grants if g.grant_id in counted)
            results.live_balances[(customer.customer_id, currency)] = (available, accrued, available - accrued)
            for grant in customer.grants.values():
                if grant.created["currency"] == currency:
                    usable = 0 if grant.voided or grant.expired_by(now_ms) else grant.ledger - held.get(grant.grant_id, 0)
                    results.grant_balances[grant.grant_id] = (grant.ledger, max(0, usable))

    def _hold(self, customer, sub, start, end, currency, held: dict[str, int]) -> None:
        """Credits a draft invoice for [start, end) would take (STRIPE.md: available excludes them)."""
        left_by_grant = {g.grant_id: g.ledger - held.get(g.grant_id, 0) for g in customer.grants.values()}
        grants = sorted((g for g in customer.grants.values() if g.eligible(end, currency)), key=Grant.order)
        for line in self._lines(customer, sub, start, end):
            left = line["amount_minor"]
            for grant in grants:
                take = min(left, left_by_grant[grant.grant_id]) if grant.covers(self.prices[line["price_id"]]) else 0
                if take > 0:
                    left_by_grant[grant.grant_id] -= take
                    held[grant.grant_id] = held.get(grant.grant_id, 0) + take
                    left -= take


def run(catalog: dict[int, list], customer_facts: dict[int, list], grace_ms: int, dedupe_window_ms: int) -> Results:
    """The oracle over a whole log: `catalog` and `customer_facts` as wire.read_facts returns them."""
    catalog_facts = [(name, fact) for partition in sorted(catalog) for _, name, fact in catalog[partition]
                     if name is not None]
    oracle = Oracle(catalog_facts, grace_ms, dedupe_window_ms)
    for partition in sorted(customer_facts):
        oracle.fold_partition(partition, customer_facts[partition])
    return oracle.results


def run_from_kafka(kafka: Mapping[str, Any], topic_prefix: str, grace_ms: int, dedupe_window_ms: int) -> Results:
    """The oracle over the facts now on the topics; `kafka`: the client configuration to read them with."""
    from tests.oracle import wire

    return run(wire.read_facts(kafka, f"{topic_prefix}.catalog"),
               wire.read_facts(kafka, f"{topic_prefix}.customer-facts"), grace_ms, dedupe_window_ms)

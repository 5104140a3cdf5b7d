"""Stripe event objects derived from the facts, written by the projector with the rows.

An event is rendered at its place in the batch's statements, right after the rows of the fact it
comes from, so its data.object is the object as that fact left it (the API's own rendering,
api/objects.py), whatever the batch boundaries: a rebuild renders the same events. Its id is
derived, never drawn:
- from the object's id for what happens once to an object (customer.created, invoice.finalized,
  billing.credit_balance_transaction.created): a derived fact the workers emit twice is one event;
- from the fact's place in the log (topic, partition, offset) for what can happen many times
  (billing.credit_grant.updated, billing.meter.updated ...).
`created` is the fact's record timestamp (when it was written), not the clock of the projector.

An event type is one line in projections/writers.py: `self._event(type, render, key)` in the rule of
the fact it comes from, with a renderer from this module.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Json

from api import objects
from projections.retention import EVENT_RETENTION_MS

Render = Callable[[objects.Fetch], dict[str, Any] | None]  # None: no event after all

METER_ERROR_REPORT = "v1.billing.meter.error_report_triggered"
# Drawdown's own (Stripe has no event for them): a credit-balance alert's balance back above its
# threshold (the alert re-armed), and an endpoint the dispatcher disabled after failing.
BILLING_ALERT_RECOVERED = "billing.alert.recovered"
WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint.disabled"


def event_id(event_type: str, *key: Any) -> str:
    """evt_ + 24 hex digits of sha256(type, key): the same fact always gives the same id."""
    text = "\x1f".join([event_type, *(str(part) for part in key)])
    return "evt_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def event_object(event_id_: str, event_type: str, created_ms: int, data_object: dict[str, Any],
                 previous_attributes: dict[str, Any] | None = None,
                 request: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
    """Stripe's event object; `request`: the (Request-Id, Idempotency-Key) of the API request that
    caused it (None: the engine did, e.g. an invoice finalized at period end)."""
    data: dict[str, Any] = {"object": data_object}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    request_id, idempotency_key = request or (None, None)
    return {"id": event_id_, "object": "event", "api_version": None, "created": created_ms // 1000, "data": data,
            "livemode": False, "pending_webhooks": 0, "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": event_type}


EVENT_ORDER_LOCK = 0x65767473  # "evts"


def lock_event_order(conn: Any) -> None:
    """Taken by every transaction that writes events, before the first: event seqs are then handed
    out in commit order, which is what lets the dispatcher read them with a cursor."""
    conn.execute("select pg_advisory_xact_lock(%s)", (EVENT_ORDER_LOCK,))


INSERT_EVENT = ("insert into events (id, type, created_ms, body) values (%s, %s, %s, %s)"
                " on conflict (id) do nothing")


def insert_event(conn: Any, event: dict[str, Any], created_ms: int) -> None:
    conn.execute(INSERT_EVENT, (event["id"], event["type"], created_ms, Json(event)))


def _fetcher(conn: Any) -> objects.Fetch:
    def fetch(statement: str, *params: Any) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(statement, params).fetchall()

    return fetch


@dataclass(eq=False)
class EventStep:
    """One event, written when the batch's statements reach it (inside the batch's transaction)."""

    event_id: str
    event_type: str
    created_ms: int
    render: Render
    with_previous: bool = False  # data.previous_attributes from the object before the fact
    before: dict[str, Any] | None = field(default=None, repr=False)
    request: tuple[str | None, str | None] | None = None  # the API request behind the fact, if one

    def before_step(self) -> BeforeStep:
        """The step to put before the fact's statements: it renders the object as it was."""
        self.with_previous = True
        return BeforeStep(self)

    def run(self, conn: Any) -> None:
        if self.created_ms < time.time() * 1000 - EVENT_RETENTION_MS:
            return  # past retention (a rebuild re-reading old facts): neither served nor sent again
        data_object = self.render(_fetcher(conn))
        if data_object is None:
            return
        previous = None
        if self.with_previous:
            before = self.before or {}
            previous = {key: before.get(key) for key, value in data_object.items() if before.get(key) != value}
        insert_event(conn, event_object(self.event_id, self.event_type, self.created_ms, data_object, previous,
                                        self.request), self.created_ms)


@dataclass(eq=False)
class BeforeStep:
    step: EventStep

    def run(self, conn: Any) -> None:
        self.step.before = self.step.render(_fetcher(conn))


# --- renderers: the object an event carries, read at the event's place in the batch -------------

def _row(fetch: objects.Fetch, table: str, object_id: str) -> dict[str, Any] | None:
    rows = fetch(f"select * from {table} where id = %s", object_id)
    return rows[0] if rows else None


def customer(customer_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "customers", customer_id), objects.customer)


def meter(meter_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "meters", meter_id), objects.meter)


def product(product_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "products", product_id), objects.product)


def price(price_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "prices", price_id), objects.price)


def credit_grant(grant_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "credit_grants", grant_id), objects.credit_grant)


def subscription(subscription_id: str, at_ms: int) -> Render:
    """The subscription with the period containing `at_ms` (the fact's own time, not the clock's)."""
    return lambda fetch: _render(_row(fetch, "subscriptions", subscription_id),
                                 lambda row: objects.load_subscription(fetch, row, at_ms))


def invoice(invoice_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "invoices", invoice_id), lambda row: objects.load_invoice(fetch, row))


def billing_alert_crossing(crossing_id: str) -> Render:
    """billing.alert_triggered (or _recovered) with the alert as it stood then."""
    def render(fetch: objects.Fetch) -> dict[str, Any] | None:
        crossing = _row(fetch, "billing_alert_crossings", crossing_id)
        alert = None if crossing is None else _row(fetch, "billing_alerts", crossing["alert_id"])
        return None if alert is None else objects.billing_alert_crossing(crossing, alert)

    return render


def billing_alert(alert_id: str) -> Render:
    return lambda fetch: _render(_row(fetch, "billing_alerts", alert_id), objects.billing_alert)


def credit_balance_transaction(row: dict[str, Any]) -> Render:
    """From the fact's own row: a transaction never changes."""
    return lambda fetch: objects.credit_balance_transaction(row)


def meter_error_report(reason_code: str, message: str, customer_id: str | None, event_name: str | None,
                       identifier: str | None, at_ms: int, written: tuple[str, tuple[Any, ...]]) -> Render:
    """Modelled on the data of Stripe's v1.billing.meter.error_report_triggered (one report per
    dead-lettered meter event or adjustment, error_count 1); `written` is a query that finds the
    dead letter (no row, no event: a cancel is "not found" only once every partition missed it)."""

    def render(fetch: objects.Fetch) -> dict[str, Any] | None:
        if not fetch(*written[:1], *written[1]):
            return None
        meters = fetch("select id from meters where event_name = %s", event_name) if event_name else []
        at_s = at_ms // 1000
        return {
            "object": "billing.meter_error_report", "meter": meters[0]["id"] if meters else None,
            "customer": customer_id, "event_name": event_name, "developer_message_summary": message,
            "reason": {"error_count": 1, "error_types": [{
                "code": reason_code, "error_count": 1,
                "sample_errors": [{"error_message": message, "request": {"id": None, "identifier": identifier}}]}]},
            "validation_start": at_s, "validation_end": at_s}

    return render


def _render(row: dict[str, Any] | None, render: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | None:
    return None if row is None else render(row)

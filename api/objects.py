"""Projection rows -> Stripe-shaped objects (times in unix seconds, money in minor units)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from billing.facts import RecurringInterval
from billing.periods import subscription_period_containing

# fetch(statement, *params) -> rows as dicts: how a renderer that needs more rows reads them
# (the API from its pool, the projector inside its batch's transaction).
Fetch = Callable[..., list[dict[str, Any]]]


def seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def decimal_text(value: Decimal) -> str:
    """Canonical decimal string without exponent or trailing zeros ("3", "0.0125")."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def number(value: Decimal) -> int | str:
    """An exact JSON value for a decimal: an integer when whole, else its decimal string (never float)."""
    return int(value) if value == value.to_integral_value() else decimal_text(value)


def monetary(amount_minor: int, currency: str) -> dict[str, Any]:
    return {"type": "monetary", "monetary": {"currency": currency, "value": amount_minor}}


def meter(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "billing.meter", "created": seconds(row["created_ms"]),
        "customer_mapping": {"event_payload_key": row["customer_payload_key"], "type": "by_id"},
        "default_aggregation": {"formula": row["aggregation"]}, "display_name": row["display_name"],
        "event_name": row["event_name"], "event_time_window": row["event_time_window"], "livemode": False,
        "status": row["status"],
        "status_transitions": {"deactivated_at": seconds(row["updated_ms"]) if row["status"] == "inactive" else None},
        "updated": seconds(row["updated_ms"]), "value_settings": {"event_payload_key": row["value_payload_key"]},
    }


def product(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "product", "active": row["active"], "created": seconds(row["created_ms"]),
            "description": row["description"], "livemode": False, "metadata": row["metadata"], "name": row["name"],
            "type": "service", "updated": seconds(row["updated_ms"] or row["created_ms"])}


def price(row: dict[str, Any]) -> dict[str, Any]:
    unit = row["unit_amount_decimal"]
    return {
        "id": row["id"], "object": "price", "active": row["active"], "billing_scheme": "per_unit",
        "created": seconds(row["created_ms"]), "currency": row["currency"], "livemode": False,
        "lookup_key": row["lookup_key"], "metadata": row["metadata"], "nickname": row["nickname"],
        "product": row["product_id"],
        "recurring": {"interval": row["recurring_interval"], "interval_count": row["recurring_interval_count"],
                      "meter": row["meter_id"], "usage_type": row["usage_type"], "aggregate_usage": None,
                      "trial_period_days": None},
        "tax_behavior": "unspecified", "type": "recurring",
        "unit_amount": int(unit) if unit == unit.to_integral_value() else None,
        "unit_amount_decimal": decimal_text(unit),
    }


def customer(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "customer", "balance": 0, "created": seconds(row["created_ms"]),
            "currency": None, "email": row["email"], "livemode": False, "metadata": row["metadata"],
            "name": row["name"], "test_clock": row["test_clock_id"]}


def subscription(row: dict[str, Any], items: list[dict[str, Any]], prices: dict[str, dict[str, Any]],
                 period: tuple[int, int] | None) -> dict[str, Any]:
    period_start, period_end = (seconds(period[0]), seconds(period[1])) if period else (None, None)
    url = f"/v1/subscription_items?subscription={row['id']}"
    return {
        "id": row["id"], "object": "subscription", "billing_cycle_anchor": seconds(row["billing_cycle_anchor_ms"]),
        "cancel_at_period_end": row["cancel_at_period_end"], "canceled_at": seconds(row["canceled_ms"]),
        "created": seconds(row["created_ms"]), "currency": row["currency"], "current_period_start": period_start,
        "current_period_end": period_end, "customer": row["customer_id"], "ended_at": seconds(row["ended_ms"]),
        "items": {"object": "list", "has_more": False, "url": url, "data": [
            {"id": item["id"], "object": "subscription_item", "created": seconds(row["created_ms"]),
             "current_period_start": period_start, "current_period_end": period_end, "metadata": item["metadata"],
             "price": price(prices[item["price_id"]]) if item["price_id"] in prices else None,
             "quantity": item["quantity"], "subscription": row["id"]} for item in items]},
        "livemode": False, "metadata": row["metadata"], "start_date": seconds(row["created_ms"]), "status": row["status"],
        "test_clock": row["test_clock_id"],
    }


def current_period(subscription: dict[str, Any], price: dict[str, Any], at_ms: int) -> tuple[int, int]:
    """The subscription's billing period containing `at_ms` (its first period before it starts)."""
    period = subscription_period_containing(
        subscription["created_ms"], subscription["billing_cycle_anchor_ms"],
        RecurringInterval(price["recurring_interval"]), price["recurring_interval_count"],
        max(at_ms, subscription["created_ms"]))
    return period.start_ms, period.end_ms


def subscription_item_versions(fetch: Fetch, subscription_id: str, at_ms: int) -> tuple[list, list]:
    """(the items billing the period that holds `at_ms`, the next version waiting for a later
    period: [] if none). A version bills the periods starting at or after its effective_from_ms,
    which is a period's start, so the one in effect at any instant of a period is its period's."""
    rows = fetch("select * from subscription_items where subscription_id = %s order by effective_from_ms, position",
                 subscription_id)
    versions: dict[int, list] = {}
    for item in rows:
        versions.setdefault(item["effective_from_ms"], []).append(item)
    current = max((from_ms for from_ms in versions if from_ms <= at_ms), default=None)
    later = min((from_ms for from_ms in versions if from_ms > at_ms), default=None)
    return versions.get(current, []), versions.get(later, [])


def load_subscription(fetch: Fetch, row: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """The subscription object of `row` with its items, prices and the period containing `at_ms`,
    and (drawdown's own `next_period_items`) the items that bill from a later period on."""
    items, next_items = subscription_item_versions(fetch, row["id"], at_ms)
    prices = {price["id"]: price for price in fetch("select * from prices where id = any(%s)",
                                                     [item["price_id"] for item in items + next_items])}
    period = None
    if items and items[0]["price_id"] in prices:
        period = current_period(row, prices[items[0]["price_id"]], at_ms)
    rendered = subscription(row, items, prices, period)
    rendered["next_period_items"] = None if not next_items else {
        "effective_at": seconds(next_items[0]["effective_from_ms"]),
        "data": subscription(row, next_items, prices, None)["items"]["data"]}
    return rendered


def load_invoice(fetch: Fetch, row: dict[str, Any]) -> dict[str, Any]:
    """The invoice object of `row` with its lines, credits and its customer's test clock."""
    lines = fetch("select * from invoice_lines where invoice_id = %s order by position", row["id"])
    credits = fetch("select * from invoice_line_credits where invoice_id = %s order by invoice_line_id, position",
                    row["id"])
    order = {line["id"]: index for index, line in enumerate(lines)}
    credits.sort(key=lambda credit: (order.get(credit["invoice_line_id"], 0), credit["position"]))
    customers = fetch("select test_clock_id from customers where id = %s", row["customer_id"])
    subscriptions = fetch("select metadata from subscriptions where id = %s", row["subscription_id"]) \
        if row["subscription_id"] else []
    return invoice(row, lines, credits, customers[0]["test_clock_id"] if customers else None,
                   subscriptions[0]["metadata"] if subscriptions else {})


def credit_grant(row: dict[str, Any]) -> dict[str, Any]:
    scope: dict[str, Any] = ({"price_type": row["scope_price_type"]} if row["scope_price_type"]
                             else {"prices": [{"id": price_id} for price_id in row["scope_price_ids"]]})
    return {
        "id": row["id"], "object": "billing.credit_grant", "amount": monetary(row["amount_minor"], row["currency"]),
        "applicability_config": {"scope": scope}, "category": row["category"], "created": seconds(row["created_ms"]),
        "customer": row["customer_id"], "effective_at": seconds(row["effective_at_ms"]),
        "expires_at": seconds(row["expires_at_ms"]), "livemode": False, "metadata": row["metadata"],
        "name": row["name"], "priority": row["priority"], "test_clock": row["test_clock_id"],
        "updated": seconds(row["updated_ms"]), "voided_at": seconds(row["voided_ms"]),
    }


def credit_balance_transaction(row: dict[str, Any], test_clock_id: str | None = None) -> dict[str, Any]:
    amount = monetary(row["amount_minor"], row["currency"])
    credit = debit = None
    if row["type"] == "credit":
        credit = {"amount": amount, "type": row["reason"],
                  "credits_application_invoice_voided": (
                      {"invoice": row["invoice_id"], "invoice_line_item": row["invoice_line_id"]}
                      if row["reason"] == "credits_application_invoice_voided" else None)}
    else:
        debit = {"amount": amount, "type": row["reason"],
                 "credits_applied": ({"invoice": row["invoice_id"], "invoice_line_item": row["invoice_line_id"]}
                                     if row["reason"] == "credits_applied" else None)}
    return {"id": row["id"], "object": "billing.credit_balance_transaction",
            "created": seconds(row["effective_at_ms"]), "credit": credit, "credit_grant": row["grant_id"],
            "debit": debit, "effective_at": seconds(row["effective_at_ms"]), "livemode": False,
            "test_clock": test_clock_id, "type": row["type"]}


def invoice_line(line: dict[str, Any], credits: list[dict[str, Any]], invoice_row: dict[str, Any],
                 subscription_id: str | None, subscription_metadata: dict[str, str]) -> dict[str, Any]:
    quantity = line["quantity"]
    invoice_item_id = line.get("invoice_item_id")
    parent = {"type": "invoice_item_details", "invoice_item_details": {"invoice_item": invoice_item_id}} \
        if invoice_item_id else {"type": "subscription_item_details", "subscription_item_details": {
            "subscription": subscription_id, "subscription_item": line["subscription_item_id"]}}
    return {
        "id": line["id"], "object": "line_item", "amount": line["amount_minor"], "currency": invoice_row["currency"],
        "description": line.get("description"), "invoice": invoice_row.get("id"), "livemode": False,
        # Stripe: a subscription item's line shows its subscription's current metadata (never the item's)
        "metadata": {} if invoice_item_id else subscription_metadata,
        "parent": parent,
        "period": {"start": seconds(invoice_row["period_start_ms"]), "end": seconds(invoice_row["period_end_ms"])},
        "pretax_credit_amounts": [
            {"amount": credit["amount_minor"], "credit_balance_transaction": credit["credit_balance_transaction_id"],
             "type": "credit_balance_transaction"} for credit in credits],
        "pricing": {"type": "price_details", "price_details": {"price": line["price_id"], "product": None},
                    "unit_amount_decimal": decimal_text(line["unit_amount_decimal"])},
        "price": line["price_id"],
        "quantity": int(quantity) if quantity == quantity.to_integral_value() else None,
        "quantity_decimal": decimal_text(quantity),
        "subscription": subscription_id, "subscription_item": line["subscription_item_id"],
    }


def invoice(row: dict[str, Any], lines: list[dict[str, Any]], credits: list[dict[str, Any]],
            test_clock_id: str | None = None, subscription_metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """An invoice: a subscription period's (finalized by the workers), a one-off (draft or finalized),
    or a preview (no id). A draft's amounts are its lines' so far. `subscription_metadata`: its
    subscription's current metadata (its lines show it; its parent shows it on a preview only, a
    finalized invoice the snapshot its row keeps)."""
    by_line: dict[str, list[dict[str, Any]]] = {}
    for credit in credits:
        by_line.setdefault(credit["invoice_line_id"], []).append(credit)
    invoice_id = row.get("id")
    status = row["status"]
    line_objects = [invoice_line(line, by_line.get(line["id"], []), row, row["subscription_id"],
                                 subscription_metadata or {}) for line in lines]
    amount_paid = row.get("amount_paid_minor", 0)
    settled = status in ("paid", "void")
    subscription_id = row["subscription_id"]
    return {
        "id": invoice_id, "object": "invoice", "amount_due": row["amount_due_minor"],
        "amount_paid": amount_paid,
        "amount_remaining": 0 if settled else row["amount_due_minor"] - amount_paid,
        "auto_advance": row.get("auto_advance", False),
        "billing_reason": row["billing_reason"], "collection_method": "charge_automatically",
        "created": seconds(row.get("created_ms") or row["finalized_ms"]),
        "currency": row["currency"], "customer": row["customer_id"], "description": row.get("description"),
        "lines": {"object": "list", "data": line_objects, "has_more": False,
                  "url": f"/v1/invoices/{invoice_id}/lines" if invoice_id else "/v1/invoices/create_preview/lines"},
        "livemode": False, "metadata": row.get("metadata") or {},
        "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": subscription_id,
            "metadata": (row.get("subscription_metadata") or {}) if invoice_id else (subscription_metadata or {})}}
        if subscription_id else None,
        "period_start": seconds(row["period_start_ms"]), "period_end": seconds(row["period_end_ms"]),
        "status": status,
        "status_transitions": {"finalized_at": seconds(row["finalized_ms"]) if invoice_id else None,
                               "marked_uncollectible_at": seconds(row.get("marked_uncollectible_ms")),
                               # an invoice with nothing due is paid when finalized (Stripe)
                               "paid_at": seconds(row.get("paid_ms") or (row["finalized_ms"] if status == "paid"
                                                                          else None)),
                               "voided_at": seconds(row.get("voided_ms"))},
        "subscription": subscription_id, "subtotal": row["subtotal_minor"],
        "subtotal_excluding_tax": row["subtotal_minor"], "test_clock": test_clock_id,
        "total": row["amount_due_minor"], "total_excluding_tax": row["amount_due_minor"],
        "total_pretax_credit_amounts": [
            {"amount": credit["amount_minor"], "credit_balance_transaction": credit["credit_balance_transaction_id"],
             "type": "credit_balance_transaction"} for credit in credits],
    }


def invoice_item(row: dict[str, Any]) -> dict[str, Any]:
    quantity = row["quantity"]
    return {"id": row["id"], "object": "invoiceitem", "amount": row["amount_minor"], "currency": row["currency"],
            "customer": row["customer_id"], "date": seconds(row["created_ms"]), "description": row["description"],
            "discountable": True, "invoice": row["invoice_id"], "livemode": False, "metadata": row["metadata"],
            "period": {"start": seconds(row["created_ms"]), "end": seconds(row["created_ms"])},
            "price": row["price_id"],
            "pricing": {"type": "price_details", "price_details": {"price": row["price_id"], "product": None},
                        "unit_amount_decimal": decimal_text(row["unit_amount_decimal"])},
            "proration": False,
            "quantity": int(quantity) if quantity == quantity.to_integral_value() else None,
            "test_clock": None, "unit_amount_decimal": decimal_text(row["unit_amount_decimal"])}


def test_clock(row: dict[str, Any], status: str = "ready") -> dict[str, Any]:
    return {"id": row["id"], "object": "test_helpers.test_clock", "created": seconds(row["created_ms"]),
            "deletes_after": seconds(row["created_ms"] + 30 * 86_400_000), "frozen_time": seconds(row["frozen_time_ms"]),
            "livemode": False, "name": row["name"], "status": status,
            "status_details": {"advancing": {"target_frozen_time": seconds(row["frozen_time_ms"])}}
            if status == "advancing" else {}}


test_clock.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def billing_alert(row: dict[str, Any]) -> dict[str, Any]:
    """Stripe's billing.alert: the configuration of its type, the other one null."""
    filters = [{"type": "customer", "customer": row["customer_id"]}] if row["customer_id"] else None
    usage = credit = None
    if row["alert_type"] == "usage_threshold":
        usage = {"filters": filters, "gte": row["gte"], "meter": row["meter_id"], "recurrence": "one_time"}
    else:
        credit = {"filters": filters, "lte": {"balance_type": "monetary",
                                              "monetary": {"currency": row["currency"], "value": row["lte_minor"]}}}
    return {"id": row["id"], "object": "billing.alert", "alert_type": row["alert_type"], "livemode": False,
            "status": row["status"], "title": row["title"], "usage_threshold": usage,
            "credit_balance_threshold": credit}


def billing_alert_crossing(row: dict[str, Any], alert: dict[str, Any]) -> dict[str, Any]:
    """Stripe's billing.alert_triggered (and drawdown's billing.alert_recovered, the same shape)."""
    return {"object": f"billing.alert_{row['crossing']}", "alert": billing_alert(alert),
            "created": seconds(row["crossed_ms"]), "customer": row["customer_id"], "livemode": False,
            "value": row["value"]}

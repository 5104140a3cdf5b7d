"""/v1/invoices: list, retrieve, void, and create_preview (computed by the pure billing rules)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from api import objects
from api.app import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.objects import current_period
from api.params import Params
from api.routes.balances import grant_states
from api.store import customer_now_ms, fetch_all, fetch_one, paginate, projected_usage, require
from billing.facts import BillingReason, InvoiceVoidRequested, PriceCreated, RecurringInterval, SubscriptionItem, \
    UsageType
from billing.grants import GrantState
from billing.invoices import InvoiceComputation, compute_invoice
from billing.periods import BillingPeriod
from billing.meters import MeterAggregator
from billing.usage_windows import ProjectedBucket, usage_between

router = APIRouter(tags=["invoices"])


def invoice_object(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    return objects.load_invoice(lambda statement, *params: fetch_all(ctx.pool, statement, *params), row)


def list_invoices(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = [], []
    for name, column in (("customer", "customer_id"), ("subscription", "subscription_id")):
        value = params.str(name, max_length=200)
        if value is not None:
            conditions.append(f"{column} = %s")
            arguments.append(value)
    status = params.str("status", choices=["draft", "open", "paid", "uncollectible", "void"])
    if status is not None:
        conditions.append("status = %s")
        arguments.append(status)
    return paginate(ctx.pool, params, "/v1/invoices", "invoices", conditions, arguments,
                    lambda row: invoice_object(ctx, row), order_column="finalized_ms")


def retrieve_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return invoice_object(ctx, require(ctx.pool, "invoices", "invoice", id))


def void_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Request the void; the workers reinstate the credits. Waits (bounded) until the projection shows it."""
    params.done()
    row = require(ctx.pool, "invoices", "invoice", id)
    if row["status"] == "void":
        raise conflict(f"Invoice '{id}' is already void.", "invoice_already_voided")
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = InvoiceVoidRequested(invoice_id=id, customer_id=row["customer_id"],
                                requested_at_ms=customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    deadline = time.monotonic() + ctx.settings.read_your_writes_timeout_ms / 1000
    while time.monotonic() < deadline:
        row = require(ctx.pool, "invoices", "invoice", id)
        if row["status"] == "void":
            break
        time.sleep(0.02)
    return invoice_object(ctx, row)


def _price_fact(row: dict[str, Any]) -> PriceCreated:
    return PriceCreated(price_id=row["id"], product_id=row["product_id"], currency=row["currency"],
                        unit_amount_decimal=Decimal(row["unit_amount_decimal"]), usage_type=UsageType(row["usage_type"]),
                        meter_id=row["meter_id"], recurring_interval=RecurringInterval(row["recurring_interval"]),
                        recurring_interval_count=row["recurring_interval_count"], created_at_ms=row["created_ms"])


@dataclass(frozen=True)
class PreviewInputs:
    """What the preview of a subscription's current period is computed from, read once."""

    subscription: dict[str, Any]
    customer: dict[str, Any]
    items: tuple[SubscriptionItem, ...]
    prices: dict[str, PriceCreated]
    period: BillingPeriod
    as_of_ms: int
    usage: dict[str, tuple[MeterAggregator, list[ProjectedBucket]]]  # the period's projected buckets per meter
    grants: dict[str, GrantState]


def preview_inputs(ctx: ApiContext, subscription: dict[str, Any]) -> PreviewInputs:
    customer = require(ctx.pool, "customers", "customer", subscription["customer_id"])
    items = fetch_all(ctx.pool, "select * from subscription_items where subscription_id = %s order by position",
                      subscription["id"])
    price_rows = {row["id"]: row for row in fetch_all(ctx.pool, "select * from prices where id = any(%s)",
                                                      [item["price_id"] for item in items])}
    as_of_ms = customer_now_ms(ctx.pool, customer)
    period_start_ms, period_end_ms = current_period(subscription, price_rows[items[0]["price_id"]], as_of_ms)
    usage = projected_usage(ctx.pool, subscription["customer_id"], period_start_ms, period_end_ms)
    with ctx.pool.connection() as conn:
        grants = grant_states(conn, subscription["customer_id"])
    return PreviewInputs(
        subscription=subscription, customer=customer,
        items=tuple(SubscriptionItem(item_id=item["id"], price_id=item["price_id"], quantity=item["quantity"])
                    for item in items),
        prices={price_id: _price_fact(row) for price_id, row in price_rows.items()},
        period=BillingPeriod(start_ms=period_start_ms, end_ms=period_end_ms), as_of_ms=as_of_ms,
        usage=usage, grants=grants)


def compute_preview(inputs: PreviewInputs, usage_before_ms: int | None = None) -> InvoiceComputation:
    """The invoice the period would finalize to with the usage so far (or the usage of buckets that
    start before `usage_before_ms`): provisional credits, nothing persisted."""
    end_ms = inputs.period.end_ms if usage_before_ms is None else min(usage_before_ms, inputs.period.end_ms)
    usage = {meter_id: usage_between(aggregator, buckets, inputs.period.start_ms, end_ms)
             for meter_id, (aggregator, buckets) in inputs.usage.items()}
    subscription = inputs.subscription
    return compute_invoice(
        customer_id=subscription["customer_id"], subscription_id=subscription["id"], currency=subscription["currency"],
        period=inputs.period, billing_reason=BillingReason.SUBSCRIPTION_CYCLE, finalized_at_ms=inputs.period.end_ms,
        items=list(inputs.items), prices=inputs.prices, usage_by_meter_id=usage, grants=inputs.grants)


def active_subscription(ctx: ApiContext, customer_id: str) -> dict[str, Any] | None:
    """The customer's newest active subscription (the one a preview by customer shows)."""
    return fetch_one(ctx.pool, "select * from subscriptions where customer_id = %s and status = 'active'"
                               " order by created_ms desc limit 1", customer_id)


def create_preview(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """The invoice the current period would finalize to now: usage to date, provisional credits.
    Not persisted, no id."""
    subscription_id = params.str("subscription", max_length=200)
    customer_id = params.str("customer", max_length=200)
    params.done()
    if subscription_id is None and customer_id is None:
        raise invalid("subscription", "Give a subscription or a customer.", code="parameter_missing")
    if subscription_id is not None:
        subscription = require(ctx.pool, "subscriptions", "subscription", subscription_id, param="subscription")
        if customer_id is not None and subscription["customer_id"] != customer_id:
            raise invalid("customer", "The subscription belongs to another customer.")
    else:
        require(ctx.pool, "customers", "customer", customer_id, param="customer")
        subscription = active_subscription(ctx, customer_id)
        if subscription is None:
            raise invalid("customer", f"Customer '{customer_id}' has no active subscription to preview.",
                          code="invoice_upcoming_none")
    if subscription["status"] == "canceled":
        raise invalid("subscription", f"Subscription '{subscription['id']}' is canceled.", code="invoice_upcoming_none")
    inputs = preview_inputs(ctx, subscription)
    invoice = compute_preview(inputs).invoice
    row = {"id": None, "customer_id": invoice.customer_id, "subscription_id": invoice.subscription_id,
           "currency": invoice.currency, "period_start_ms": invoice.period_start_ms,
           "period_end_ms": invoice.period_end_ms, "billing_reason": str(invoice.billing_reason),
           "finalized_ms": inputs.as_of_ms, "subtotal_minor": invoice.subtotal_minor,
           "total_credits_minor": invoice.total_credits_minor, "amount_due_minor": invoice.amount_due_minor,
           "status": "draft", "voided_ms": None}
    lines = [{"id": line.line_id, "subscription_item_id": line.subscription_item_id, "price_id": line.price_id,
              "quantity": line.quantity, "unit_amount_decimal": line.unit_amount_decimal,
              "amount_minor": line.amount_minor} for line in invoice.lines]
    credits = [{"invoice_line_id": line.line_id, "credit_balance_transaction_id": credit.credit_balance_transaction_id,
                "amount_minor": credit.amount_minor} for line in invoice.lines for credit in line.credits]
    return objects.invoice(row, lines, credits, inputs.customer["test_clock_id"])


route(router, "GET", "/v1/invoices", list_invoices, summary="List invoices",
      query={"customer": "string", "subscription": "string", "status": "string", "limit": "integer",
             "starting_after": "string", "ending_before": "string"})
route(router, "POST", "/v1/invoices/create_preview", create_preview, summary="Preview the current period's invoice",
      form={"subscription": "string", "customer": "string"})
route(router, "GET", "/v1/invoices/{id}", retrieve_invoice, summary="Retrieve an invoice")
route(router, "POST", "/v1/invoices/{id}/void", void_invoice, answers_with=retrieve_invoice, summary="Void an invoice (credits are reinstated)")

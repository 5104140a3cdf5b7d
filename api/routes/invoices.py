"""/v1/invoices: list, retrieve, void, and create_preview (computed by the pure billing rules)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.objects import current_period
from api.params import Params
from api.routes.balances import grant_states
from api.store import fetch_all, fetch_one, paginate, projected_usage, read_customer_now_ms, require
from api.ids import new_id
from billing import ids
from billing.errors import BillingError
from billing.facts import (
    BillingReason,
    InvoiceCreated,
    InvoiceFinalizeRequested,
    InvoiceMarkUncollectibleRequested,
    InvoicePayRequested,
    InvoiceUpdated,
    InvoiceVoidRequested,
    PriceCreated,
    RecurringInterval,
    SubscriptionItem,
    UsageType,
)
from billing.lifecycle import MAX_INVOICE_ITEMS, InvoiceAction, InvoiceStatus, InvoiceStatusForbids, check_action
from billing.money import minor_unit_exponent
from billing.grants import GrantState
from billing.invoices import InvoiceComputation, compute_invoice
from billing.periods import BillingPeriod
from billing.meters import MeterAggregator
from billing.usage_windows import ProjectedBucket, usage_between

router = APIRouter(tags=["invoices"])


def invoice_object(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    if row["status"] == "draft":  # a one-off draft: its items so far, as finalizing would bill them
        lines = [{"id": ids.invoice_line_id(row["id"], item["id"]), "invoice_item_id": item["id"],
                  "subscription_item_id": None, "price_id": item["price_id"], "quantity": item["quantity"],
                  "unit_amount_decimal": item["unit_amount_decimal"], "amount_minor": item["amount_minor"],
                  "description": item["description"]}
                 for item in fetch_all(ctx.pool, "select * from invoice_items where invoice_id = %s"
                                                  " order by created_ms, id", row["id"])]
        subtotal_minor = sum(line["amount_minor"] for line in lines)
        row = {**row, "subtotal_minor": subtotal_minor, "amount_due_minor": subtotal_minor}
        credits: list[dict[str, Any]] = []
        customer = fetch_one(ctx.pool, "select test_clock_id from customers where id = %s", row["customer_id"])
        return objects.invoice(row, lines, credits, customer["test_clock_id"] if customer else None)
    return objects.load_invoice(lambda statement, *params: fetch_all(ctx.pool, statement, *params), row)


def list_invoices(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = [], []
    for name, column in (("customer", "customer_id"), ("subscription", "subscription_id")):
        value = params.str(name, max_length=200)
        if value is not None:
            conditions.append(f"{column} = %s")
            arguments.append(value)
    status = params.str("status", choices=[status.value for status in InvoiceStatus])
    if status is not None:
        conditions.append("status = %s")
        arguments.append(status)
    return paginate(ctx.pool, params, "/v1/invoices", "invoices", conditions, arguments,
                    lambda row: invoice_object(ctx, row))


def retrieve_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return invoice_object(ctx, require(ctx.pool, "invoices", "invoice", id))


def update_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """An invoice's metadata, merged as Stripe merges it (any status: nothing the money depends on)."""
    row = require(ctx.pool, "invoices", "invoice", id)
    metadata = params.metadata_update(row["metadata"])
    params.done()
    if metadata != row["metadata"]:
        customer = require(ctx.pool, "customers", "customer", row["customer_id"])
        ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], InvoiceUpdated(
            invoice_id=id, customer_id=row["customer_id"], metadata=metadata,
            updated_at_ms=read_customer_now_ms(ctx.pool, customer)))])
    return invoice_object(ctx, require(ctx.pool, "invoices", "invoice", id))


def create_invoice(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """A draft one-off invoice. pending_invoice_items_behavior `include` takes the customer's pending
    items in the invoice's currency, oldest first (at most 250); Stripe's default is `exclude`."""
    customer_id = params.str("customer", required=True, max_length=200)
    auto_advance = params.bool("auto_advance", default=False)
    behavior = params.str("pending_invoice_items_behavior", choices=["include", "exclude"]) or "exclude"
    currency = params.str("currency", max_length=3)
    description = params.str("description", max_length=1500)
    metadata = params.metadata() or {}
    params.done()
    customer = require(ctx.pool, "customers", "customer", customer_id, param="customer")
    pending = fetch_all(ctx.pool, "select id, currency from invoice_items where customer_id = %s and invoice_id is null"
                                  " order by created_ms, id", customer_id) if behavior == "include" else []
    if currency is None:
        currency = pending[0]["currency"] if pending else "usd"
    else:
        try:
            minor_unit_exponent(currency)
        except BillingError as exc:
            raise invalid("currency", f"Invalid currency: {currency}") from exc
    item_ids = tuple(item["id"] for item in pending if item["currency"] == currency)[:MAX_INVOICE_ITEMS]
    invoice_id = new_id("in")
    fact = InvoiceCreated(invoice_id=invoice_id, customer_id=customer_id, currency=currency,
                          auto_advance=bool(auto_advance), invoice_item_ids=item_ids, description=description,
                          metadata=metadata, created_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return invoice_object(ctx, require(ctx.pool, "invoices", "invoice", invoice_id))


def _transition(ctx: ApiContext, id: str, action: InvoiceAction, fact_class: type, **fields: Any) -> dict[str, Any]:
    """Check `action` against the invoice's status as projected (billing/lifecycle.py: Stripe's rules),
    publish the request, and wait (bounded) until the workers' answer shows in the projection."""
    row = require(ctx.pool, "invoices", "invoice", id)
    status = InvoiceStatus(row["status"])
    if action == InvoiceAction.VOID and status == InvoiceStatus.VOID:
        raise conflict(f"Invoice '{id}' is already void.", "invoice_already_voided")
    try:
        check_action(id, status, action)
    except InvoiceStatusForbids as refused:
        raise conflict(str(refused), refused.code) from refused
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = fact_class(invoice_id=id, customer_id=row["customer_id"],
                      requested_at_ms=read_customer_now_ms(ctx.pool, customer), **fields)
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    deadline = time.monotonic() + ctx.settings.read_your_writes_timeout_ms / 1000
    while time.monotonic() < deadline:
        row = require(ctx.pool, "invoices", "invoice", id)
        if row["status"] != status:
            break
        time.sleep(0.02)
    return invoice_object(ctx, row)


def finalize_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.bool("auto_advance")  # accepted; drafts are finalized only by this call (see DESIGN)
    params.done()
    return _transition(ctx, id, InvoiceAction.FINALIZE, InvoiceFinalizeRequested)


def pay_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """drawdown charges nothing itself: an invoice is paid outside it (paid_out_of_band=true)."""
    paid_out_of_band = params.bool("paid_out_of_band", default=False)
    params.done()
    if not paid_out_of_band:
        raise invalid("paid_out_of_band", "drawdown takes no payments: pay the invoice elsewhere and pass "
                                          "paid_out_of_band=true.")
    return _transition(ctx, id, InvoiceAction.PAY, InvoicePayRequested, paid_out_of_band=True)


def mark_uncollectible(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return _transition(ctx, id, InvoiceAction.MARK_UNCOLLECTIBLE, InvoiceMarkUncollectibleRequested)


def void_invoice(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Void an open or uncollectible invoice; the workers reinstate its credits."""
    params.done()
    return _transition(ctx, id, InvoiceAction.VOID, InvoiceVoidRequested)


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
    period_usage: dict[str, Decimal]  # the period's usage per meter by exact event time (PeriodUsageUpdated)
    grants: dict[str, GrantState]


def preview_inputs(ctx: ApiContext, subscription: dict[str, Any]) -> PreviewInputs:
    customer = require(ctx.pool, "customers", "customer", subscription["customer_id"])
    as_of_ms = read_customer_now_ms(ctx.pool, customer)
    items, _ = objects.subscription_item_versions(lambda statement, *args: fetch_all(ctx.pool, statement, *args),
                                                  subscription["id"], as_of_ms)
    price_rows = {row["id"]: row for row in fetch_all(ctx.pool, "select * from prices where id = any(%s)",
                                                      [item["price_id"] for item in items])}
    period_start_ms, period_end_ms = current_period(subscription, price_rows[items[0]["price_id"]], as_of_ms)
    usage = projected_usage(ctx.pool, subscription["customer_id"], period_start_ms, period_end_ms)
    period_usage = {row["meter_id"]: row["value"] for row in fetch_all(
        ctx.pool, "select meter_id, value from period_usage where subscription_id = %s and period_start_ms = %s",
        subscription["id"], period_start_ms)}
    with ctx.pool.connection() as conn:
        grants = grant_states(conn, subscription["customer_id"])
    return PreviewInputs(
        subscription=subscription, customer=customer,
        items=tuple(SubscriptionItem(item_id=item["id"], price_id=item["price_id"], quantity=item["quantity"])
                    for item in items),
        prices={price_id: _price_fact(row) for price_id, row in price_rows.items()},
        period=BillingPeriod(start_ms=period_start_ms, end_ms=period_end_ms), as_of_ms=as_of_ms,
        usage=usage, period_usage=period_usage, grants=grants)


def compute_preview(inputs: PreviewInputs, usage_before_ms: int | None = None) -> InvoiceComputation:
    """The invoice the period would finalize to with the usage so far (or the usage of buckets that
    start before `usage_before_ms`): provisional credits, nothing persisted.

    The usage so far is the workers' own count of the period (exact where the period starts
    mid-minute); minute buckets serve the points before now, and a meter a worker has not counted
    for the period yet (one that predates PeriodUsageUpdated)."""
    end_ms = inputs.period.end_ms if usage_before_ms is None else min(usage_before_ms, inputs.period.end_ms)
    usage = {meter_id: usage_between(aggregator, buckets, inputs.period.start_ms, end_ms)
             for meter_id, (aggregator, buckets) in inputs.usage.items()}
    if usage_before_ms is None:
        usage.update(inputs.period_usage)
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
    return objects.invoice(row, lines, credits, inputs.customer["test_clock_id"], inputs.subscription["metadata"])


route(router, "GET", "/v1/invoices", list_invoices, summary="List invoices",
      query={"customer": "string", "subscription": "string", "status": "string", "limit": "integer",
             "starting_after": "string", "ending_before": "string"})
route(router, "POST", "/v1/invoices/create_preview", create_preview, summary="Preview the current period's invoice",
      form={"subscription": "string", "customer": "string"})
route(router, "POST", "/v1/invoices", create_invoice, answers_with=retrieve_invoice, creates="in",
      summary="Create a draft one-off invoice",
      form={"customer": "string", "auto_advance": "boolean", "pending_invoice_items_behavior": "string",
            "currency": "string", "description": "string"})
route(router, "GET", "/v1/invoices/{id}", retrieve_invoice, summary="Retrieve an invoice")
route(router, "POST", "/v1/invoices/{id}", update_invoice, answers_with=retrieve_invoice,
      summary="Update an invoice's metadata")
route(router, "POST", "/v1/invoices/{id}/finalize", finalize_invoice, answers_with=retrieve_invoice,
      summary="Finalize a draft invoice", form={"auto_advance": "boolean"})
route(router, "POST", "/v1/invoices/{id}/pay", pay_invoice, answers_with=retrieve_invoice,
      summary="Mark an invoice paid out of band", form={"paid_out_of_band": "boolean"})
route(router, "POST", "/v1/invoices/{id}/mark_uncollectible", mark_uncollectible, answers_with=retrieve_invoice,
      summary="Mark an open invoice uncollectible")
route(router, "POST", "/v1/invoices/{id}/void", void_invoice, answers_with=retrieve_invoice,
      summary="Void an open or uncollectible invoice (credits are reinstated)")

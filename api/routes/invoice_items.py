"""/v1/invoiceitems: one-off charges waiting for the customer's next one-off invoice (or a draft).

An item is an `amount` in a `currency`, or `unit_amount_decimal` x `quantity`, or a licensed
`price` x `quantity` (OURS: the catalog has no one-time prices; a metered price bills usage, never
a one-off item). Bounds: amount and unit amounts as for prices (billing/money.py), quantity up to
MAX_LICENSED_QUANTITY, and each item's amount at most MAX_INVOICE_ITEM_AMOUNT_MINOR, so that an
invoice of 250 items stays far within a 64-bit integer.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_one, paginate, read_customer_now_ms, require
from billing.errors import BillingError
from billing.facts import InvoiceItemCreated, InvoiceItemDeleted, InvoiceItemUpdated
from billing.lifecycle import MAX_INVOICE_ITEM_AMOUNT_MINOR, MAX_INVOICE_ITEMS, MAX_PENDING_INVOICE_ITEMS
from billing.money import (
    MAX_LICENSED_QUANTITY,
    MAX_UNIT_PRICE_MINOR,
    line_amount_minor_half_up,
    minor_unit_exponent,
    parse_unit_amount_decimal,
)

router = APIRouter(tags=["invoice items"])
STRING = "string"


def _currency(params: Params) -> str:
    currency = params.str("currency", required=True, max_length=3)
    try:
        minor_unit_exponent(currency)
    except BillingError as exc:
        raise invalid("currency", f"Invalid currency: {currency}") from exc
    return currency


def create_invoice_item(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", required=True, max_length=200)
    amount = params.int("amount", minimum=0, maximum=MAX_UNIT_PRICE_MINOR - 1)
    price_id = params.str("price", max_length=200)
    unit_amount_text = params.str("unit_amount_decimal", max_length=40)
    quantity = params.int("quantity", minimum=1, maximum=MAX_LICENSED_QUANTITY, default=1)
    description = params.str("description", max_length=500)
    metadata = params.metadata() or {}
    invoice_id = params.str("invoice", max_length=200)
    given = [name for name, value in (("amount", amount), ("price", price_id),
                                      ("unit_amount_decimal", unit_amount_text)) if value is not None]
    if len(given) != 1:
        raise invalid(given[1] if given else "amount",
                      "Give exactly one of amount, price and unit_amount_decimal.", code="parameter_missing"
                      if not given else "parameter_invalid")
    if price_id is not None:
        price = require(ctx.pool, "prices", "price", price_id, param="price")
        if price["usage_type"] == "metered":
            raise invalid("price", "A metered price bills usage on a subscription; it cannot be an invoice item.")
        currency = params.str("currency", max_length=3) or price["currency"]
        if currency != price["currency"]:
            raise invalid("currency", f"The price is in {price['currency']}, not {currency}.")
        unit_amount = Decimal(price["unit_amount_decimal"])
    elif amount is not None:
        currency, unit_amount, quantity = _currency(params), Decimal(amount), 1  # amount: the item's total
    else:
        currency = _currency(params)
        try:
            unit_amount = parse_unit_amount_decimal(unit_amount_text or "")
        except BillingError as exc:
            raise invalid("unit_amount_decimal", str(exc)) from exc
    params.done()
    amount_minor = line_amount_minor_half_up(Decimal(quantity), unit_amount)
    if amount_minor > MAX_INVOICE_ITEM_AMOUNT_MINOR:
        raise invalid("quantity", f"The item's amount must be at most {MAX_INVOICE_ITEM_AMOUNT_MINOR}.")
    customer = require(ctx.pool, "customers", "customer", customer_id, param="customer")
    if invoice_id is not None:
        draft = require(ctx.pool, "invoices", "invoice", invoice_id, param="invoice")
        if draft["status"] != "draft" or draft["customer_id"] != customer_id:
            raise invalid("invoice", f"Invoice '{invoice_id}' is not a draft of this customer.",
                          code="invoice_not_editable")
        if draft["currency"] != currency:
            raise invalid("currency", f"Invoice '{invoice_id}' is in {draft['currency']}.")
    waiting = fetch_one(ctx.pool, "select count(*) as n from invoice_items where customer_id = %s and"
                                  " invoice_id is not distinct from %s", customer_id, invoice_id)["n"]
    if waiting >= (MAX_INVOICE_ITEMS if invoice_id else MAX_PENDING_INVOICE_ITEMS):
        raise invalid("invoice" if invoice_id else "customer", "Too many invoice items are waiting.",
                      code="too_many_invoice_items")
    item_id = new_id("ii")
    fact = InvoiceItemCreated(invoice_item_id=item_id, customer_id=customer_id, currency=currency,
                              quantity=Decimal(quantity), unit_amount_decimal=unit_amount, amount_minor=amount_minor,
                              price_id=price_id, description=description, invoice_id=invoice_id, metadata=metadata,
                              created_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return objects.invoice_item(require(ctx.pool, "invoice_items", "invoiceitem", item_id))


def retrieve_invoice_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.invoice_item(require(ctx.pool, "invoice_items", "invoiceitem", id))


def update_invoice_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """An invoice item's metadata, merged as Stripe merges it (nothing the money depends on)."""
    item = require(ctx.pool, "invoice_items", "invoiceitem", id)
    metadata = params.metadata_update(item["metadata"])
    params.done()
    if metadata != item["metadata"]:
        customer = require(ctx.pool, "customers", "customer", item["customer_id"])
        ctx.wait([ctx.publisher.publish("customer-facts", item["customer_id"], InvoiceItemUpdated(
            invoice_item_id=id, customer_id=item["customer_id"], metadata=metadata,
            updated_at_ms=read_customer_now_ms(ctx.pool, customer)))])
    return objects.invoice_item(require(ctx.pool, "invoice_items", "invoiceitem", id))


def list_invoice_items(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = [], []
    for name, column in (("customer", "customer_id"), ("invoice", "invoice_id")):
        value = params.str(name, max_length=200)
        if value is not None:
            conditions.append(f"{column} = %s")
            arguments.append(value)
    pending = params.bool("pending")
    if pending is not None:
        conditions.append("invoice_id is null" if pending else "invoice_id is not null")
    return paginate(ctx.pool, params, "/v1/invoiceitems", "invoice_items", conditions, arguments,
                    objects.invoice_item)


def delete_invoice_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Only a pending item or one on a draft can be deleted (Stripe)."""
    params.done()
    item = require(ctx.pool, "invoice_items", "invoiceitem", id)
    if item["invoice_id"] is not None:
        invoice = fetch_one(ctx.pool, "select status from invoices where id = %s", item["invoice_id"])
        if invoice is not None and invoice["status"] != "draft":
            raise conflict(f"Invoice item '{id}' is on a finalized invoice and cannot be deleted.",
                           "invoice_not_editable")
    customer = require(ctx.pool, "customers", "customer", item["customer_id"])
    fact = InvoiceItemDeleted(invoice_item_id=id, customer_id=item["customer_id"],
                              deleted_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", item["customer_id"], fact)])
    return {"id": id, "object": "invoiceitem", "deleted": True}


route(router, "POST", "/v1/invoiceitems", create_invoice_item, answers_with=retrieve_invoice_item, creates="ii",
      summary="Create an invoice item",
      form={"customer": STRING, "amount": "integer", "currency": STRING, "price": STRING,
            "unit_amount_decimal": STRING, "quantity": "integer", "description": STRING, "invoice": STRING})
route(router, "GET", "/v1/invoiceitems", list_invoice_items, summary="List invoice items",
      query={"customer": STRING, "invoice": STRING, "pending": "boolean", "limit": "integer",
             "starting_after": STRING, "ending_before": STRING})
route(router, "GET", "/v1/invoiceitems/{id}", retrieve_invoice_item, summary="Retrieve an invoice item")
route(router, "POST", "/v1/invoiceitems/{id}", update_invoice_item, answers_with=retrieve_invoice_item,
      summary="Update an invoice item's metadata")
route(router, "DELETE", "/v1/invoiceitems/{id}", delete_invoice_item, summary="Delete a pending invoice item")

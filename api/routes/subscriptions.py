"""/v1/subscriptions: create with metered (or licensed) items, cancel at period end, cancel now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_all, fetch_one, paginate, read_customer_now_ms, require
from billing.facts import SubscriptionCanceled, SubscriptionCancelScheduled, SubscriptionCreated, \
    SubscriptionItem, SubscriptionUpdated
from billing.money import MAX_LICENSED_QUANTITY, MAX_TIMESTAMP_S

router = APIRouter(tags=["subscriptions"])
MAX_ITEMS = 20


def subscription_object(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    customer = fetch_one(ctx.pool, "select * from customers where id = %s", row["customer_id"]) or {}
    return objects.load_subscription(lambda statement, *params: fetch_all(ctx.pool, statement, *params), row,
                                     read_customer_now_ms(ctx.pool, customer))


def create_subscription(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", required=True, max_length=200)
    items = params.objects("items", required=True, max_items=MAX_ITEMS)
    anchor_s = params.int("billing_cycle_anchor", minimum=0, maximum=MAX_TIMESTAMP_S)
    metadata = params.metadata() or {}
    requested = []
    for item in items:
        requested.append((item.name("price"), item.str("price", required=True, max_length=200),
                          item.int("quantity", minimum=1, maximum=MAX_LICENSED_QUANTITY, default=1)))
    params.done()
    customer = require(ctx.pool, "customers", "customer", customer_id, param="customer")
    prices = []
    for param, price_id, _ in requested:
        price = require(ctx.pool, "prices", "price", price_id, param=param)
        if not price["active"]:  # (Stripe's rule: an archived price bills its subscriptions, takes no new ones)
            raise invalid(param, f"The price specified is inactive: '{price_id}'. This field only accepts active prices.")
        prices.append(price)
    currencies = {price["currency"] for price in prices}
    intervals = {(price["recurring_interval"], price["recurring_interval_count"]) for price in prices}
    if len(currencies) > 1:
        raise invalid("items", "All prices of a subscription must have the same currency.")
    if len(intervals) > 1:
        raise invalid("items", "All prices of a subscription must have the same recurring interval.")
    if len({price_id for _, price_id, _ in requested}) != len(requested):
        raise invalid("items", "A price can appear only once in a subscription's items.")
    created_at_ms = read_customer_now_ms(ctx.pool, customer)
    anchor_ms = created_at_ms if anchor_s is None else anchor_s * 1000
    if anchor_ms < created_at_ms - 1000:
        raise invalid("billing_cycle_anchor", "billing_cycle_anchor cannot be before the subscription starts.")
    subscription_id = new_id("sub")
    fact = SubscriptionCreated(
        subscription_id=subscription_id, customer_id=customer_id, currency=currencies.pop(),
        billing_cycle_anchor_ms=max(anchor_ms, created_at_ms), created_at_ms=created_at_ms,
        test_clock_id=customer["test_clock_id"], metadata=metadata,
        items=tuple(SubscriptionItem(item_id=new_id("si"), price_id=price_id, quantity=quantity)
                    for _, price_id, quantity in requested))
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return subscription_object(ctx, require(ctx.pool, "subscriptions", "subscription", subscription_id))


def retrieve_subscription(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return subscription_object(ctx, require(ctx.pool, "subscriptions", "subscription", id))


def list_subscriptions(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = [], []
    customer_id = params.str("customer", max_length=200)
    status = params.str("status", choices=["active", "canceled", "all"])
    if customer_id is not None:
        conditions.append("customer_id = %s")
        arguments.append(customer_id)
    if status in ("active", "canceled"):
        conditions.append("status = %s")
        arguments.append(status)
    elif status is None:
        conditions.append("status <> 'canceled'")  # Stripe lists non-canceled subscriptions by default
    return paginate(ctx.pool, params, "/v1/subscriptions", "subscriptions", conditions, arguments,
                    lambda row: subscription_object(ctx, row))


def update_subscription(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    cancel_at_period_end = params.bool("cancel_at_period_end")
    row = require(ctx.pool, "subscriptions", "subscription", id)
    metadata = params.metadata_update(row["metadata"])
    params.done()
    if metadata != row["metadata"]:
        customer = require(ctx.pool, "customers", "customer", row["customer_id"])
        ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], SubscriptionUpdated(
            subscription_id=id, customer_id=row["customer_id"], metadata=metadata,
            updated_at_ms=read_customer_now_ms(ctx.pool, customer)))])
    if cancel_at_period_end is not None:
        if row["status"] == "canceled":
            raise conflict(f"Subscription '{id}' is canceled.", "subscription_canceled")
        customer = require(ctx.pool, "customers", "customer", row["customer_id"])
        fact = SubscriptionCancelScheduled(subscription_id=id, customer_id=row["customer_id"],
                                           cancel_at_period_end=cancel_at_period_end,
                                           scheduled_at_ms=read_customer_now_ms(ctx.pool, customer))
        ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return subscription_object(ctx, require(ctx.pool, "subscriptions", "subscription", id))


def cancel_subscription(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    invoice_now = params.bool("invoice_now", default=False)
    params.bool("prorate")
    params.done()
    row = require(ctx.pool, "subscriptions", "subscription", id)
    if row["status"] == "canceled":
        raise conflict(f"Subscription '{id}' is already canceled.", "subscription_canceled")
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = SubscriptionCanceled(subscription_id=id, customer_id=row["customer_id"], invoice_now=bool(invoice_now),
                                canceled_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return subscription_object(ctx, require(ctx.pool, "subscriptions", "subscription", id))


route(router, "POST", "/v1/subscriptions", create_subscription, answers_with=retrieve_subscription, creates="sub", summary="Create a subscription",
      form={"customer": "string", "items[0][price]": "string", "items[0][quantity]": "integer",
            "billing_cycle_anchor": "integer"})
route(router, "GET", "/v1/subscriptions", list_subscriptions, summary="List subscriptions",
      query={"customer": "string", "status": "string", "limit": "integer", "starting_after": "string",
             "ending_before": "string"})
route(router, "GET", "/v1/subscriptions/{id}", retrieve_subscription, summary="Retrieve a subscription")
route(router, "POST", "/v1/subscriptions/{id}", update_subscription, answers_with=retrieve_subscription, summary="Update cancel_at_period_end or metadata",
      form={"cancel_at_period_end": "boolean"})
route(router, "DELETE", "/v1/subscriptions/{id}", cancel_subscription, answers_with=retrieve_subscription, summary="Cancel a subscription now",
      form={"invoice_now": "boolean", "prorate": "boolean"})

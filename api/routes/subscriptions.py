"""/v1/subscriptions: create with metered (or licensed) items, change items from the next period
(their metadata at once), cancel at period end, cancel now."""

from __future__ import annotations

from typing import Any, NamedTuple

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_all, fetch_one, paginate, read_customer_now_ms, require
from billing.facts import SubscriptionCanceled, SubscriptionCancelScheduled, SubscriptionCreated, \
    SubscriptionItem, SubscriptionItemsChanged, SubscriptionItemUpdated, SubscriptionUpdated
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
    item_metadata = [item.metadata() or {} for item in items]
    params.done()
    customer = require(ctx.pool, "customers", "customer", customer_id, param="customer")
    prices = _check_prices(ctx, requested)
    currencies = {price["currency"] for price in prices}
    created_at_ms = read_customer_now_ms(ctx.pool, customer)
    anchor_ms = created_at_ms if anchor_s is None else anchor_s * 1000
    if anchor_ms < created_at_ms - 1000:
        raise invalid("billing_cycle_anchor", "billing_cycle_anchor cannot be before the subscription starts.")
    subscription_id = new_id("sub")
    fact = SubscriptionCreated(
        subscription_id=subscription_id, customer_id=customer_id, currency=currencies.pop(),
        billing_cycle_anchor_ms=max(anchor_ms, created_at_ms), created_at_ms=created_at_ms,
        test_clock_id=customer["test_clock_id"], metadata=metadata,
        items=tuple(SubscriptionItem(item_id=new_id("si"), price_id=price_id, quantity=quantity, metadata=metadata)
                    for (_, price_id, quantity), metadata in zip(requested, item_metadata)))
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


def _check_prices(ctx: ApiContext, requested: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """The price rows of (param, price id, quantity) items, one currency, one interval, each once."""
    prices = []
    for param, price_id, _ in requested:
        price = require(ctx.pool, "prices", "price", price_id, param=param)
        if not price["active"]:  # (Stripe's rule: an archived price bills its subscriptions, takes no new ones)
            raise invalid(param, f"The price specified is inactive: '{price_id}'. This field only accepts active prices.")
        prices.append(price)
    if len({price["currency"] for price in prices}) > 1:
        raise invalid("items", "All prices of a subscription must have the same currency.")
    if len({(price["recurring_interval"], price["recurring_interval_count"]) for price in prices}) > 1:
        raise invalid("items", "All prices of a subscription must have the same recurring interval.")
    if len({price_id for _, price_id, _ in requested}) != len(requested):
        raise invalid("items", "A price can appear only once in a subscription's items.")
    return prices


class _ItemChange(NamedTuple):
    """One of Stripe's items[] on an update: an item's id with deleted, price, quantity or metadata;
    or a new price (with its metadata)."""

    param: str  # items[N]
    item_id: str | None
    deleted: bool
    price_id: str | None
    quantity: int | None
    metadata: dict[str, str]  # the item's after the update (Stripe's merge for an existing item)

    @property
    def bills(self) -> bool:
        """Whether it changes what the subscription bills (then it waits for the next period);
        an item's metadata alone does not, so it applies at once."""
        return self.item_id is None or self.deleted or self.price_id is not None or self.quantity is not None


def _item_changes(params: Params, item_metadata: dict[str, dict[str, str]]) -> list[_ItemChange]:
    """Stripe's items[] of an update; `item_metadata` is the metadata of each item (by id) of the
    current period or a waiting change."""
    changes = []
    for index, change in enumerate(params.objects("items", max_items=MAX_ITEMS)):
        item_id = change.str("id", max_length=200)
        if item_id is not None and item_id not in item_metadata:
            raise invalid(change.name("id"), f"No such subscription item: '{item_id}'", code="resource_missing")
        deleted = bool(change.bool("deleted", default=False))
        if deleted and item_id is None:
            raise invalid(change.name("deleted"), "Give the id of the subscription item to delete.")
        changes.append(_ItemChange(f"items[{index}]", item_id, deleted,
                                   change.str("price", required=item_id is None and not deleted, max_length=200),
                                   change.int("quantity", minimum=1, maximum=MAX_LICENSED_QUANTITY),
                                   change.metadata_update(item_metadata.get(item_id or "", {}))))
    return changes


def _next_period_items(ctx: ApiContext, row: dict[str, Any], changes: list[_ItemChange], now_ms: int,
                       current: list, waiting: list) -> tuple[tuple[SubscriptionItem, ...], int]:
    """The items `changes` (Stripe's items[]: an item's id with deleted, price, quantity or metadata;
    or a new price) make of the subscription's latest items (`waiting`, else `current`: see
    objects.subscription_item_versions), and the instant they bill from: the end of the current
    period. drawdown changes items from the next period, without prorations."""
    latest = {item["id"]: [item["price_id"], item["quantity"], item["metadata"]] for item in (waiting or current)}
    for change in changes:
        item_id, price_id, quantity = change.item_id, change.price_id, change.quantity
        if item_id is not None and item_id not in latest:
            raise invalid(f"{change.param}[id]", f"No such subscription item: '{item_id}'", code="resource_missing")
        if change.deleted:
            del latest[item_id]
        elif item_id is None:
            latest[new_id("si")] = [price_id, quantity or 1, change.metadata]
        else:
            latest[item_id] = [price_id or latest[item_id][0], quantity or latest[item_id][1], change.metadata]
    if not latest:
        raise invalid("items", "A subscription needs at least one item.")
    prices = _check_prices(ctx, [(f"items[{index}][price]", price_id, quantity)
                                 for index, (price_id, quantity, _) in enumerate(latest.values())])
    old_price = require(ctx.pool, "prices", "price", current[0]["price_id"]) if current else prices[0]
    if (prices[0]["currency"], prices[0]["recurring_interval"], prices[0]["recurring_interval_count"]) != \
            (old_price["currency"], old_price["recurring_interval"], old_price["recurring_interval_count"]):
        raise invalid("items", "The new items must have the subscription's currency and recurring interval.")
    _, period_end_ms = objects.current_period(row, old_price, now_ms)
    return tuple(SubscriptionItem(item_id=item_id, price_id=price_id, quantity=quantity, metadata=metadata)
                 for item_id, (price_id, quantity, metadata) in latest.items()), period_end_ms


def update_subscription(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    cancel_at_period_end = params.bool("cancel_at_period_end")
    row = require(ctx.pool, "subscriptions", "subscription", id)
    metadata = params.metadata_update(row["metadata"])
    item_changes: list[_ItemChange] = []
    if params.has("items"):  # (only then is the customer needed: a deleted one's subscription still answers)
        customer = require(ctx.pool, "customers", "customer", row["customer_id"])
        now_ms = read_customer_now_ms(ctx.pool, customer)
        current, waiting = objects.subscription_item_versions(
            lambda statement, *args: fetch_all(ctx.pool, statement, *args), id, now_ms)
        # (an item's metadata is the same in every version: SubscriptionItemUpdated sets them all)
        item_metadata = {item["id"]: item["metadata"] for item in current + waiting}
        item_changes = _item_changes(params, item_metadata)
    params.str("proration_behavior", choices=["none"])  # items change from the next period: nothing to prorate
    params.done()
    if item_changes:
        if row["status"] == "canceled":
            raise conflict(f"Subscription '{id}' is canceled.", "subscription_canceled")
        facts: list = [
            SubscriptionItemUpdated(subscription_id=id, customer_id=row["customer_id"], item_id=change.item_id,
                                    metadata=change.metadata, updated_at_ms=now_ms)
            for change in item_changes
            if change.item_id is not None and not change.deleted and change.metadata != item_metadata[change.item_id]]
        if any(change.bills for change in item_changes):
            items, effective_from_ms = _next_period_items(ctx, row, item_changes, now_ms, current, waiting)
            facts.append(SubscriptionItemsChanged(subscription_id=id, customer_id=row["customer_id"], items=items,
                                                  changed_at_ms=now_ms, effective_from_ms=effective_from_ms))
        ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact) for fact in facts])
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
            "items[0][metadata][key]": "string", "billing_cycle_anchor": "integer"})
route(router, "GET", "/v1/subscriptions", list_subscriptions, summary="List subscriptions",
      query={"customer": "string", "status": "string", "limit": "integer", "starting_after": "string",
             "ending_before": "string"})
route(router, "GET", "/v1/subscriptions/{id}", retrieve_subscription, summary="Retrieve a subscription")
route(router, "POST", "/v1/subscriptions/{id}", update_subscription, answers_with=retrieve_subscription,
      summary="Update cancel_at_period_end, metadata, or the items (from the next period)",
      form={"cancel_at_period_end": "boolean", "items[0][id]": "string", "items[0][price]": "string",
            "items[0][quantity]": "integer", "items[0][deleted]": "boolean", "items[0][metadata][key]": "string",
            "proration_behavior": "string"})
route(router, "DELETE", "/v1/subscriptions/{id}", cancel_subscription, answers_with=retrieve_subscription, summary="Cancel a subscription now",
      form={"invoice_now": "boolean", "prorate": "boolean"})

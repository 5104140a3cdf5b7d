"""/v1/subscriptions: create with metered (or licensed) items, change items from the next period
(their metadata at once), cancel at period end, cancel now; /v1/subscription_items: the same item
changes one item at a time."""

from __future__ import annotations

from typing import Any, NamedTuple

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid, not_found
from api.ids import new_id
from api.params import Params
from api.store import fetch_all, fetch_one, page_of, paginate, read_customer_now_ms, require
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


def _check_prices(ctx: ApiContext, requested: list[tuple[str, str, int]], param: str = "items") -> list[dict[str, Any]]:
    """The price rows of (param, price id, quantity) items, one currency, one interval, each once
    (`param`: what a refusal of the whole set names)."""
    prices = []
    for price_param, price_id, _ in requested:
        price = require(ctx.pool, "prices", "price", price_id, param=price_param)
        if not price["active"]:  # (Stripe's rule: an archived price bills its subscriptions, takes no new ones)
            raise invalid(price_param, f"The price specified is inactive: '{price_id}'. This field only accepts active prices.")
        prices.append(price)
    if len({price["currency"] for price in prices}) > 1:
        raise invalid(param, "All prices of a subscription must have the same currency.")
    if len({(price["recurring_interval"], price["recurring_interval_count"]) for price in prices}) > 1:
        raise invalid(param, "All prices of a subscription must have the same recurring interval.")
    if len({price_id for _, price_id, _ in requested}) != len(requested):
        raise invalid(param, "A price can appear only once in a subscription's items.")
    return prices


class _ItemChange(NamedTuple):
    """One item change: one of Stripe's items[] on a subscription update (an item's id with deleted,
    price, quantity or metadata; or a new price with its metadata), or a /v1/subscription_items command."""

    param: str  # items[N]; "" for a /v1/subscription_items command, whose parameters are top level
    item_id: str | None
    deleted: bool
    price_id: str | None
    quantity: int | None
    metadata: dict[str, str]  # the item's after the update (Stripe's merge for an existing item)

    def name(self, key: str) -> str:
        return f"{self.param}[{key}]" if self.param else key

    @property
    def bills(self) -> bool:
        """Whether it changes what the subscription bills (then it waits for the next period);
        an item's metadata alone does not, so it applies at once."""
        return self.item_id is None or self.deleted or self.price_id is not None or self.quantity is not None


def _read_item_change(node: Params, param: str, item_id: str | None, deleted: bool,
                      item_metadata: dict[str, dict[str, str]]) -> _ItemChange:
    """An item change's price, quantity and metadata, read from `node` (an items[] entry, or a
    subscription item command's parameters)."""
    return _ItemChange(param, item_id, deleted,
                       node.str("price", required=item_id is None and not deleted, max_length=200),
                       node.int("quantity", minimum=1, maximum=MAX_LICENSED_QUANTITY),
                       node.metadata_update(item_metadata.get(item_id or "", {})))


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
        changes.append(_read_item_change(change, f"items[{index}]", item_id, deleted, item_metadata))
    return changes


class _Items(NamedTuple):
    """A subscription's items at its customer's now: the current period's and a waiting version's
    (objects.subscription_item_versions)."""

    now_ms: int
    current: list
    waiting: list

    @property
    def metadata(self) -> dict[str, dict[str, str]]:
        """Each item's metadata, by id (the same in every version: SubscriptionItemUpdated sets them all)."""
        return {item["id"]: item["metadata"] for item in self.current + self.waiting}


def _items_to_change(ctx: ApiContext, row: dict[str, Any]) -> _Items:
    # (a command needs the customer; reads do not: a deleted customer's subscription still answers)
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    now_ms = read_customer_now_ms(ctx.pool, customer)
    return _Items(now_ms, *objects.subscription_item_versions(
        lambda statement, *args: fetch_all(ctx.pool, statement, *args), row["id"], now_ms))


def _next_period_items(ctx: ApiContext, row: dict[str, Any], changes: list[_ItemChange], items: _Items,
                       param: str) -> tuple[tuple[SubscriptionItem, ...], int]:
    """The items `changes` make of the subscription's latest items (`items.waiting`, else
    `items.current`), and the instant they bill from: the end of the current period. drawdown changes
    items from the next period, without prorations. `param` names what a refusal of the whole set
    names."""
    latest = {item["id"]: [item["price_id"], item["quantity"], item["metadata"], param]
              for item in (items.waiting or items.current)}
    for change in changes:
        item_id, price_id, quantity = change.item_id, change.price_id, change.quantity
        if item_id is not None and item_id not in latest:
            raise invalid(change.name("id"), f"No such subscription item: '{item_id}'", code="resource_missing")
        if change.deleted:
            del latest[item_id]
        elif item_id is None:
            latest[new_id("si")] = [price_id, quantity or 1, change.metadata, change.name("price")]
        else:
            latest[item_id] = [price_id or latest[item_id][0], quantity or latest[item_id][1], change.metadata,
                               change.name("price") if price_id else latest[item_id][3]]
    if not latest:
        raise invalid(param, "A subscription needs at least one item.")
    prices = _check_prices(ctx, [(price_param, price_id, quantity)
                                 for price_id, quantity, _, price_param in latest.values()], param)
    current = items.current
    old_price = require(ctx.pool, "prices", "price", current[0]["price_id"]) if current else prices[0]
    if (prices[0]["currency"], prices[0]["recurring_interval"], prices[0]["recurring_interval_count"]) != \
            (old_price["currency"], old_price["recurring_interval"], old_price["recurring_interval_count"]):
        raise invalid(param, "The new items must have the subscription's currency and recurring interval.")
    _, period_end_ms = objects.current_period(row, old_price, items.now_ms)
    return tuple(SubscriptionItem(item_id=item_id, price_id=price_id, quantity=quantity, metadata=metadata)
                 for item_id, (price_id, quantity, metadata, _) in latest.items()), period_end_ms


def _change_items(ctx: ApiContext, row: dict[str, Any], items: _Items, changes: list[_ItemChange],
                  param: str = "items") -> tuple[SubscriptionItem, ...]:
    """Publish `changes`: item metadata at once (SubscriptionItemUpdated), the rest from the next
    period (SubscriptionItemsChanged). Returns the next period's items (() when only metadata changed)."""
    if row["status"] == "canceled":
        raise conflict(f"Subscription '{row['id']}' is canceled.", "subscription_canceled")
    metadata = items.metadata
    facts: list = [
        SubscriptionItemUpdated(subscription_id=row["id"], customer_id=row["customer_id"], item_id=change.item_id,
                                metadata=change.metadata, updated_at_ms=items.now_ms)
        for change in changes
        if change.item_id is not None and not change.deleted and change.metadata != metadata[change.item_id]]
    next_items: tuple[SubscriptionItem, ...] = ()
    if any(change.bills for change in changes):
        next_items, effective_from_ms = _next_period_items(ctx, row, changes, items, param)
        facts.append(SubscriptionItemsChanged(subscription_id=row["id"], customer_id=row["customer_id"],
                                              items=next_items, changed_at_ms=items.now_ms,
                                              effective_from_ms=effective_from_ms))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact) for fact in facts])
    return next_items


def update_subscription(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    cancel_at_period_end = params.bool("cancel_at_period_end")
    row = require(ctx.pool, "subscriptions", "subscription", id)
    metadata = params.metadata_update(row["metadata"])
    item_changes: list[_ItemChange] = []
    if params.has("items"):  # (only then is the customer needed: a deleted one's subscription still answers)
        items = _items_to_change(ctx, row)
        item_changes = _item_changes(params, items.metadata)
    params.str("proration_behavior", choices=["none"])  # items change from the next period: nothing to prorate
    params.done()
    if item_changes:
        _change_items(ctx, row, items, item_changes)
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


# --- /v1/subscription_items: one item at a time, by the same rules as items[] on an update ---------


def _subscription_of_item(ctx: ApiContext, item_id: str) -> dict[str, Any]:
    found = fetch_one(ctx.pool, "select subscription_id from subscription_items where id = %s limit 1", item_id)
    if found is None:
        raise not_found("subscription item", item_id)
    return require(ctx.pool, "subscriptions", "subscription", found["subscription_id"])


def _item_object(ctx: ApiContext, row: dict[str, Any], item_id: str) -> dict[str, Any]:
    """The item as its subscription shows it: this period's, else the waiting version's (an item
    created for the next period). An item deleted from a period gone by is no more (404)."""
    rendered = subscription_object(ctx, row)
    for item in rendered["items"]["data"] + (rendered["next_period_items"] or {"data": []})["data"]:
        if item["id"] == item_id:
            return item
    raise not_found("subscription item", item_id)


def retrieve_subscription_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return _item_object(ctx, _subscription_of_item(ctx, id), id)


def list_subscription_items(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """The items billing the current period, in the subscription's order (its `items`)."""
    subscription_id = params.str("subscription", required=True, max_length=200)
    row = require(ctx.pool, "subscriptions", "subscription", subscription_id, param="subscription")
    return page_of(params, subscription_object(ctx, row)["items"]["data"], "/v1/subscription_items")


def _known_item(ctx: ApiContext, item_id: str) -> tuple[dict[str, Any], _Items]:
    """The subscription of an item of its current period or of a waiting change, and its items."""
    row = _subscription_of_item(ctx, item_id)
    items = _items_to_change(ctx, row)
    if item_id not in items.metadata:
        raise not_found("subscription item", item_id)
    return row, items


def create_subscription_item(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """A new item, billed from the next period (as items[] with a new price on an update)."""
    subscription_id = params.str("subscription", required=True, max_length=200)
    change = _read_item_change(params, "", None, False, {})
    params.str("proration_behavior", choices=["none"])
    params.done()
    row = require(ctx.pool, "subscriptions", "subscription", subscription_id, param="subscription")
    items = _items_to_change(ctx, row)
    next_items = _change_items(ctx, row, items, [change], param="price")
    return _item_object(ctx, row, next_items[-1].item_id)  # (a new item joins the items last)


def update_subscription_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Metadata at once; price and quantity from the next period (as items[] with an id on an update)."""
    row, items = _known_item(ctx, id)
    change = _read_item_change(params, "", id, False, items.metadata)
    params.str("proration_behavior", choices=["none"])
    params.done()
    _change_items(ctx, row, items, [change], param="price")
    return _item_object(ctx, row, id)


def delete_subscription_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Removed from the next period on (as items[] with deleted): it bills the current one."""
    params.str("proration_behavior", choices=["none"])
    params.done()
    row, items = _known_item(ctx, id)
    _change_items(ctx, row, items, [_ItemChange("", id, True, None, None, {})], param="id")
    return deleted_subscription_item(ctx, Params({}), id)


def deleted_subscription_item(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    _subscription_of_item(ctx, id)
    return {"id": id, "object": "subscription_item", "deleted": True}


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
ITEM_FORM = {"price": "string", "quantity": "integer", "metadata[key]": "string", "proration_behavior": "string"}
route(router, "POST", "/v1/subscription_items", create_subscription_item, answers_with=retrieve_subscription_item,
      creates="si", summary="Add an item to a subscription (from the next period)",
      form={"subscription": "string", **ITEM_FORM})
route(router, "GET", "/v1/subscription_items", list_subscription_items, summary="List a subscription's items",
      query={"subscription": "string", "limit": "integer", "starting_after": "string", "ending_before": "string"})
route(router, "GET", "/v1/subscription_items/{id}", retrieve_subscription_item, summary="Retrieve a subscription item")
route(router, "POST", "/v1/subscription_items/{id}", update_subscription_item, answers_with=retrieve_subscription_item,
      summary="Update a subscription item: metadata at once, price or quantity from the next period", form=ITEM_FORM)
route(router, "DELETE", "/v1/subscription_items/{id}", delete_subscription_item,
      answers_with=deleted_subscription_item, summary="Remove a subscription item (from the next period)",
      form={"proration_behavior": "string"})

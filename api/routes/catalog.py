"""/v1/products and /v1/prices (monthly or yearly recurring; metered with a meter, or licensed):
create, retrieve, list, update."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_one, now_ms, paginate, require
from billing.errors import BillingError
from billing.facts import PriceCreated, PriceUpdated, ProductCreated, ProductUpdated, RecurringInterval, UsageType
from billing.money import MAX_UNIT_PRICE_MINOR, minor_unit_exponent, parse_unit_amount_decimal

router = APIRouter(tags=["catalog"])
STRING = "string"


def create_product(ctx: ApiContext, params: Params) -> dict[str, Any]:
    name = params.str("name", required=True, max_length=250)
    metadata = params.metadata() or {}
    params.done()
    product_id = new_id("prod")
    fact = ProductCreated(product_id=product_id, name=name, created_at_ms=now_ms(), metadata=metadata)
    ctx.wait([ctx.publisher.publish("catalog", product_id, fact)])
    return objects.product(require(ctx.pool, "products", "product", product_id))


def retrieve_product(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.product(require(ctx.pool, "products", "product", id))


def list_products(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = _active_filter(params)
    return paginate(ctx.pool, params, "/v1/products", "products", conditions, arguments, objects.product)


def _active_filter(params: Params) -> tuple[list[str], list[Any]]:
    active = params.bool("active")
    return ([], []) if active is None else (["active = %s"], [active])


def update_product(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """name, active, description, metadata (a parameter not given keeps its value)."""
    row = require(ctx.pool, "products", "product", id)
    name = params.str("name", max_length=250) if params.has("name") else row["name"]
    active = params.bool("active")
    description = params.str("description", max_length=5000) if params.has("description") else row["description"]
    metadata = params.metadata_update(row["metadata"])
    params.done()
    if not name:
        raise invalid("name", "A product needs a name.")
    active = row["active"] if active is None else active
    fact = ProductUpdated(product_id=id, name=name, active=active, description=description or None,
                          metadata=metadata, updated_at_ms=now_ms())
    ctx.wait([ctx.publisher.publish("catalog", id, fact)])
    return objects.product(require(ctx.pool, "products", "product", id))


def create_price(ctx: ApiContext, params: Params) -> dict[str, Any]:
    product_id = params.str("product", required=True, max_length=200)
    currency = params.str("currency", required=True, max_length=3).lower()
    unit_amount = params.int("unit_amount", minimum=0, maximum=MAX_UNIT_PRICE_MINOR - 1)
    unit_amount_text = params.str("unit_amount_decimal", max_length=40)
    params.str("billing_scheme", choices=["per_unit"])
    recurring = params.object("recurring", required=True)
    interval = recurring.str("interval", required=True, choices=[i.value for i in RecurringInterval])
    interval_count = recurring.int("interval_count", minimum=1, maximum=12, default=1)
    usage_type = recurring.str("usage_type", choices=[u.value for u in UsageType]) or "licensed"
    meter_id = recurring.str("meter", max_length=200)
    nickname = params.str("nickname", max_length=5000) or None
    lookup_key = params.str("lookup_key", max_length=200) or None
    transfer = params.bool("transfer_lookup_key", default=False)
    metadata = params.metadata() or {}
    params.done()
    try:
        minor_unit_exponent(currency)
    except BillingError as exc:
        raise invalid("currency", f"Invalid currency: {currency}") from exc
    if (unit_amount is None) == (unit_amount_text is None):
        raise invalid("unit_amount_decimal", "Give exactly one of unit_amount and unit_amount_decimal.")
    try:
        unit_amount_decimal = parse_unit_amount_decimal(unit_amount_text) if unit_amount_text is not None else None
    except BillingError as exc:
        raise invalid("unit_amount_decimal", str(exc), code="parameter_invalid_decimal") from exc
    if unit_amount_decimal is None:
        from decimal import Decimal

        unit_amount_decimal = Decimal(unit_amount)
    require(ctx.pool, "products", "product", product_id, param="product")
    if usage_type == "metered":
        if meter_id is None:
            raise invalid("recurring[meter]", "A metered price needs recurring[meter].", code="parameter_missing")
        meter = require(ctx.pool, "meters", "billing.meter", meter_id, param="recurring[meter]")
        if meter["status"] != "active":
            raise invalid("recurring[meter]", f"Meter '{meter_id}' is inactive: no new price can use it.")
    elif meter_id is not None:
        raise invalid("recurring[meter]", "Only metered prices take a meter.")
    price_id = new_id("price")
    facts: list[Any] = _lookup_key_moves(ctx, lookup_key, price_id, transfer)
    facts.append(PriceCreated(price_id=price_id, product_id=product_id, currency=currency,
                              unit_amount_decimal=unit_amount_decimal, usage_type=UsageType(usage_type),
                              meter_id=meter_id, recurring_interval=RecurringInterval(interval),
                              recurring_interval_count=interval_count, created_at_ms=now_ms(), nickname=nickname,
                              lookup_key=lookup_key, metadata=metadata))
    ctx.wait([ctx.publisher.publish("catalog", fact.price_id, fact) for fact in facts])
    return objects.price(require(ctx.pool, "prices", "price", price_id))


def retrieve_price(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.price(require(ctx.pool, "prices", "price", id))


def list_prices(ctx: ApiContext, params: Params) -> dict[str, Any]:
    product_id = params.str("product", max_length=200)
    lookup_keys = [str(key) for key in params.list("lookup_keys", max_items=10)] if params.has("lookup_keys") else []
    conditions, arguments = _active_filter(params)
    if product_id is not None:
        conditions.append("product_id = %s")
        arguments.append(product_id)
    if lookup_keys:
        conditions.append("lookup_key = any(%s)")
        arguments.append(lookup_keys)
    return paginate(ctx.pool, params, "/v1/prices", "prices", conditions, arguments, objects.price)


def _lookup_key_moves(ctx: ApiContext, lookup_key: str | None, price_id: str, transfer: bool) -> list[Any]:
    """A lookup key names one price: taken by another, it is refused, or (transfer_lookup_key) moved
    here, which is first a PriceUpdated taking it from its holder."""
    holder = fetch_one(ctx.pool, "select * from prices where lookup_key = %s and id <> %s", lookup_key, price_id) \
        if lookup_key is not None else None
    if holder is None:
        return []
    if not transfer:
        raise invalid("lookup_key", f"A price (`{holder['id']}`) already uses that lookup key;"
                                    " pass transfer_lookup_key=true to move it to this price.")
    return [PriceUpdated(price_id=holder["id"], active=holder["active"], nickname=holder["nickname"], lookup_key=None,
                         metadata=holder["metadata"], updated_at_ms=now_ms())]


def update_price(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """active, nickname, lookup_key, metadata (a parameter not given keeps its value; "" clears).
    A lookup key names one price: taken by another, it is refused unless transfer_lookup_key moves it."""
    row = require(ctx.pool, "prices", "price", id)
    active = params.bool("active")
    nickname = params.str("nickname", max_length=5000) if params.has("nickname") else row["nickname"]
    lookup_key = params.str("lookup_key", max_length=200) if params.has("lookup_key") else row["lookup_key"]
    transfer = params.bool("transfer_lookup_key", default=False)
    metadata = params.metadata_update(row["metadata"])
    params.done()
    lookup_key = lookup_key or None
    facts = _lookup_key_moves(ctx, lookup_key, id, transfer) if lookup_key != row["lookup_key"] else []
    facts.append(PriceUpdated(price_id=id, active=row["active"] if active is None else active, nickname=nickname or None,
                              lookup_key=lookup_key, metadata=metadata, updated_at_ms=now_ms()))
    ctx.wait([ctx.publisher.publish("catalog", fact.price_id, fact) for fact in facts])
    return objects.price(require(ctx.pool, "prices", "price", id))


PAGE = {"limit": "integer", "starting_after": STRING, "ending_before": STRING}
route(router, "POST", "/v1/products", create_product, answers_with=retrieve_product, creates="prod", summary="Create a product", form={"name": STRING})
route(router, "GET", "/v1/products", list_products, summary="List products", query={"active": "boolean", **PAGE})
route(router, "GET", "/v1/products/{id}", retrieve_product, summary="Retrieve a product")
route(router, "POST", "/v1/products/{id}", update_product, answers_with=retrieve_product, summary="Update a product",
      form={"name": STRING, "active": "boolean", "description": STRING})
route(router, "POST", "/v1/prices", create_price, answers_with=retrieve_price, creates="price", summary="Create a recurring price",
      form={"product": STRING, "currency": STRING, "unit_amount": "integer", "unit_amount_decimal": STRING,
            "billing_scheme": STRING, "recurring[interval]": STRING, "recurring[interval_count]": "integer",
            "recurring[usage_type]": STRING, "recurring[meter]": STRING, "nickname": STRING, "lookup_key": STRING,
            "transfer_lookup_key": "boolean"})
route(router, "GET", "/v1/prices", list_prices, summary="List prices",
      query={"product": STRING, "active": "boolean", **PAGE})
route(router, "GET", "/v1/prices/{id}", retrieve_price, summary="Retrieve a price")
route(router, "POST", "/v1/prices/{id}", update_price, answers_with=retrieve_price, summary="Update a price",
      form={"active": "boolean", "nickname": STRING, "lookup_key": STRING, "transfer_lookup_key": "boolean"})

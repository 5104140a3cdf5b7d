"""/v1/products and /v1/prices (monthly or yearly recurring; metered with a meter, or licensed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.store import paginate, now_ms, require
from billing.errors import BillingError
from billing.facts import PriceCreated, ProductCreated, RecurringInterval, UsageType
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
    return paginate(ctx.pool, params, "/v1/products", "products", [], [], objects.product)


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
    fact = PriceCreated(price_id=price_id, product_id=product_id, currency=currency,
                        unit_amount_decimal=unit_amount_decimal, usage_type=UsageType(usage_type), meter_id=meter_id,
                        recurring_interval=RecurringInterval(interval), recurring_interval_count=interval_count,
                        created_at_ms=now_ms())
    ctx.wait([ctx.publisher.publish("catalog", price_id, fact)])
    return objects.price(require(ctx.pool, "prices", "price", price_id))


def retrieve_price(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.price(require(ctx.pool, "prices", "price", id))


def list_prices(ctx: ApiContext, params: Params) -> dict[str, Any]:
    product_id = params.str("product", max_length=200)
    conditions, arguments = ([], []) if product_id is None else (["product_id = %s"], [product_id])
    return paginate(ctx.pool, params, "/v1/prices", "prices", conditions, arguments, objects.price)


PAGE = {"limit": "integer", "starting_after": STRING, "ending_before": STRING}
route(router, "POST", "/v1/products", create_product, answers_with=retrieve_product, creates="prod", summary="Create a product", form={"name": STRING})
route(router, "GET", "/v1/products", list_products, summary="List products", query=PAGE)
route(router, "GET", "/v1/products/{id}", retrieve_product, summary="Retrieve a product")
route(router, "POST", "/v1/prices", create_price, answers_with=retrieve_price, creates="price", summary="Create a recurring price",
      form={"product": STRING, "currency": STRING, "unit_amount": "integer", "unit_amount_decimal": STRING,
            "billing_scheme": STRING, "recurring[interval]": STRING, "recurring[interval_count]": "integer",
            "recurring[usage_type]": STRING, "recurring[meter]": STRING})
route(router, "GET", "/v1/prices", list_prices, summary="List prices", query={"product": STRING, **PAGE})
route(router, "GET", "/v1/prices/{id}", retrieve_price, summary="Retrieve a price")

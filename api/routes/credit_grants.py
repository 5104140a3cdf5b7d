"""/v1/billing/credit_grants: create, retrieve, list, update (expires_at, metadata), expire, void."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_one, paginate, read_customer_now_ms, require
from billing.facts import CreditGrantCreated, CreditGrantExpired, CreditGrantUpdated, CreditGrantVoided, \
    GrantCategory, GrantPriceType, GrantScope
from api.routes.balances import grant_states
from billing.errors import TooManyUnusedGrants
from billing.grants import MAX_UNUSED_GRANTS_PER_CUSTOMER, ensure_room_for_another_grant
from billing.money import MAX_GRANT_AMOUNT_MINOR, MAX_TIMESTAMP_S, minor_unit_exponent

router = APIRouter(tags=["credit grants"])
MAX_TIME_S = MAX_TIMESTAMP_S


def _grant(ctx: ApiContext, grant_id: str) -> dict[str, Any]:
    return require(ctx.pool, "credit_grants", "billing.credit_grant", grant_id)


def create_credit_grant(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", required=True, max_length=200)
    amount = params.object("amount", required=True)
    amount.str("type", required=True, choices=["monetary"])
    monetary = amount.object("monetary", required=True)
    value_minor = monetary.int("value", required=True, minimum=1, maximum=MAX_GRANT_AMOUNT_MINOR)
    currency = monetary.str("currency", required=True, max_length=3).lower()
    scope = params.object("applicability_config", required=True).object("scope", required=True)
    price_type = scope.str("price_type", choices=["metered"])
    price_ids = [price.str("id", required=True, max_length=200) for price in scope.objects("prices", max_items=100)]
    category = params.str("category", choices=[c.value for c in GrantCategory]) or "paid"
    effective_at_s = params.int("effective_at", minimum=0, maximum=MAX_TIME_S)
    expires_at_s = params.int("expires_at", minimum=0, maximum=MAX_TIME_S)
    name = params.str("name", max_length=100)
    priority = params.int("priority", minimum=0, maximum=100, default=50)
    metadata = params.metadata() or {}
    params.done()
    try:
        minor_unit_exponent(currency)
    except Exception as exc:
        raise invalid("amount[monetary][currency]", f"Invalid currency: {currency}") from exc
    if (price_type is None) == (not price_ids):
        raise invalid("applicability_config[scope]", "Give exactly one of price_type and prices.")
    for index, price_id in enumerate(price_ids):
        require(ctx.pool, "prices", "price", price_id, param=f"applicability_config[scope][prices][{index}][id]")
    customer = require(ctx.pool, "customers", "customer", customer_id, param="customer")
    created_at_ms = read_customer_now_ms(ctx.pool, customer)
    effective_at_ms = created_at_ms if effective_at_s is None else effective_at_s * 1000
    expires_at_ms = None if expires_at_s is None else expires_at_s * 1000
    if expires_at_ms is not None and expires_at_ms <= effective_at_ms:
        raise invalid("expires_at", "expires_at must be after effective_at.")
    with ctx.pool.connection() as conn:
        grants = grant_states(conn, customer_id).values()
    try:
        ensure_room_for_another_grant(grants, created_at_ms)  # Stripe's rule: used-up grants do not count
    except TooManyUnusedGrants as exc:
        raise conflict(f"A customer can have at most {MAX_UNUSED_GRANTS_PER_CUSTOMER} unused credit grants.",
                       "too_many_unused_credit_grants", "customer") from exc
    grant_id = new_id("credgr")
    fact = CreditGrantCreated(
        grant_id=grant_id, customer_id=customer_id, name=name, amount_minor=value_minor, currency=currency,
        scope=GrantScope(price_type=GrantPriceType(price_type) if price_type else None, price_ids=tuple(price_ids)),
        category=GrantCategory(category), priority=priority, effective_at_ms=effective_at_ms,
        expires_at_ms=expires_at_ms, created_at_ms=created_at_ms, metadata=metadata,
        test_clock_id=customer["test_clock_id"])
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return objects.credit_grant(_grant(ctx, grant_id))


def retrieve_credit_grant(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.credit_grant(_grant(ctx, id))


def list_credit_grants(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", max_length=200)
    conditions, arguments = ([], []) if customer_id is None else (["customer_id = %s"], [customer_id])
    return paginate(ctx.pool, params, "/v1/billing/credit_grants", "credit_grants", conditions, arguments,
                    objects.credit_grant)


def update_credit_grant(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    has_expiry = params.has("expires_at")
    expires_at_s = params.int("expires_at", minimum=0, maximum=MAX_TIME_S, empty_is_none=True)
    row = _grant(ctx, id)
    new_metadata = params.metadata_update(row["metadata"])
    params.done()
    if row["voided_ms"] is not None or row["expired_ms"] is not None:
        raise conflict(f"Credit grant '{id}' is voided or expired and cannot change.", "credit_grant_closed")
    expires_at_ms = (expires_at_s * 1000 if expires_at_s is not None else None) if has_expiry else row["expires_at_ms"]
    if expires_at_ms is not None and expires_at_ms <= row["effective_at_ms"]:
        raise invalid("expires_at", "expires_at must be after effective_at.")
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = CreditGrantUpdated(grant_id=id, customer_id=row["customer_id"], expires_at_ms=expires_at_ms,
                              metadata=new_metadata, updated_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return objects.credit_grant(_grant(ctx, id))


def expire_credit_grant(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    row = _grant(ctx, id)
    if row["voided_ms"] is not None:
        raise conflict(f"Credit grant '{id}' is voided.", "credit_grant_already_voided")
    if row["expired_ms"] is not None:
        raise conflict(f"Credit grant '{id}' has already expired.", "credit_grant_already_expired")
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = CreditGrantExpired(grant_id=id, customer_id=row["customer_id"],
                              expired_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return objects.credit_grant(_grant(ctx, id))


def void_credit_grant(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    row = _grant(ctx, id)
    if row["voided_ms"] is not None:
        raise conflict(f"Credit grant '{id}' is already voided.", "credit_grant_already_voided")
    if row["expired_ms"] is not None:
        raise conflict(f"Credit grant '{id}' has expired.", "credit_grant_already_expired")
    applied = fetch_one(ctx.pool, "select 1 from credit_balance_transactions where customer_id = %s"
                                  " and grant_id = %s and reason = 'credits_applied' limit 1", row["customer_id"], id)
    if applied is not None:
        raise conflict(f"Credit grant '{id}' has been applied to an invoice and cannot be voided.",
                       "credit_grant_already_applied")
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = CreditGrantVoided(grant_id=id, customer_id=row["customer_id"],
                             voided_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return objects.credit_grant(_grant(ctx, id))


route(router, "POST", "/v1/billing/credit_grants", create_credit_grant, answers_with=retrieve_credit_grant, creates="credgr", summary="Create a credit grant",
      form={"customer": "string", "amount[type]": "string", "amount[monetary][value]": "integer",
            "amount[monetary][currency]": "string", "applicability_config[scope][price_type]": "string",
            "category": "string", "effective_at": "integer", "expires_at": "integer", "name": "string",
            "priority": "integer"})
route(router, "GET", "/v1/billing/credit_grants", list_credit_grants, summary="List credit grants",
      query={"customer": "string", "limit": "integer", "starting_after": "string", "ending_before": "string"})
route(router, "GET", "/v1/billing/credit_grants/{id}", retrieve_credit_grant, summary="Retrieve a credit grant")
route(router, "POST", "/v1/billing/credit_grants/{id}", update_credit_grant, answers_with=retrieve_credit_grant, summary="Update expires_at or metadata",
      form={"expires_at": "integer"})
route(router, "POST", "/v1/billing/credit_grants/{id}/expire", expire_credit_grant, answers_with=retrieve_credit_grant, summary="Expire a credit grant")
route(router, "POST", "/v1/billing/credit_grants/{id}/void", void_credit_grant, answers_with=retrieve_credit_grant, summary="Void an unapplied grant")

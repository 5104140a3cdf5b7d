"""/v1/customers: create (optionally on a test clock), retrieve, list, update, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.routes.meter_events import forget_customer
from api.store import fetch_all, fetch_one, paginate, read_customer_now_ms, require
from billing.facts import CustomerCreated, CustomerDeleted, CustomerUpdated, SubscriptionCanceled

router = APIRouter(tags=["customers"])
STRING = "string"


def create_customer(ctx: ApiContext, params: Params) -> dict[str, Any]:
    name = params.str("name", max_length=256)
    email = params.str("email", max_length=512)
    metadata = params.metadata() or {}
    test_clock_id = params.str("test_clock", max_length=200)
    params.done()
    if test_clock_id is not None:
        clock = require(ctx.pool, "test_clocks", "test clock", test_clock_id, param="test_clock")
        if clock["deleted_ms"] is not None:
            raise invalid("test_clock", f"Test clock '{test_clock_id}' has been deleted.")
    customer_id = new_id("cus")
    created_at_ms = read_customer_now_ms(ctx.pool, {"test_clock_id": test_clock_id})
    fact = CustomerCreated(customer_id=customer_id, name=name, email=email, test_clock_id=test_clock_id,
                           created_at_ms=created_at_ms, metadata=metadata)
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return objects.customer(require(ctx.pool, "customers", "customer", customer_id))


def retrieve_customer(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    row = fetch_one(ctx.pool, "select * from customers where id = %s", id)
    if row is not None and row["deleted_ms"] is not None:
        return deleted_customer(id)  # as Stripe answers for a deleted customer
    return objects.customer(require(ctx.pool, "customers", "customer", id))


def deleted_customer(customer_id: str) -> dict[str, Any]:
    return {"id": customer_id, "object": "customer", "deleted": True}


def delete_customer(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """As Stripe: its subscriptions are canceled at once (no final invoice), then the customer is
    gone (its meter events refused); what it was billed stays, and its invoices can still be read."""
    params.done()
    row = require(ctx.pool, "customers", "customer", id)
    now = read_customer_now_ms(ctx.pool, row)
    facts: list[Any] = [SubscriptionCanceled(subscription_id=sub["id"], customer_id=id, invoice_now=False, canceled_at_ms=now)
                        for sub in fetch_all(ctx.pool, "select id from subscriptions where customer_id = %s"
                                                       " and status <> 'canceled' order by id", id)]
    facts.append(CustomerDeleted(customer_id=id, deleted_at_ms=now))
    ctx.wait([ctx.publisher.publish("customer-facts", id, fact) for fact in facts])
    forget_customer(id)  # (other API processes forget it within a minute; the workers refuse its events at once)
    return deleted_customer(id)


def answer_deleted(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """A retried delete: deleted by its first attempt."""
    row = fetch_one(ctx.pool, "select deleted_ms from customers where id = %s", id)
    if row is None or row["deleted_ms"] is None:
        return retrieve_customer(ctx, params, id)
    return deleted_customer(id)


def update_customer(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """name, email and metadata, as Stripe updates them (a parameter not given keeps its value; ""
    clears it); the customer.updated event carries the changed fields as previous_attributes."""
    row = require(ctx.pool, "customers", "customer", id)
    name = params.str("name", max_length=256) if params.has("name") else row["name"]
    email = params.str("email", max_length=512) if params.has("email") else row["email"]
    metadata = params.metadata_update(row["metadata"])
    params.done()
    name, email = name or None, email or None
    if (name, email, metadata) == (row["name"], row["email"], row["metadata"]):
        return objects.customer(row)  # nothing changes: no fact, no event (as Stripe sends none)
    fact = CustomerUpdated(customer_id=id, name=name, email=email, metadata=metadata,
                           updated_at_ms=read_customer_now_ms(ctx.pool, row))
    ctx.wait([ctx.publisher.publish("customer-facts", id, fact)])
    return objects.customer(require(ctx.pool, "customers", "customer", id))


def list_customers(ctx: ApiContext, params: Params) -> dict[str, Any]:
    conditions, arguments = ["deleted_ms is null"], []
    email = params.str("email", max_length=512)
    test_clock_id = params.str("test_clock", max_length=200)
    if email is not None:
        conditions.append("email = %s")
        arguments.append(email)
    if test_clock_id is not None:
        conditions.append("test_clock_id = %s")
        arguments.append(test_clock_id)
    return paginate(ctx.pool, params, "/v1/customers", "customers", conditions, arguments, objects.customer)


route(router, "POST", "/v1/customers", create_customer, answers_with=retrieve_customer, creates="cus", summary="Create a customer",
      form={"name": STRING, "email": STRING, "test_clock": STRING})
route(router, "GET", "/v1/customers", list_customers, summary="List customers",
      query={"email": STRING, "test_clock": STRING, "limit": "integer", "starting_after": STRING,
             "ending_before": STRING})
route(router, "GET", "/v1/customers/{id}", retrieve_customer, summary="Retrieve a customer")
route(router, "DELETE", "/v1/customers/{id}", delete_customer, answers_with=answer_deleted,
      summary="Delete a customer (its subscriptions are canceled at once)")
route(router, "POST", "/v1/customers/{id}", update_customer, answers_with=retrieve_customer,
      summary="Update a customer's name, email or metadata", form={"name": STRING, "email": STRING})

"""Credit balance summary, credit balance transactions, and the live balance (beyond Stripe)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import invalid, not_found
from api.params import Params
from api.store import now_ms, paginate, require
from billing.facts import CreditBalanceTransaction, CreditGrantCreated, GrantCategory, GrantPriceType, GrantScope, \
    TransactionReason, TransactionType
from billing.grants import GrantState, credit_balance_summary, signed_amount_minor

router = APIRouter(tags=["credit balances"])


def grant_states(conn: Any, customer_id: str, grant_id: str | None = None) -> dict[str, GrantState]:
    """The customer's grants (or one grant) as the pure rules' GrantState, ledgers from the projection."""
    with conn.pipeline():  # both queries in one round trip
        grants_cursor = conn.execute("select * from credit_grants where customer_id = %s"
                                     + (" and id = %s" if grant_id else ""),
                                     (customer_id, grant_id) if grant_id else (customer_id,))
        transactions_cursor = conn.execute("select * from credit_balance_transactions where customer_id = %s"
                                           + (" and grant_id = %s" if grant_id else "") + " order by effective_at_ms, id",
                                           (customer_id, grant_id) if grant_id else (customer_id,))
        grants, transactions = grants_cursor.fetchall(), transactions_cursor.fetchall()
    return states_from_rows(grants, transactions)


def states_from_rows(grants: list[dict[str, Any]], transactions: list[dict[str, Any]]) -> dict[str, GrantState]:
    """GrantStates from credit_grants rows and their credit_balance_transactions rows (in ledger order)."""
    by_grant: dict[str, list[CreditBalanceTransaction]] = {}
    for row in transactions:
        by_grant.setdefault(row["grant_id"], []).append(CreditBalanceTransaction(
            transaction_id=row["id"], customer_id=row["customer_id"], grant_id=row["grant_id"],
            currency=row["currency"], amount_minor=row["amount_minor"], type=TransactionType(row["type"]),
            reason=TransactionReason(row["reason"]), invoice_id=row["invoice_id"],
            invoice_line_id=row["invoice_line_id"], effective_at_ms=row["effective_at_ms"]))
    states = {}
    for row in grants:
        ledger = tuple(by_grant.get(row["id"], ()))
        created = CreditGrantCreated(
            grant_id=row["id"], customer_id=row["customer_id"], name=row["name"], amount_minor=row["amount_minor"],
            currency=row["currency"],
            scope=GrantScope(price_type=GrantPriceType(row["scope_price_type"]) if row["scope_price_type"] else None,
                             price_ids=tuple(row["scope_price_ids"])),
            category=GrantCategory(row["category"]), priority=row["priority"],
            effective_at_ms=row["effective_at_ms"], expires_at_ms=row["expires_at_ms"],
            created_at_ms=row["created_ms"], metadata=row["metadata"], test_clock_id=row["test_clock_id"])
        states[row["id"]] = GrantState(
            grant=created, expires_at_ms=row["expires_at_ms"], metadata=row["metadata"], transactions=ledger,
            ledger_balance_minor=sum(signed_amount_minor(transaction) for transaction in ledger),
            voided_at_ms=row["voided_ms"], expired_at_ms=row["expired_ms"])
    return states


def _filtered(states: dict[str, GrantState], filter_: Params | None, customer_id: str) -> list[GrantState]:
    if filter_ is None:
        return list(states.values())
    kind = filter_.str("type", required=True, choices=["applicability_scope", "credit_grant"])
    if kind == "credit_grant":
        grant_id = filter_.str("credit_grant", required=True, max_length=200)
        if grant_id not in states:
            raise invalid("filter[credit_grant]", f"No such credit grant for customer {customer_id}: '{grant_id}'",
                          code="resource_missing")
        return [states[grant_id]]
    scope = filter_.object("applicability_scope", required=True)
    price_type = scope.str("price_type", choices=["metered"])
    price_ids = {price.str("id", required=True, max_length=200) for price in scope.objects("prices", max_items=20)}
    if (price_type is None) == (not price_ids):
        raise invalid("filter[applicability_scope]", "Give exactly one of price_type and prices.")
    if price_type is not None:
        return [state for state in states.values() if state.grant.scope.price_type == GrantPriceType.METERED]
    return [state for state in states.values()
            if state.grant.scope.price_type == GrantPriceType.METERED or price_ids & set(state.grant.scope.price_ids)]


# The summary's customer, its grants and their ledgers in one statement: one round trip, about half
# the CPU of three queries (each column is text, bigint, integer, text[] or jsonb: JSON keeps them).
SUMMARY_QUERY = ("select c.id, t.frozen_time_ms,"
                 " (select coalesce(json_agg(g), '[]') from credit_grants g where g.customer_id = c.id) as grants,"
                 " (select coalesce(json_agg(x order by x.effective_at_ms, x.id), '[]')"
                 "  from credit_balance_transactions x where x.customer_id = c.id) as transactions"
                 " from customers c left join test_clocks t on t.id = c.test_clock_id where c.id = %s")
# The customer (found: a row) and its live balances (currency null: none) in one statement.
LIVE_BALANCE_QUERY = ("select l.* from customers c left join live_balances l on l.customer_id = c.id"
                      " where c.id = %s order by l.currency")


def credit_balance_summary_(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", required=True, max_length=200)
    filter_ = params.object("filter")
    with ctx.pool.connection() as conn:
        customer = conn.execute(SUMMARY_QUERY, (customer_id,)).fetchone()
    if customer is None:
        raise invalid("customer", f"No such customer: '{customer_id}'", code="resource_missing")
    states = states_from_rows(customer["grants"], customer["transactions"])
    as_of_ms = customer["frozen_time_ms"] if customer["frozen_time_ms"] is not None else now_ms()
    grants = _filtered(states, filter_, customer_id)
    params.done()
    balances = credit_balance_summary(grants, as_of_ms)
    return {"object": "billing.credit_balance_summary", "customer": customer_id, "livemode": False,
            "balances": [{"available_balance": objects.monetary(balance.available_balance_minor, balance.currency),
                          "ledger_balance": objects.monetary(balance.ledger_balance_minor, balance.currency)}
                         for balance in balances]}


def list_transactions(ctx: ApiContext, params: Params) -> dict[str, Any]:
    customer_id = params.str("customer", required=True, max_length=200)
    grant_id = params.str("credit_grant", max_length=200)
    conditions, arguments = ["customer_id = %s"], [customer_id]
    if grant_id is not None:
        conditions.append("grant_id = %s")
        arguments.append(grant_id)
    return paginate(ctx.pool, params, "/v1/billing/credit_balance_transactions", "credit_balance_transactions",
                    conditions, arguments, objects.credit_balance_transaction, order_column="effective_at_ms")


def retrieve_transaction(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    row = require(ctx.pool, "credit_balance_transactions", "billing.credit_balance_transaction", id)
    return objects.credit_balance_transaction(row)


def live_balance(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """Beyond Stripe: available credits minus the accrued, not yet invoiced usage, per currency."""
    customer_id = params.str("customer", required=True, max_length=200)
    params.done()
    with ctx.pool.connection() as conn:
        rows = conn.execute(LIVE_BALANCE_QUERY, (customer_id,)).fetchall()
    if not rows:
        raise not_found("customer", customer_id, "customer")
    rows = [row for row in rows if row["currency"] is not None]
    return {"object": "billing.live_balance", "customer": customer_id, "livemode": False, "balances": [
        {"currency": row["currency"], "available_credits": row["available_credits_minor"],
         "accrued_usage": row["accrued_usage_minor"], "live_balance": row["live_balance_minor"],
         "as_of": row["as_of_ms"] // 1000, "as_of_ms": row["as_of_ms"]} for row in rows]}


route(router, "GET", "/v1/billing/credit_balance_summary", credit_balance_summary_,
      summary="A customer's credit balances per currency",
      query={"customer": "string", "filter[type]": "string", "filter[credit_grant]": "string",
             "filter[applicability_scope][price_type]": "string"})
route(router, "GET", "/v1/billing/credit_balance_transactions", list_transactions,
      summary="List credit balance transactions",
      query={"customer": "string", "credit_grant": "string", "limit": "integer", "starting_after": "string",
             "ending_before": "string"})
route(router, "GET", "/v1/billing/credit_balance_transactions/{id}", retrieve_transaction,
      summary="Retrieve a credit balance transaction")
route(router, "GET", "/v1/billing/live_balance", live_balance, summary="A customer's live balance (beyond Stripe)",
      query={"customer": "string"})

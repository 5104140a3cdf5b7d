"""The dashboard's pages. Reads go through the API's handlers (the same objects the API answers) or
api.store; every change is an API handler run on the page's form (dashboard.forms)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api import objects
from api.errors import ApiError
from api.params import Params
from api.routes import (alerts, catalog, clocks, credit_grants, customers, dead_letters, invoices, meters, subscriptions,
                        webhook_endpoints)
from api.routes.balances import credit_balance_summary_, grant_states, list_transactions, live_balance
from api.store import fetch_all, fetch_one, read_customer_now_ms, require
from billing.grants import available_balance_minor
from billing.money import minor_unit_exponent
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_MINUTE
from dashboard.app import PREFIX, authenticated, redirect, render
from dashboard.forms import FormResult, run_form

router = APIRouter(dependencies=[Depends(authenticated)])
LIST_LIMIT = 100  # rows a list page shows (the API's page size limit)
SEARCH_LIMIT = 50
BURN_DOWN_MAX_POINTS = 60
USAGE_WINDOWS = {"hour": 24, "day": 31}  # windows the usage chart shows per grouping


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


def _form(request: Request) -> str:
    return request.state.form_body


def _params(**values: Any) -> Params:
    return Params({key: str(value) for key, value in values.items() if value is not None})


def _page(request: Request, template: str, build: Callable[[], dict[str, Any]], status: int = 200) -> Response:
    """Render `template` with what `build` reads; an object that does not exist is a 404 page."""
    try:
        context = build()
    except ApiError as error:
        if error.status != 404:
            raise
        return render(request, "not_found.html", status=404, message=error.message)
    return render(request, template, status=status, **context)


def _after(request: Request, result: FormResult, success_url: Callable[[Any], str],
           again: Callable[[FormResult], Response]) -> Response:
    return redirect(success_url(result.answer)) if result.ok else again(result)


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    return redirect(f"{PREFIX}/customers")


# Customers ---------------------------------------------------------------------------------------

def search_customers(ctx: Any, query: str) -> list[dict[str, Any]]:
    """Newest first; with a query, customers whose id is it or whose name or email contains it."""
    if not query:
        rows = fetch_all(ctx.pool, "select * from customers order by created_ms desc, id desc limit %s", SEARCH_LIMIT)
    else:
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = fetch_all(ctx.pool, "select * from customers where id = %s or name ilike %s or email ilike %s"
                                   " order by created_ms desc, id desc limit %s", query, like, like, SEARCH_LIMIT)
    return [objects.customer(row) for row in rows]


def _live_clocks(ctx: Any) -> list[dict[str, Any]]:
    return [objects.test_clock(row) for row in fetch_all(
        ctx.pool, "select * from test_clocks where deleted_ms is null order by created_ms desc limit %s", LIST_LIMIT)]


@router.get("/customers")
def customer_list_route(request: Request, q: str = "") -> Response:
    return customer_list(request, q)


def customer_list(request: Request, q: str = "", form: FormResult | None = None, status: int = 200) -> Response:
    ctx = _ctx(request)
    query = q.strip()[:200]
    if request.headers.get("hx-request"):  # the search box: only the rows
        return render(request, "_customer_rows.html", customers=search_customers(ctx, query))
    return render(request, "customers.html", status=status, customers=search_customers(ctx, query), q=query,
                  clocks=_live_clocks(ctx), form=form or FormResult())


@router.post("/customers")
def create_customer(request: Request) -> Response:
    result = run_form(_form(request), customers.create_customer, _ctx(request))
    return _after(request, result, lambda customer: f"{PREFIX}/customers/{customer['id']}",
                  lambda failed: customer_list(request, form=failed, status=400))


def grant_rows(ctx: Any, customer_id: str, now_ms: int) -> list[dict[str, Any]]:
    """The customer's grants as the API shows them, with each one's available and ledger balance."""
    with ctx.pool.connection() as conn:
        states = grant_states(conn, customer_id)
    rows = fetch_all(ctx.pool, "select * from credit_grants where customer_id = %s order by created_ms desc, id desc",
                     customer_id)
    result = []
    for row in rows:
        state = states[row["id"]]
        status = ("voided" if state.is_voided() else "expired" if state.is_expired_at(now_ms)
                  else "scheduled" if row["effective_at_ms"] > now_ms else "active")
        result.append({"grant": objects.credit_grant(row), "available_minor": available_balance_minor(state, now_ms),
                       "ledger_minor": state.ledger_balance_minor, "status": status})
    return result


def balances_view(ctx: Any, customer_id: str) -> dict[str, Any]:
    """Available vs ledger balance per currency, the live balance, and whether it is low (at or below
    the threshold of the engine's latest low-balance alert)."""
    summary = credit_balance_summary_(ctx, _params(customer=customer_id))["balances"]
    live = live_balance(ctx, _params(customer=customer_id))["balances"]
    alerts = {row["currency"]: row for row in fetch_all(
        ctx.pool, "select distinct on (currency) * from low_balance_alerts where customer_id = %s"
                  " order by currency, alerted_at_ms desc", customer_id)}
    for balance in live:
        alert = alerts.get(balance["currency"])
        balance["low"] = alert is not None and balance["live_balance"] <= alert["threshold_minor"]
    return {"summary": summary, "live": live, "customer_id": customer_id}


def _prices_with_products(ctx: Any) -> list[dict[str, Any]]:
    return fetch_all(ctx.pool, "select p.*, d.name as product_name from prices p left join products d"
                               " on d.id = p.product_id order by p.created_ms desc limit %s", LIST_LIMIT)


def customer_view(ctx: Any, customer_id: str) -> dict[str, Any]:
    row = require(ctx.pool, "customers", "customer", customer_id)
    now_ms = read_customer_now_ms(ctx.pool, row)
    clock = fetch_one(ctx.pool, "select * from test_clocks where id = %s", row["test_clock_id"]) \
        if row["test_clock_id"] else None
    return {
        "customer": objects.customer(row), "now_s": now_ms // 1000,
        "clock": objects.test_clock(clock) if clock else None,
        "subscriptions": subscriptions.list_subscriptions(
            ctx, _params(customer=customer_id, status="all", limit=LIST_LIMIT))["data"],
        "grants": grant_rows(ctx, customer_id, now_ms),
        "balances": balances_view(ctx, customer_id),
        "invoices": invoices.list_invoices(ctx, _params(customer=customer_id, limit=LIST_LIMIT))["data"],
        "prices": _prices_with_products(ctx),
        "alerts": alert_rows(ctx, customer_id),
    }


def alert_rows(ctx: Any, customer_id: str) -> list[dict[str, Any]]:
    """The customer's billing alerts as the API shows them (archived ones left out, as the API's
    list does), each with its latest crossing."""
    rows = fetch_all(ctx.pool, "select * from billing_alerts where customer_id = %s and status <> 'archived'"
                               " order by created_ms desc, id desc limit %s", customer_id, LIST_LIMIT)
    latest = {row["alert_id"]: row for row in fetch_all(
        ctx.pool, "select distinct on (alert_id) * from billing_alert_crossings where customer_id = %s"
                  " order by alert_id, crossed_ms desc, id desc", customer_id)}
    return [{"alert": objects.billing_alert(row), "latest": latest.get(row["id"])} for row in rows]


@router.get("/customers/{customer_id}")
def customer_page_route(request: Request, customer_id: str) -> Response:
    return customer_page(request, customer_id)


def customer_page(request: Request, customer_id: str, forms: dict[str, FormResult] | None = None,
                  status: int = 200) -> Response:
    def build() -> dict[str, Any]:
        return {**customer_view(_ctx(request), customer_id), "forms": forms or {}}

    return _page(request, "customer.html", build, status)


@router.get("/customers/{customer_id}/balances")
def customer_balances(request: Request, customer_id: str) -> Response:
    return _page(request, "_balances.html", lambda: {"balances": balances_view(_ctx(request), customer_id)})


@router.post("/customers/{customer_id}/credit_grants")
def create_credit_grant(request: Request, customer_id: str) -> Response:
    result = run_form(_form(request), credit_grants.create_credit_grant, _ctx(request),
                      fixed={"customer": customer_id}, datetime_fields=("effective_at", "expires_at"))
    return _after(request, result, lambda grant: f"{PREFIX}/customers/{customer_id}#grants",
                  lambda failed: customer_page(request, customer_id, {"grant": failed}, 400))


@router.post("/customers/{customer_id}/subscriptions")
def create_subscription(request: Request, customer_id: str) -> Response:
    result = run_form(_form(request), subscriptions.create_subscription, _ctx(request), fixed={"customer": customer_id})
    return _after(request, result, lambda subscription: f"{PREFIX}/customers/{customer_id}#subscriptions",
                  lambda failed: customer_page(request, customer_id, {"subscription": failed}, 400))


@router.post("/customers/{customer_id}/alerts")
def create_alert(request: Request, customer_id: str) -> Response:
    # (nested parameters the page decides: added to the form's own, which fill the same objects)
    fixed = urlencode({"alert_type": "credit_balance_threshold",
                       "credit_balance_threshold[filters][0][type]": "customer",
                       "credit_balance_threshold[filters][0][customer]": customer_id,
                       "credit_balance_threshold[lte][balance_type]": "monetary"})
    result = run_form(f"{_form(request)}&{fixed}", alerts.create_alert, _ctx(request))
    return _after(request, result, lambda alert: f"{PREFIX}/customers/{customer_id}#alerts",
                  lambda failed: customer_page(request, customer_id, {"alert": failed}, 400))


@router.post("/alerts/{alert_id}/{action}")
def change_alert(request: Request, alert_id: str, action: str) -> Response:
    handler = {"activate": alerts.activate_alert, "deactivate": alerts.deactivate_alert,
               "archive": alerts.archive_alert}.get(action)
    ctx = _ctx(request)
    row = fetch_one(ctx.pool, "select customer_id from billing_alerts where id = %s", alert_id)
    if handler is None or row is None:
        return render(request, "not_found.html", status=404, message=f"No such alert or action: {alert_id} {action}")
    result = run_form(_form(request), handler, ctx, id=alert_id)
    return _after(request, result, lambda _: f"{PREFIX}/customers/{row['customer_id']}#alerts",
                  lambda failed: customer_page(request, row["customer_id"], {"alert": failed}, 400))


@router.post("/subscriptions/{subscription_id}/cancel")
def cancel_subscription(request: Request, subscription_id: str) -> Response:
    ctx = _ctx(request)
    result = run_form(_form(request), subscriptions.cancel_subscription, ctx, id=subscription_id)
    row = fetch_one(ctx.pool, "select customer_id from subscriptions where id = %s", subscription_id)
    if row is None:
        return render(request, "not_found.html", status=404, message=f"No such subscription: '{subscription_id}'")
    return _after(request, result, lambda _: f"{PREFIX}/customers/{row['customer_id']}#subscriptions",
                  lambda failed: customer_page(request, row["customer_id"], {"cancel": failed}, 400))


def burn_down(ctx: Any, customer_id: str) -> dict[str, Any]:
    """The current period of the customer's active subscription: credits left and usage cost, from
    the period's start to now, each point the invoice preview (api.routes.invoices.compute_preview)
    of the usage until then. Amounts in minor units."""
    subscription = invoices.active_subscription(ctx, customer_id)
    if subscription is None:
        return {"x": [], "credits_left": [], "usage": [], "currency": None}
    inputs = invoices.preview_inputs(ctx, subscription)
    currency = subscription["currency"]
    start_ms = inputs.period.start_ms
    end_ms = min(max(inputs.as_of_ms, start_ms + MILLISECONDS_PER_MINUTE), inputs.period.end_ms)
    available_minor = sum(available_balance_minor(state, inputs.as_of_ms)
                          for state in inputs.grants.values() if state.currency == currency)
    step_ms = max(MILLISECONDS_PER_MINUTE, -(-(end_ms - start_ms) // BURN_DOWN_MAX_POINTS))
    instants = list(range(start_ms, end_ms, step_ms))
    x, credits_left, usage = [], [], []
    for index, instant_ms in enumerate(instants + [end_ms]):
        last = index == len(instants)  # the last point counts every bucket of the period so far
        invoice = invoices.compute_preview(inputs, None if last else instant_ms).invoice
        x.append(instant_ms // 1000)
        credits_left.append(available_minor - invoice.total_credits_minor)
        usage.append(invoice.subtotal_minor)
    return {"x": x, "credits_left": credits_left, "usage": usage, "currency": currency,
            "exponent": minor_unit_exponent(currency), "period_start": start_ms // 1000,
            "period_end": inputs.period.end_ms // 1000}


@router.get("/customers/{customer_id}/burn_down.json")
def customer_burn_down(request: Request, customer_id: str) -> Response:
    from dashboard.formats import money

    ctx = _ctx(request)
    if fetch_one(ctx.pool, "select 1 from customers where id = %s", customer_id) is None:
        return JSONResponse({"error": f"No such customer: '{customer_id}'"}, status_code=404)
    data = burn_down(ctx, customer_id)
    if data["currency"]:
        data["summary"] = (f"Credits left {money(data['credits_left'][-1], data['currency'])}, "
                           f"usage this period {money(data['usage'][-1], data['currency'])}")
    else:
        data["summary"] = "No active subscription: nothing to burn down."
    return JSONResponse(data, headers={"cache-control": "no-store"})


# Invoices and grants -----------------------------------------------------------------------------

def invoice_view(ctx: Any, invoice_id: str) -> dict[str, Any]:
    invoice = invoices.retrieve_invoice(ctx, Params({}), id=invoice_id)
    credits = invoice["total_pretax_credit_amounts"]
    transactions = {row["id"]: row for row in fetch_all(
        ctx.pool, "select t.id, t.grant_id, g.name from credit_balance_transactions t left join credit_grants g"
                  " on g.id = t.grant_id where t.id = any(%s)", [credit["credit_balance_transaction"] for credit in credits])}
    applied: dict[str, dict[str, Any]] = {}  # one "Applied credits" line per grant, in application order
    for credit in credits:
        transaction = transactions.get(credit["credit_balance_transaction"], {})
        grant_id = transaction.get("grant_id") or "unknown grant"
        line = applied.setdefault(grant_id, {"grant_id": grant_id, "name": transaction.get("name"), "amount": 0})
        line["amount"] += credit["amount"]
    names = {row["id"]: row for row in fetch_all(
        ctx.pool, "select p.id, d.name as product_name from prices p left join products d on d.id = p.product_id"
                  " where p.id = any(%s)", [line["price"] for line in invoice["lines"]["data"]])}
    return {"invoice": invoice, "applied": list(applied.values()), "price_names": names}


@router.get("/invoices/{invoice_id}")
def invoice_page_route(request: Request, invoice_id: str) -> Response:
    return invoice_page(request, invoice_id)


def invoice_page(request: Request, invoice_id: str, form: FormResult | None = None, status: int = 200) -> Response:
    return _page(request, "invoice.html",
                 lambda: {**invoice_view(_ctx(request), invoice_id), "form": form or FormResult()}, status)


@router.post("/invoices/{invoice_id}/void")
def void_invoice(request: Request, invoice_id: str) -> Response:
    result = run_form(_form(request), invoices.void_invoice, _ctx(request), id=invoice_id)
    return _after(request, result, lambda _: f"{PREFIX}/invoices/{invoice_id}",
                  lambda failed: invoice_page(request, invoice_id, failed, 400))


def grant_view(ctx: Any, grant_id: str) -> dict[str, Any]:
    grant = credit_grants.retrieve_credit_grant(ctx, Params({}), id=grant_id)
    customer = require(ctx.pool, "customers", "customer", grant["customer"])
    now_ms = read_customer_now_ms(ctx.pool, customer)
    with ctx.pool.connection() as conn:
        state = grant_states(conn, grant["customer"], grant_id)[grant_id]
    transactions = list_transactions(ctx, _params(customer=grant["customer"], credit_grant=grant_id,
                                                  limit=LIST_LIMIT))["data"]
    return {"grant": grant, "customer": objects.customer(customer), "transactions": transactions,
            "available_minor": available_balance_minor(state, now_ms), "ledger_minor": state.ledger_balance_minor}


@router.get("/credit_grants/{grant_id}")
def grant_page_route(request: Request, grant_id: str) -> Response:
    return grant_page(request, grant_id)


def grant_page(request: Request, grant_id: str, form: FormResult | None = None, status: int = 200) -> Response:
    return _page(request, "grant.html", lambda: {**grant_view(_ctx(request), grant_id), "form": form or FormResult()},
                 status)


@router.post("/credit_grants/{grant_id}/{action}")
def change_grant(request: Request, grant_id: str, action: str) -> Response:
    handler = {"void": credit_grants.void_credit_grant, "expire": credit_grants.expire_credit_grant}.get(action)
    if handler is None:
        return render(request, "not_found.html", status=404, message=f"No such action: {action}")
    result = run_form(_form(request), handler, _ctx(request), id=grant_id)
    return _after(request, result, lambda _: f"{PREFIX}/credit_grants/{grant_id}",
                  lambda failed: grant_page(request, grant_id, failed, 400))


# Meters ------------------------------------------------------------------------------------------

@router.get("/meters")
def meter_list_route(request: Request) -> Response:
    return meter_list(request)


def meter_list(request: Request, form: FormResult | None = None, status: int = 200) -> Response:
    data = meters.list_meters(_ctx(request), _params(limit=LIST_LIMIT))["data"]
    return render(request, "meters.html", status=status, meters=data, form=form or FormResult())


@router.post("/meters")
def create_meter(request: Request) -> Response:
    result = run_form(_form(request), meters.create_meter, _ctx(request))
    return _after(request, result, lambda meter: f"{PREFIX}/meters/{meter['id']}",
                  lambda failed: meter_list(request, failed, 400))


def _usage_defaults(ctx: Any, meter_id: str) -> dict[str, str]:
    """The chart's first window: the day of the meter's latest usage, and its customer."""
    latest = fetch_one(ctx.pool, "select customer_id, bucket_start_ms from usage_buckets where meter_id = %s"
                                 " order by bucket_start_ms desc limit 1", meter_id)
    if latest is None:
        return {"customer": "", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                "grouping": "hour"}
    day = datetime.datetime.fromtimestamp(latest["bucket_start_ms"] // 1000, datetime.timezone.utc)
    return {"customer": latest["customer_id"], "date": day.strftime("%Y-%m-%d"), "grouping": "hour"}


def usage_series(ctx: Any, meter_id: str, customer: str, date: str, grouping: str) -> dict[str, Any]:
    """The meter's usage for one customer, per hour for a day or per day for a month from `date`,
    through the API's event summaries (its checks and messages)."""
    try:
        start = datetime.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ApiError(f"Invalid date: {date[:20]} (expected YYYY-MM-DD)", param="date") from None
    start_s = int(start.timestamp())
    windows = USAGE_WINDOWS.get(grouping, USAGE_WINDOWS["hour"])
    end_s = start_s + windows * (MILLISECONDS_PER_DAY // 1000 if grouping == "day" else 3600)
    answer = meters.event_summaries(ctx, _params(customer=customer or None, start_time=start_s, end_time=end_s,
                                                 value_grouping_window=grouping, limit=LIST_LIMIT), id=meter_id)
    summaries = list(reversed(answer["data"]))  # oldest first for the chart
    return {"x": [summary["start_time"] for summary in summaries],
            # A chart coordinate, not money: the exact value is in `values`.
            "y": [float(summary["aggregated_value"]) for summary in summaries],
            "values": [str(summary["aggregated_value"]) for summary in summaries],
            "total": str(sum((_decimal(summary["aggregated_value"]) for summary in summaries), _decimal(0)))}


def _decimal(value: Any) -> Any:
    from decimal import Decimal

    return Decimal(str(value))


@router.get("/meters/{meter_id}")
def meter_page_route(request: Request, meter_id: str, customer: str | None = None, date: str | None = None,
                     grouping: str | None = None) -> Response:
    return meter_page(request, meter_id, customer, date, grouping)


def meter_page(request: Request, meter_id: str, customer: str | None = None, date: str | None = None,
               grouping: str | None = None, form: FormResult | None = None, status: int = 200) -> Response:
    ctx = _ctx(request)

    def build() -> dict[str, Any]:
        meter = meters.retrieve_meter(ctx, Params({}), id=meter_id)
        defaults = _usage_defaults(ctx, meter_id)
        chosen = {"customer": customer if customer is not None else defaults["customer"],
                  "date": date or defaults["date"], "grouping": grouping if grouping in USAGE_WINDOWS else "hour"}
        usage_error: dict[str | None, str] = {}
        if chosen["customer"]:
            try:
                usage_series(ctx, meter_id, **chosen)
            except ApiError as error:
                usage_error = {error.param: error.message}
        return {"meter": meter, "chosen": chosen, "usage_error": usage_error, "form": form or FormResult()}

    return _page(request, "meter.html", build, status)


@router.get("/meters/{meter_id}/usage.json")
def meter_usage(request: Request, meter_id: str, customer: str = "", date: str = "", grouping: str = "hour") -> Response:
    try:
        data = usage_series(_ctx(request), meter_id, customer, date, grouping)
    except ApiError as error:
        return JSONResponse({"error": error.message, "param": error.param}, status_code=error.status)
    return JSONResponse(data, headers={"cache-control": "no-store"})


@router.post("/meters/{meter_id}/{action}")
def change_meter(request: Request, meter_id: str, action: str) -> Response:
    handler = {"deactivate": meters.deactivate_meter, "reactivate": meters.reactivate_meter}.get(action)
    if handler is None:
        return render(request, "not_found.html", status=404, message=f"No such action: {action}")
    result = run_form(_form(request), handler, _ctx(request), id=meter_id)
    return _after(request, result, lambda _: f"{PREFIX}/meters/{meter_id}",
                  lambda failed: meter_page(request, meter_id, form=failed, status=400))


# Products and prices -----------------------------------------------------------------------------

@router.get("/products")
def product_list_route(request: Request) -> Response:
    return product_list(request)


def product_list(request: Request, forms: dict[str, FormResult] | None = None, status: int = 200) -> Response:
    ctx = _ctx(request)
    return render(request, "products.html", status=status,
                  products=catalog.list_products(ctx, _params(limit=LIST_LIMIT))["data"],
                  prices=_prices_with_products(ctx),
                  meters=meters.list_meters(ctx, _params(status="active", limit=LIST_LIMIT))["data"],
                  forms=forms or {})


@router.post("/products")
def create_product(request: Request) -> Response:
    result = run_form(_form(request), catalog.create_product, _ctx(request))
    return _after(request, result, lambda product: f"{PREFIX}/products?product={product['id']}#prices",
                  lambda failed: product_list(request, {"product": failed}, 400))


@router.post("/prices")
def create_price(request: Request) -> Response:
    result = run_form(_form(request), catalog.create_price, _ctx(request))
    return _after(request, result, lambda price: f"{PREFIX}/products#prices",
                  lambda failed: product_list(request, {"price": failed}, 400))


# Test clocks -------------------------------------------------------------------------------------

@router.get("/test_clocks")
def clock_list_route(request: Request) -> Response:
    return clock_list(request)


def clock_list(request: Request, form: FormResult | None = None, status: int = 200) -> Response:
    return render(request, "test_clocks.html", status=status, clocks=_live_clocks(_ctx(request)),
                  form=form or FormResult())


@router.post("/test_clocks")
def create_clock(request: Request) -> Response:
    result = run_form(_form(request), clocks.create_test_clock, _ctx(request), datetime_fields=("frozen_time",))
    return _after(request, result, lambda clock: f"{PREFIX}/test_clocks/{clock['id']}",
                  lambda failed: clock_list(request, failed, 400))


@router.get("/test_clocks/{clock_id}")
def clock_page_route(request: Request, clock_id: str) -> Response:
    return clock_page(request, clock_id)


def clock_page(request: Request, clock_id: str, form: FormResult | None = None, status: int = 200) -> Response:
    ctx = _ctx(request)

    def build() -> dict[str, Any]:
        clock = clocks.retrieve_test_clock(ctx, Params({}), id=clock_id)
        on_clock = [objects.customer(row) for row in fetch_all(
            ctx.pool, "select * from customers where test_clock_id = %s order by created_ms desc limit %s",
            clock_id, LIST_LIMIT)]
        return {"clock": clock, "customers": on_clock, "form": form or FormResult()}

    return _page(request, "test_clock.html", build, status)


@router.get("/test_clocks/{clock_id}/status")
def clock_status(request: Request, clock_id: str) -> Response:
    return _page(request, "_clock_status.html",
                 lambda: {"clock": clocks.retrieve_test_clock(_ctx(request), Params({}), id=clock_id)})


@router.post("/test_clocks/{clock_id}/advance")
def advance_clock(request: Request, clock_id: str) -> Response:
    result = run_form(_form(request), clocks.advance_test_clock, _ctx(request), id=clock_id,
                      datetime_fields=("frozen_time",))
    return _after(request, result, lambda _: f"{PREFIX}/test_clocks/{clock_id}",
                  lambda failed: clock_page(request, clock_id, failed, 400))


# Dead letters ------------------------------------------------------------------------------------

@router.get("/dead_letters")
def dead_letter_list(request: Request, reason_code: str = "", customer: str = "") -> Response:
    answer = dead_letters.list_letters(_ctx(request), _params(reason_code=reason_code.strip() or None,
                                                              customer=customer.strip() or None, limit=LIST_LIMIT))
    return render(request, "dead_letters.html", letters=answer["data"], has_more=answer["has_more"],
                  reason_code=reason_code, customer=customer)


# Webhooks ----------------------------------------------------------------------------------------

@router.get("/webhooks")
def webhook_list_route(request: Request) -> Response:
    return webhook_list(request)


def webhook_list(request: Request, form: FormResult | None = None, created: dict[str, Any] | None = None,
                 status: int = 200) -> Response:
    endpoints = webhook_endpoints.list_endpoints(_ctx(request), _params(limit=LIST_LIMIT))["data"]
    return render(request, "webhooks.html", status=status, endpoints=endpoints, form=form or FormResult(),
                  created=created)


@router.post("/webhooks")
def create_webhook(request: Request) -> Response:
    result = run_form(_form(request), webhook_endpoints.create_endpoint, _ctx(request))
    if not result.ok:
        return webhook_list(request, result, status=400)
    # The secret is shown once, as the API shows it once: on this answer, not behind a redirect.
    return webhook_list(request, created=result.answer)


@router.get("/webhooks/{endpoint_id}")
def webhook_page_route(request: Request, endpoint_id: str, status: str = "") -> Response:
    return webhook_page(request, endpoint_id, status)


def webhook_page(request: Request, endpoint_id: str, delivery_status: str = "", form: FormResult | None = None,
                 status: int = 200) -> Response:
    ctx = _ctx(request)

    def build() -> dict[str, Any]:
        endpoint = webhook_endpoints.retrieve_endpoint(ctx, Params({}), id=endpoint_id)
        wanted = delivery_status if delivery_status in ("pending", "succeeded", "failed") else None
        deliveries = webhook_endpoints.list_deliveries(ctx, _params(status=wanted, limit=LIST_LIMIT), id=endpoint_id)
        return {"endpoint": endpoint, "deliveries": deliveries["data"], "has_more": deliveries["has_more"],
                "delivery_status": wanted or "", "form": form or FormResult()}

    return _page(request, "webhook.html", build, status)


@router.post("/webhooks/{endpoint_id}")
def update_webhook(request: Request, endpoint_id: str) -> Response:
    result = run_form(_form(request), webhook_endpoints.update_endpoint, _ctx(request), id=endpoint_id)
    return _after(request, result, lambda endpoint: f"{PREFIX}/webhooks/{endpoint_id}",
                  lambda failed: webhook_page(request, endpoint_id, form=failed, status=400))

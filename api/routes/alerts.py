"""/v1/billing/alerts: create (usage_threshold, credit_balance_threshold), retrieve, list, activate,
deactivate, archive. The workers judge the alerts from the live state (billing/alerts.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.routing import route
from api.store import fetch_one, now_ms, paginate, read_customer_now_ms, require
from billing.alerts import MAX_ALERTS_PER_CUSTOMER
from billing.facts import AlertStatus, AlertType, BillingAlertCreated, BillingAlertStatusChanged
from billing.money import MAX_GRANT_AMOUNT_MINOR, minor_unit_exponent

router = APIRouter(tags=["billing alerts"])
MAX_TITLE_LENGTH = 256
MAX_USAGE_THRESHOLD = 10**15  # whole units of a meter's usage (Stripe's gte is an integer)
MAX_METER_ALERTS_PER_METER = 25  # alerts without a customer filter (Stripe: 25 alerts per meter)


def _alert(ctx: ApiContext, alert_id: str) -> dict[str, Any]:
    return require(ctx.pool, "billing_alerts", "billing.alert", alert_id)


def _customer_filter(config: Params, name: str, required: bool) -> str | None:
    """The customer filter (Stripe allows up to one). A usage alert without one watches every
    customer of its meter; a credit balance alert needs one."""
    filters = config.objects("filters", max_items=1)
    if not filters:
        if not required:
            return None
        raise invalid(f"{name}[filters]", "A credit balance alert needs a customer filter:"
                                          f" give {name}[filters][0][type]=customer and {name}[filters][0][customer].")
    filters[0].str("type", required=True, choices=["customer"])
    return filters[0].str("customer", required=True, max_length=200)


def create_alert(ctx: ApiContext, params: Params) -> dict[str, Any]:
    alert_type = AlertType(params.str("alert_type", required=True, choices=[kind.value for kind in AlertType]))
    title = params.str("title", required=True, max_length=MAX_TITLE_LENGTH)
    meter_id = gte = currency = lte_minor = None
    if alert_type == AlertType.USAGE_THRESHOLD:
        config = params.object("usage_threshold", required=True)
        gte = config.int("gte", required=True, minimum=1, maximum=MAX_USAGE_THRESHOLD)
        meter_id = config.str("meter", required=True, max_length=200)
        config.str("recurrence", required=True, choices=["one_time"])
        customer_id = _customer_filter(config, "usage_threshold", required=False)
    else:
        config = params.object("credit_balance_threshold", required=True)
        customer_id = _customer_filter(config, "credit_balance_threshold", required=True)
        lte = config.object("lte", required=True)
        lte.str("balance_type", required=True, choices=["monetary"])
        monetary = lte.object("monetary", required=True)
        currency = monetary.str("currency", required=True, max_length=3).lower()
        # The live balance may be negative (usage beyond the credits): so may the threshold.
        lte_minor = monetary.int("value", required=True, minimum=-MAX_GRANT_AMOUNT_MINOR,
                                 maximum=MAX_GRANT_AMOUNT_MINOR)
    params.done()
    if alert_type == AlertType.USAGE_THRESHOLD:
        require(ctx.pool, "meters", "billing.meter", meter_id, param="usage_threshold[meter]")
    else:
        try:
            minor_unit_exponent(currency)
        except Exception as exc:
            raise invalid("credit_balance_threshold[lte][monetary][currency]", f"Invalid currency: {currency}") from exc
    if customer_id is None:
        return _create_meter_alert(ctx, title, meter_id, gte)
    param = f"{alert_type.value}[filters][0][customer]"
    customer = require(ctx.pool, "customers", "customer", customer_id, param=param)
    count = fetch_one(ctx.pool, "select count(*) as n from billing_alerts where customer_id = %s", customer_id)
    if count["n"] >= MAX_ALERTS_PER_CUSTOMER:
        raise conflict(f"A customer can have at most {MAX_ALERTS_PER_CUSTOMER} alerts.", "too_many_alerts", param)
    alert_id = new_id("alrt")
    fact = BillingAlertCreated(alert_id=alert_id, customer_id=customer_id, alert_type=alert_type, title=title,
                               meter_id=meter_id, gte=gte, currency=currency, lte_minor=lte_minor,
                               created_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", customer_id, fact)])
    return objects.billing_alert(_alert(ctx, alert_id))


def _create_meter_alert(ctx: ApiContext, title: str, meter_id: str, gte: int) -> dict[str, Any]:
    """A usage alert on every customer of the meter: its fact goes to every partition (each holds
    some of the customers), with customer_id "" (billing/alerts.py)."""
    count = fetch_one(ctx.pool, "select count(*) as n from billing_alerts where meter_id = %s and customer_id is null"
                                " and status <> 'archived'", meter_id)
    if count["n"] >= MAX_METER_ALERTS_PER_METER:
        raise conflict(f"A meter can have at most {MAX_METER_ALERTS_PER_METER} alerts without a customer filter.",
                       "too_many_alerts", "usage_threshold[meter]")
    alert_id = new_id("alrt")
    fact = BillingAlertCreated(alert_id=alert_id, customer_id="", alert_type=AlertType.USAGE_THRESHOLD, title=title,
                               meter_id=meter_id, gte=gte, created_at_ms=now_ms())
    ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", fact))
    return objects.billing_alert(_alert(ctx, alert_id))


def retrieve_alert(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.billing_alert(_alert(ctx, id))


def list_alerts(ctx: ApiContext, params: Params) -> dict[str, Any]:
    """Newest first; archived alerts are left out (Stripe: archiving removes an alert from the list)."""
    conditions, arguments = ["status <> 'archived'"], []
    alert_type = params.str("alert_type", choices=[kind.value for kind in AlertType])
    meter_id = params.str("meter", max_length=200)
    customer_id = params.str("customer", max_length=200)  # (drawdown's own filter)
    for column, value in (("alert_type", alert_type), ("meter_id", meter_id), ("customer_id", customer_id)):
        if value is not None:
            conditions.append(f"{column} = %s")
            arguments.append(value)
    return paginate(ctx.pool, params, "/v1/billing/alerts", "billing_alerts", conditions, arguments,
                    objects.billing_alert)


def _change_status(ctx: ApiContext, params: Params, alert_id: str, status: AlertStatus) -> dict[str, Any]:
    params.done()
    row = _alert(ctx, alert_id)
    if row["status"] == AlertStatus.ARCHIVED and status != AlertStatus.ARCHIVED:
        raise conflict(f"Alert '{alert_id}' is archived and cannot change.", "alert_archived")
    if row["status"] == status:
        return objects.billing_alert(row)
    if row["customer_id"] is None:  # an alert on every customer: on every partition
        ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", BillingAlertStatusChanged(
            alert_id=alert_id, customer_id="", status=status, changed_at_ms=now_ms())))
        return objects.billing_alert(_alert(ctx, alert_id))
    customer = require(ctx.pool, "customers", "customer", row["customer_id"])
    fact = BillingAlertStatusChanged(alert_id=alert_id, customer_id=row["customer_id"], status=status,
                                     changed_at_ms=read_customer_now_ms(ctx.pool, customer))
    ctx.wait([ctx.publisher.publish("customer-facts", row["customer_id"], fact)])
    return objects.billing_alert(_alert(ctx, alert_id))


def activate_alert(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    return _change_status(ctx, params, id, AlertStatus.ACTIVE)


def deactivate_alert(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    return _change_status(ctx, params, id, AlertStatus.INACTIVE)


def archive_alert(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    return _change_status(ctx, params, id, AlertStatus.ARCHIVED)


route(router, "POST", "/v1/billing/alerts", create_alert, answers_with=retrieve_alert, creates="alrt",
      summary="Create a billing alert (usage_threshold or credit_balance_threshold, on one customer)",
      form={"alert_type": "string", "title": "string", "usage_threshold[gte]": "integer",
            "usage_threshold[meter]": "string", "usage_threshold[recurrence]": "string",
            "usage_threshold[filters][0][type]": "string", "usage_threshold[filters][0][customer]": "string",
            "credit_balance_threshold[lte][balance_type]": "string",
            "credit_balance_threshold[lte][monetary][currency]": "string",
            "credit_balance_threshold[lte][monetary][value]": "integer",
            "credit_balance_threshold[filters][0][type]": "string",
            "credit_balance_threshold[filters][0][customer]": "string"})
route(router, "GET", "/v1/billing/alerts", list_alerts, summary="List billing alerts",
      query={"alert_type": "string", "meter": "string", "customer": "string", "limit": "integer",
             "starting_after": "string", "ending_before": "string"})
route(router, "GET", "/v1/billing/alerts/{id}", retrieve_alert, summary="Retrieve a billing alert")
route(router, "POST", "/v1/billing/alerts/{id}/activate", activate_alert, answers_with=retrieve_alert,
      summary="Activate a billing alert")
route(router, "POST", "/v1/billing/alerts/{id}/deactivate", deactivate_alert, answers_with=retrieve_alert,
      summary="Deactivate a billing alert")
route(router, "POST", "/v1/billing/alerts/{id}/archive", archive_alert, answers_with=retrieve_alert,
      summary="Archive a billing alert (final)")

"""/v1/billing/meters and their event summaries (from the projected usage buckets)."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import conflict, invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_one, now_ms, page_of, paginate, projected_usage, require
from billing.facts import EventTimeWindow, MeterAggregation, MeterDeactivated, MeterDefined, MeterDisplayNameChanged, \
    MeterReactivated
from billing.meters import MeterAggregator
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_HOUR, MILLISECONDS_PER_MINUTE
from billing.usage_windows import usage_by_window
from projections.retention import kept_usage_since_ms

router = APIRouter(tags=["meters"])
MAX_SUMMARY_WINDOWS = 1000


def create_meter(ctx: ApiContext, params: Params) -> dict[str, Any]:
    display_name = params.str("display_name", required=True, max_length=250)
    event_name = params.str("event_name", required=True, max_length=100)
    aggregation = params.object("default_aggregation", required=True)
    formula = aggregation.str("formula", required=True, choices=[m.value for m in MeterAggregation])
    mapping = params.object("customer_mapping")
    customer_key = "stripe_customer_id"
    if mapping is not None:
        customer_key = mapping.str("event_payload_key", required=True, max_length=100)
        mapping.str("type", required=True, choices=["by_id"])
    value_settings = params.object("value_settings")
    value_key = value_settings.str("event_payload_key", required=True, max_length=100) if value_settings else "value"
    window = params.str("event_time_window", choices=[w.value for w in EventTimeWindow])
    params.done()
    meter_id = new_id("mtr")
    if fetch_one(ctx.pool, "select id from meters where event_name = %s and id <> %s", event_name, meter_id):
        raise _event_name_taken(event_name)
    fact = MeterDefined(meter_id=meter_id, display_name=display_name, event_name=event_name,
                        aggregation=MeterAggregation(formula), customer_payload_key=customer_key,
                        value_payload_key=value_key, event_time_window=EventTimeWindow(window) if window else None,
                        created_at_ms=now_ms())
    ctx.wait([ctx.publisher.publish("catalog", meter_id, fact)])
    created = fetch_one(ctx.pool, "select * from meters where id = %s", meter_id)
    if created is None:  # a concurrent create of the same event_name came first in the log (billing.catalog)
        raise _event_name_taken(event_name)
    return objects.meter(created)


def _event_name_taken(event_name: str) -> Exception:
    return conflict(f"A meter with event_name '{event_name}' already exists.", "resource_already_exists", "event_name")


def retrieve_meter(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return objects.meter(require(ctx.pool, "meters", "billing.meter", id))


def list_meters(ctx: ApiContext, params: Params) -> dict[str, Any]:
    status = params.str("status", choices=["active", "inactive"])
    conditions, arguments = ([], []) if status is None else (["status = %s"], [status])
    return paginate(ctx.pool, params, "/v1/billing/meters", "meters", conditions, arguments, objects.meter)


def update_meter(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    display_name = params.str("display_name", max_length=250)
    params.done()
    require(ctx.pool, "meters", "billing.meter", id)
    if display_name is not None:
        fact = MeterDisplayNameChanged(meter_id=id, display_name=display_name, changed_at_ms=now_ms())
        ctx.wait([ctx.publisher.publish("catalog", id, fact)])
    return objects.meter(require(ctx.pool, "meters", "billing.meter", id))


def deactivate_meter(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    meter = require(ctx.pool, "meters", "billing.meter", id)
    if meter["status"] == "inactive":
        raise conflict(f"Meter '{id}' is already inactive.", "meter_already_inactive")
    ctx.wait([ctx.publisher.publish("catalog", id, MeterDeactivated(meter_id=id, deactivated_at_ms=now_ms()))])
    return objects.meter(require(ctx.pool, "meters", "billing.meter", id))


def reactivate_meter(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    meter = require(ctx.pool, "meters", "billing.meter", id)
    if meter["status"] == "active":
        raise conflict(f"Meter '{id}' is already active.", "meter_already_active")
    ctx.wait([ctx.publisher.publish("catalog", id, MeterReactivated(meter_id=id, reactivated_at_ms=now_ms()))])
    return objects.meter(require(ctx.pool, "meters", "billing.meter", id))


def event_summaries(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """Aggregated usage of one customer in [start_time, end_time), whole or per hour/day window."""
    customer_id = params.str("customer", required=True, max_length=200)
    start_s = params.int("start_time", required=True, minimum=0, maximum=10**11)
    end_s = params.int("end_time", required=True, minimum=0, maximum=10**11)
    grouping = params.str("value_grouping_window", choices=["hour", "day"])
    meter = require(ctx.pool, "meters", "billing.meter", id)
    alignment_ms = {None: MILLISECONDS_PER_MINUTE, "hour": MILLISECONDS_PER_HOUR, "day": MILLISECONDS_PER_DAY}[grouping]
    start_ms, end_ms = start_s * 1000, end_s * 1000
    for name, value_ms in (("start_time", start_ms), ("end_time", end_ms)):
        if value_ms % alignment_ms:
            unit = {None: "minute", "hour": "hour", "day": "day (UTC midnight)"}[grouping]
            raise invalid(name, f"{name} must be aligned to a {unit} boundary.")
    if end_ms <= start_ms:
        raise invalid("end_time", "end_time must be after start_time.")
    kept_since_ms = kept_usage_since_ms(now_ms(), ctx.settings.usage_bucket_retention_days)
    if kept_since_ms is not None and start_ms < kept_since_ms:
        raise invalid("start_time", f"Usage before {kept_since_ms // 1000} is no longer kept "
                                    f"(DRAWDOWN_USAGE_BUCKET_RETENTION_DAYS={ctx.settings.usage_bucket_retention_days}):"
                                    " the invoices keep each period's usage, and the replay reads the raw events.")
    step_ms = end_ms - start_ms if grouping is None else alignment_ms
    if (end_ms - start_ms) // step_ms > MAX_SUMMARY_WINDOWS:
        raise invalid("end_time", f"The range holds more than {MAX_SUMMARY_WINDOWS} grouping windows.")
    aggregator, buckets = projected_usage(ctx.pool, customer_id, start_ms, end_ms, meter_id=id).get(
        id, (MeterAggregator(MeterAggregation(meter["aggregation"])), []))
    summaries = []
    for window_start_ms, total in usage_by_window(aggregator, buckets, start_ms, end_ms, step_ms):
        summary_id = "mtrusg_" + hashlib.sha256(f"{id}|{customer_id}|{window_start_ms}|{step_ms}".encode()).hexdigest()[:24]
        summaries.append({"id": summary_id, "object": "billing.meter_event_summary",
                          "aggregated_value": objects.number(total), "end_time": (window_start_ms + step_ms) // 1000,
                          "livemode": False, "meter": id, "start_time": window_start_ms // 1000})
    summaries.reverse()  # newest first, like every Stripe list
    return page_of(params, summaries, f"/v1/billing/meters/{id}/event_summaries")


STRING = "string"
route(router, "POST", "/v1/billing/meters", create_meter, answers_with=retrieve_meter, creates="mtr", summary="Create a billing meter",
      form={"display_name": STRING, "event_name": STRING, "default_aggregation[formula]": STRING,
            "customer_mapping[event_payload_key]": STRING, "customer_mapping[type]": STRING,
            "value_settings[event_payload_key]": STRING, "event_time_window": STRING})
route(router, "GET", "/v1/billing/meters", list_meters, summary="List billing meters",
      query={"status": STRING, "limit": "integer", "starting_after": STRING, "ending_before": STRING})
route(router, "GET", "/v1/billing/meters/{id}", retrieve_meter, summary="Retrieve a billing meter")
route(router, "POST", "/v1/billing/meters/{id}", update_meter, answers_with=retrieve_meter, summary="Update a meter's display name",
      form={"display_name": STRING})
route(router, "POST", "/v1/billing/meters/{id}/deactivate", deactivate_meter, answers_with=retrieve_meter, summary="Deactivate a meter")
route(router, "POST", "/v1/billing/meters/{id}/reactivate", reactivate_meter, answers_with=retrieve_meter, summary="Reactivate a meter")
route(router, "GET", "/v1/billing/meters/{id}/event_summaries", event_summaries,
      summary="Usage summaries of a customer for a meter",
      query={"customer": STRING, "start_time": "integer", "end_time": "integer", "value_grouping_window": STRING,
             "limit": "integer", "starting_after": STRING, "ending_before": STRING})

"""/v1/events: the Stripe events the projector derives from the facts (projections/events.py),
newest first. Filters: type (a trailing `*` matches a prefix, as Stripe's does), types[],
created (a unix time, or created[gt|gte|lt|lte])."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.params import Params
from api.store import paginate, require
from billing.money import MAX_TIMESTAMP_S

router = APIRouter(tags=["events"])
MAX_TYPES = 20
# created[op] in unix seconds -> a condition on created_ms
CREATED_BOUNDS = {"gt": (">=", 1), "gte": (">=", 0), "lt": ("<", 0), "lte": ("<", 1)}


def event(row: dict[str, Any]) -> dict[str, Any]:
    return row["body"]


def created_conditions(params: Params) -> tuple[list[str], list[Any]]:
    """created=<s> or created[gt|gte|lt|lte]=<s> as conditions on created_ms (whole seconds)."""
    conditions, arguments = [], []
    raw = params.raw("created")
    if raw is None:
        return conditions, arguments
    if not isinstance(raw, dict):
        at_s = params.int("created", minimum=0, maximum=MAX_TIMESTAMP_S)
        return ["created_ms >= %s", "created_ms < %s"], [at_s * 1000, (at_s + 1) * 1000]
    bounds = params.object("created")
    for name, (operator, add_s) in CREATED_BOUNDS.items():
        value_s = bounds.int(name, minimum=0, maximum=MAX_TIMESTAMP_S)
        if value_s is not None:
            conditions.append(f"created_ms {operator} %s")
            arguments.append((value_s + add_s) * 1000)
    return conditions, arguments


def list_events(ctx: ApiContext, params: Params) -> dict[str, Any]:
    event_type = params.str("type", max_length=200)
    types = [str(item) for item in params.list("types", max_items=MAX_TYPES)]
    if event_type is not None and types:
        raise invalid("types", "You may only specify one of type and types.")
    conditions, arguments = created_conditions(params)
    if event_type is not None and event_type.endswith("*"):
        conditions.append("type like %s")
        arguments.append(event_type[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    elif event_type is not None:
        conditions.append("type = %s")
        arguments.append(event_type)
    if types:
        conditions.append("type = any(%s)")
        arguments.append(types)
    # seq: the order the projector wrote them, which is the facts' order within a partition
    return paginate(ctx.pool, params, "/v1/events", "events", conditions, arguments, event, order_column="seq")


def retrieve_event(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return event(require(ctx.pool, "events", "event", id))


route(router, "GET", "/v1/events", list_events, summary="List events (newest first)",
      query={"type": "string", "types": {"type": "array", "items": {"type": "string"}},
             "created": {"type": "object"}, "limit": "integer", "starting_after": "string",
             "ending_before": "string"})
route(router, "GET", "/v1/events/{id}", retrieve_event, summary="Retrieve an event")

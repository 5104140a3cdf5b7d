"""/v1/webhook_endpoints: where the dispatcher (projections/webhooks.py) POSTs events, signed with
the endpoint's whsec_ secret (shown once, on create, as Stripe does). Beyond Stripe, drawdown's own:
GET /v1/webhook_endpoints/{id}/deliveries lists each event's delivery with every attempt (time,
duration, HTTP status), newest first."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from psycopg.types.json import Jsonb

from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.store import fetch_all, now_ms, paginate, require
from projections.webhooks import CURSOR_AT_HEAD, endpoint_object

router = APIRouter(tags=["webhook endpoints"])
URL = "/v1/webhook_endpoints"
MAX_ENABLED_EVENTS = 100
STRING = "string"
STRINGS = {"type": "array", "items": {"type": "string"}}


def _url(params: Params, required: bool) -> str | None:
    url = params.str("url", required=required, max_length=2048)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid("url", "Invalid URL: must be an http or https URL with a host.", code="url_invalid")
    return url


def _enabled_events(params: Params, required: bool) -> list[str] | None:
    if not params.has("enabled_events") and not required:
        return None
    events = [str(item) for item in params.list("enabled_events", required=True, max_items=MAX_ENABLED_EVENTS)]
    for index, event_type in enumerate(events):
        if event_type != "*" and not (0 < len(event_type) <= 100 and all(
                character.isalnum() or character in "._" for character in event_type)):
            raise invalid(f"enabled_events[{index}]", f"Invalid event type: {event_type[:100]!r}")
    return events


def create_endpoint(ctx: ApiContext, params: Params) -> dict[str, Any]:
    url = _url(params, required=True)
    enabled_events = _enabled_events(params, required=True)
    description = params.str("description", max_length=5000)
    metadata = params.metadata() or {}
    api_version = params.str("api_version", max_length=100)
    params.raw("connect")  # (no Connect in drawdown: accepted, ignored)
    params.done()
    endpoint_id = new_id("we")
    secret = "whsec_" + secrets.token_hex(32)
    with ctx.pool.connection() as conn:
        conn.execute("insert into webhook_endpoints (id, url, enabled_events, description, metadata, status, secret,"
                     f" api_version, created_ms, cursor_seq) values (%s, %s, %s, %s, %s, 'enabled', %s,"
                     f" %s, %s, {CURSOR_AT_HEAD}) on conflict (id) do nothing",
                     (endpoint_id, url, enabled_events, description, Jsonb(metadata), secret, api_version, now_ms()))
    return endpoint_object(require(ctx.pool, "webhook_endpoints", "webhook endpoint", endpoint_id), with_secret=True)


def retrieve_endpoint(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return endpoint_object(require(ctx.pool, "webhook_endpoints", "webhook endpoint", id))


def list_endpoints(ctx: ApiContext, params: Params) -> dict[str, Any]:
    return paginate(ctx.pool, params, URL, "webhook_endpoints", [], [], endpoint_object)


def update_endpoint(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    url = _url(params, required=False)
    enabled_events = _enabled_events(params, required=False)
    description = params.str("description", max_length=5000)
    metadata = params.metadata()
    disabled = params.bool("disabled")
    params.done()
    endpoint = require(ctx.pool, "webhook_endpoints", "webhook endpoint", id)
    changes: dict[str, Any] = {"url": url, "enabled_events": enabled_events, "description": description,
                               "metadata": None if metadata is None else Jsonb({**endpoint["metadata"], **metadata})}
    assignments = [f"{column} = %s" for column, value in changes.items() if value is not None]
    arguments = [value for value in changes.values() if value is not None]
    if disabled is True:
        assignments.append("status = 'disabled'")
    elif disabled is False and endpoint["status"] == "disabled":
        # Enabled again: from now on (events of while it was disabled are not sent), not failing.
        assignments += ["status = 'enabled'", "failing_since_ms = null", f"cursor_seq = {CURSOR_AT_HEAD}"]
    if assignments:
        with ctx.pool.connection() as conn:
            conn.execute(f"update webhook_endpoints set {', '.join(assignments)} where id = %s", (*arguments, id))
    return retrieve_endpoint(ctx, Params({}), id)


def delete_endpoint(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    require(ctx.pool, "webhook_endpoints", "webhook endpoint", id)
    with ctx.pool.connection() as conn, conn.transaction():
        for table in ("webhook_attempts", "webhook_deliveries"):
            conn.execute(f"delete from {table} where endpoint_id = %s", (id,))
        conn.execute("delete from webhook_endpoints where id = %s", (id,))
    return deleted_endpoint(ctx, Params({}), id)


def deleted_endpoint(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    return {"id": id, "object": "webhook_endpoint", "deleted": True}


def delivery_object(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    attempts = fetch_all(ctx.pool, "select * from webhook_attempts where delivery_id = %s order by id",
                         row["id"])
    return {"id": row["id"], "object": "webhook_delivery", "created": row["created_ms"] // 1000,
            "webhook_endpoint": row["endpoint_id"], "event": row["event_id"], "status": row["status"],
            "attempt_count": row["attempts"],
            "next_attempt_at": None if row["status"] != "pending" or row["next_attempt_ms"] is None
            else row["next_attempt_ms"] // 1000,
            "attempts": [{"attempted_at": attempt["attempted_ms"] // 1000, "duration_ms": attempt["duration_ms"],
                          "response_status_code": attempt["status_code"], "outcome": attempt["outcome"],
                          "error": attempt["error"]} for attempt in attempts]}


def list_deliveries(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    require(ctx.pool, "webhook_endpoints", "webhook endpoint", id)
    conditions, arguments = ["endpoint_id = %s"], [id]
    event_id = params.str("event", max_length=200)
    status = params.str("status", choices=["pending", "succeeded", "failed"])
    if event_id is not None:
        conditions.append("event_id = %s")
        arguments.append(event_id)
    if status is not None:
        conditions.append("status = %s")
        arguments.append(status)
    return paginate(ctx.pool, params, f"{URL}/{id}/deliveries", "webhook_deliveries", conditions, arguments,
                    lambda row: delivery_object(ctx, row))


route(router, "POST", URL, create_endpoint, answers_with=retrieve_endpoint, creates="we",
      summary="Create a webhook endpoint (its secret is shown only here)",
      form={"url": STRING, "enabled_events": STRINGS, "description": STRING, "api_version": STRING})
route(router, "GET", URL, list_endpoints, summary="List webhook endpoints",
      query={"limit": "integer", "starting_after": STRING, "ending_before": STRING})
route(router, "GET", URL + "/{id}", retrieve_endpoint, summary="Retrieve a webhook endpoint")
route(router, "POST", URL + "/{id}", update_endpoint, answers_with=retrieve_endpoint,
      summary="Update a webhook endpoint (url, enabled_events, description, metadata, disabled)",
      form={"url": STRING, "enabled_events": STRINGS, "description": STRING, "disabled": "boolean"})
route(router, "DELETE", URL + "/{id}", delete_endpoint, answers_with=deleted_endpoint,
      summary="Delete a webhook endpoint")
route(router, "GET", URL + "/{id}/deliveries", list_deliveries,
      summary="List an endpoint's deliveries with their attempts (drawdown's own, beyond Stripe)",
      query={"event": STRING, "status": STRING, "limit": "integer", "starting_after": STRING,
             "ending_before": STRING})

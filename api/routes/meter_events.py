"""Meter events: one at a time (/v1/billing/meter_events, /v2/billing/meter_events), in batches of
up to 100 (/v2/billing/meter_event_stream, Stripe's v2 stream, authenticated with a secret key or a
/v2/billing/meter_event_session token), and cancellations (/v1 and /v2 meter_event_adjustments).
Every path validates with `_validated` and publishes MeterEventRecorded / MeterEventCanceled the
same way; v2 takes JSON and RFC 3339 times.

Events are validated synchronously with billing.meter_events (meter exists and is active, the
customer key and value are present and valid, the customer exists, the timestamp is within 35 days
before and 5 minutes after the customer's now) and acknowledged once Kafka has them durably. They
do not wait for the projection. Duplicate identifiers (OURS): the API cannot know whether the
workers have already seen an identifier, so it accepts the duplicate with 200; the workers count
each identifier once within the dedupe window.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.routing import json_response, route
from api.auth import create_meter_event_session
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params, parse_json
from api.store import now_ms
from billing.facts import EventTimeWindow, MeterAggregation, MeterDefined, MeterEventCanceled, MeterEventRecorded
from billing.meter_events import MeterEventRejected, validate_meter_event
from billing.money import MAX_TIMESTAMP_S

router = APIRouter(tags=["meter events"])
MAX_BATCH_EVENTS = 100
MAX_PAYLOAD_ENTRIES = 50


class _Meters:
    """The catalog view validate_meter_event needs, from the API's one-second meter cache."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.by_event_name = {name: MeterDefined(
            meter_id=row["id"], display_name=row["display_name"], event_name=name,
            aggregation=MeterAggregation(row["aggregation"]), customer_payload_key=row["customer_payload_key"],
            value_payload_key=row["value_payload_key"],
            event_time_window=EventTimeWindow(row["event_time_window"]) if row["event_time_window"] else None,
            created_at_ms=row["created_ms"]) for name, row in rows.items()}
        self.inactive_ids = {row["id"] for row in rows.values() if row["status"] != "active"}

    def inactive_now(self, meter_id: str, received_at_ms: int) -> bool:
        """The API receives the event now: the meter's status now (as the cache has it) is its status then."""
        return meter_id in self.inactive_ids


_WALL_CLOCK_CUSTOMERS: dict[str, float] = {}  # customer id -> until when (monotonic) it is known to exist
_WALL_CLOCK_CUSTOMERS_SECONDS = 60.0


def forget_customer(customer_id: str) -> None:
    """A deleted customer: no longer taken as known by this process's cache."""
    _WALL_CLOCK_CUSTOMERS.pop(customer_id, None)


_MeterCache = tuple[dict[str, dict[str, Any]], _Meters]
_meters_cache: list[_MeterCache] = []


def _meters_view(rows: dict[str, dict[str, Any]]) -> _Meters:
    """The validation view of the API's meter cache, built once per cache refresh."""
    if _meters_cache and _meters_cache[0][0] is rows:
        return _meters_cache[0][1]
    view = _Meters(rows)
    _meters_cache[:] = [(rows, view)]
    return view


def _customers_now(ctx: ApiContext, customer_ids: set[str]) -> dict[str, int]:
    """Known customer id -> its now (test clock frozen time, else the wall clock).

    Customers never disappear, so one without a test clock is remembered for a minute (its now is
    the wall clock); a customer on a test clock is read every time, as its clock moves."""
    wall_ms = now_ms()
    moment = time.monotonic()
    known = {customer_id: wall_ms for customer_id in customer_ids if _WALL_CLOCK_CUSTOMERS.get(customer_id, 0) > moment}
    unknown = customer_ids - known.keys()
    if not unknown:
        return known
    with ctx.pool.connection() as conn:
        rows = conn.execute("select c.id, t.frozen_time_ms from customers c left join test_clocks t"
                            " on t.id = c.test_clock_id where c.id = any(%s) and c.deleted_ms is null",
                            (list(unknown),)).fetchall()
    if len(_WALL_CLOCK_CUSTOMERS) > 100_000:
        _WALL_CLOCK_CUSTOMERS.clear()
    for row in rows:
        if row["frozen_time_ms"] is None:
            known[row["id"]] = wall_ms
            _WALL_CLOCK_CUSTOMERS[row["id"]] = moment + _WALL_CLOCK_CUSTOMERS_SECONDS
        else:
            known[row["id"]] = row["frozen_time_ms"]
    return known


def _validated(ctx: ApiContext, raw_events: list[dict[str, Any]], param: Any) -> list[MeterEventRecorded]:
    """Facts for `raw_events` ({event_name, payload, identifier?, timestamp_ms?}) or the first error."""
    cached = ctx.meters_by_event_name()
    if any(raw["event_name"] not in cached for raw in raw_events):  # a meter created a moment ago
        cached = ctx.meters_by_event_name(max_age_s=0.05)
    meters = _meters_view(cached)
    wanted = set()
    for raw in raw_events:
        meter = meters.by_event_name.get(raw["event_name"])
        if meter is not None:
            wanted.add(raw["payload"].get(meter.customer_payload_key, ""))
    customers = _customers_now(ctx, wanted - {""})
    received_at_ms = now_ms()
    facts = []
    for index, raw in enumerate(raw_events):
        meter = meters.by_event_name.get(raw["event_name"])
        customer_id = raw["payload"].get(meter.customer_payload_key, "") if meter else ""
        customer_now = customers.get(customer_id, received_at_ms)
        timestamp_ms = raw["timestamp_ms"] if raw["timestamp_ms"] is not None else customer_now
        fact = MeterEventRecorded(customer_id=customer_id, event_name=raw["event_name"],
                                  identifier=raw["identifier"] or new_id("mev"), payload=raw["payload"],
                                  event_time_ms=timestamp_ms, received_at_ms=received_at_ms)
        verdict = validate_meter_event(fact, meters.by_event_name, meters.inactive_now, customers, customer_now)
        if isinstance(verdict, MeterEventRejected):
            field: tuple[str, ...] = {
                "timestamp_too_far_in_past": ("timestamp",), "timestamp_in_future": ("timestamp",),
                "event_name_too_long": ("event_name",), "identifier_too_long": ("identifier",),
                "no_meter": ("event_name",), "archived_meter": ("event_name",),
                "meter_event_invalid_value": ("payload", meter.value_payload_key) if meter else ("payload",),
                "meter_event_value_not_found": ("payload", meter.value_payload_key) if meter else ("payload",),
            }.get(verdict.code, ("payload",))
            raise invalid(param(index, field), verdict.message, code=str(verdict.code))
        facts.append(fact)
    return facts


def _payload(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value or len(value) > MAX_PAYLOAD_ENTRIES:
        raise invalid(name, f"{name} must be an object of 1..{MAX_PAYLOAD_ENTRIES} string values.")
    payload = {}
    for key, item in value.items():
        if not isinstance(item, (str, int)) or isinstance(item, bool) or len(str(key)) > 100 or len(str(item)) > 100:
            raise invalid(f"{name}[{key}]", f"Invalid payload value for {key!r}: a string of at most 100 characters.")
        payload[str(key)] = str(item)
    return payload


def create_meter_event(ctx: ApiContext, params: Params) -> dict[str, Any]:
    event_name = params.str("event_name", required=True, max_length=100)
    payload = _payload(params.raw("payload"), "payload")
    identifier = params.str("identifier", max_length=100)
    timestamp_s = params.int("timestamp", minimum=0, maximum=MAX_TIMESTAMP_S)
    params.done()
    raw = {"event_name": event_name, "payload": payload, "identifier": identifier,
           "timestamp_ms": None if timestamp_s is None else timestamp_s * 1000}
    (fact,) = _validated(ctx, [raw], lambda index, field: field[0] + "".join(f"[{name}]" for name in field[1:]))
    ctx.publisher.publish("customer-facts", fact.customer_id, fact)  # acked, not waited for
    return {"object": "billing.meter_event", "created": fact.received_at_ms // 1000, "event_name": fact.event_name,
            "identifier": fact.identifier, "livemode": False, "payload": dict(fact.payload),
            "timestamp": fact.event_time_ms // 1000}


def _timestamp_ms(value: Any, name: str) -> int | None:
    """v2 timestamps are ISO 8601 strings; unix seconds are accepted too."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP_S:
        return value * 1000
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return int(moment.timestamp() * 1000) if moment.microsecond == 0 else \
                int(moment.replace(microsecond=0).timestamp()) * 1000 + moment.microsecond // 1000
    raise invalid(name, f"Invalid timestamp: {str(value)[:50]} (an ISO 8601 time with a zone, or unix seconds)")


def _raw_event(event: Any, prefix: str) -> dict[str, Any]:
    """One v2 meter event (a JSON object) checked for shape; params are named `prefix` + field."""
    if not isinstance(event, dict):
        raise invalid(prefix.rstrip(".") or "body", "Each event must be an object.")
    unknown = set(event) - {"event_name", "payload", "identifier", "timestamp"}
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(f"{prefix}{name}", f"Received unknown parameter: {name}", code="parameter_unknown")
    event_name, identifier = event.get("event_name"), event.get("identifier")
    if not isinstance(event_name, str) or not event_name:
        raise invalid(f"{prefix}event_name", "event_name is required (a string).", code="parameter_missing")
    if identifier is not None and (not isinstance(identifier, str) or len(identifier) > 100):
        raise invalid(f"{prefix}identifier", "identifier must be a string of at most 100 characters.")
    return {"event_name": event_name, "identifier": identifier,
            "payload": _payload(event.get("payload"), f"{prefix}payload"),
            "timestamp_ms": _timestamp_ms(event.get("timestamp"), f"{prefix}timestamp")}


def _json_document(body: bytes, param: str = "body") -> dict[str, Any]:
    if b"\\u0000" in body:  # JSON can only carry NUL escaped; PostgreSQL text cannot hold it
        raise invalid(param, "Invalid value: NUL characters are not allowed")
    return parse_json(body) if body.strip() else {}  # an object, within the API's depth and size limits


def _batch(ctx: ApiContext, body: bytes) -> dict[str, Any]:
    document = _json_document(body, "events")
    if set(document) - {"events"}:
        extra = sorted(set(document) - {"events"})
        raise invalid(extra[0], f"Received unknown parameter: {extra[0]}", code="parameter_unknown")
    events = document.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise invalid("events", f"events must be an array of 1..{MAX_BATCH_EVENTS} meter events.")
    raw_events = [_raw_event(event, f"events[{index}].") for index, event in enumerate(events)]
    facts = _validated(ctx, raw_events, lambda index, field: f"events[{index}]." + ".".join(field))
    ctx.publisher.publish_many("customer-facts", [(fact.customer_id, fact, None) for fact in facts])
    return {"object": "billing.meter_event_stream_result", "accepted": len(facts)}


async def meter_event_stream(request: Request) -> Response:
    """Up to 100 meter events per request, all or none: every event is validated before any is
    published, and the answer comes once Kafka has acknowledged all of them."""
    body = await request.body()
    return json_response(await run_in_threadpool(_batch, request.app.state.ctx, body))


def _cancel(ctx: ApiContext, event_name: str, identifier: str) -> MeterEventCanceled:
    if event_name not in ctx.meters_by_event_name(max_age_s=0.0):
        raise invalid("event_name", f"No meter has event_name '{event_name}'.", code="no_meter")
    # The customer is not known from an identifier alone: the cancellation goes to every partition.
    fact = MeterEventCanceled(event_name=event_name, identifier=identifier, customer_id=None, received_at_ms=now_ms())
    ctx.publisher.publish_to_every_partition("customer-facts", fact)
    return fact


def create_adjustment(ctx: ApiContext, params: Params) -> dict[str, Any]:
    event_name = params.str("event_name", required=True, max_length=100)
    kind = params.str("type", choices=["cancel"]) or "cancel"
    cancel = params.object("cancel", required=True)
    identifier = cancel.str("identifier", required=True, max_length=100)
    params.done()
    _cancel(ctx, event_name, identifier)
    return {"object": "billing.meter_event_adjustment", "cancel": {"identifier": identifier},
            "event_name": event_name, "livemode": False, "status": "pending", "type": kind}


# --- v2 (JSON, RFC 3339 times) ----------------------------------------------------------------


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _create_session(ctx: ApiContext, caller: Any, body: bytes) -> dict[str, Any]:
    document = _json_document(body)
    if document:
        name = sorted(document)[0]
        raise invalid(name, f"Received unknown parameter: {name}", code="parameter_unknown")
    session = create_meter_event_session(ctx.pool, caller, now_ms())
    return {"id": session["id"], "object": "v2.billing.meter_event_session",
            "authentication_token": session["authentication_token"], "created": _rfc3339(session["created_ms"]),
            "expires_at": _rfc3339(session["expires_ms"]), "livemode": False}


async def meter_event_session(request: Request) -> Response:
    """A token that authenticates /v2/billing/meter_event_stream for 15 minutes, in any API process."""
    body = await request.body()
    caller = request.scope["drawdown.caller"]
    return json_response(await run_in_threadpool(_create_session, request.app.state.ctx, caller, body))


def _v2_meter_event(ctx: ApiContext, body: bytes) -> dict[str, Any]:
    raw = _raw_event(_json_document(body), "")
    (fact,) = _validated(ctx, [raw], lambda index, field: ".".join(field))
    ctx.publisher.publish("customer-facts", fact.customer_id, fact)  # acked, not waited for (as v1)
    return {"object": "v2.billing.meter_event", "created": _rfc3339(fact.received_at_ms),
            "event_name": fact.event_name, "identifier": fact.identifier, "livemode": False,
            "payload": dict(fact.payload), "timestamp": _rfc3339(fact.event_time_ms)}


async def v2_meter_event(request: Request) -> Response:
    body = await request.body()
    return json_response(await run_in_threadpool(_v2_meter_event, request.app.state.ctx, body))


def _v2_adjustment(ctx: ApiContext, body: bytes) -> dict[str, Any]:
    document = _json_document(body)
    unknown = set(document) - {"event_name", "type", "cancel"}
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(name, f"Received unknown parameter: {name}", code="parameter_unknown")
    event_name, kind, cancel = document.get("event_name"), document.get("type", "cancel"), document.get("cancel")
    if not isinstance(event_name, str) or not event_name or len(event_name) > 100:
        raise invalid("event_name", "event_name is required (a string of at most 100 characters).",
                      code="parameter_missing")
    if kind != "cancel":
        raise invalid("type", "type must be cancel.")
    identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
    if not isinstance(cancel, dict) or set(cancel) - {"identifier"} or not isinstance(identifier, str) \
            or not identifier or len(identifier) > 100:
        raise invalid("cancel.identifier", "cancel.identifier is required (a string of at most 100 characters).",
                      code="parameter_missing")
    fact = _cancel(ctx, event_name, identifier)
    return {"id": new_id("mea"), "object": "v2.billing.meter_event_adjustment", "cancel": {"identifier": identifier},
            "created": _rfc3339(fact.received_at_ms), "event_name": event_name, "livemode": False,
            "status": "pending", "type": "cancel"}


async def v2_adjustment(request: Request) -> Response:
    body = await request.body()
    return json_response(await run_in_threadpool(_v2_adjustment, request.app.state.ctx, body))


_V2_EVENT_SCHEMA = {"type": "object", "properties": {
    "event_name": {"type": "string"}, "identifier": {"type": "string"}, "timestamp": {"type": "string"},
    "payload": {"type": "object", "additionalProperties": {"type": "string"}}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}


router.add_api_route("/v2/billing/meter_event_session", meter_event_session, methods=["POST"],
                     summary="Create a meter event session (a 15-minute token for the v2 stream)",
                     openapi_extra=_json_body({"type": "object"}))
router.add_api_route("/v2/billing/meter_events", v2_meter_event, methods=["POST"],
                     summary="Record a meter event (v2)", openapi_extra=_json_body(_V2_EVENT_SCHEMA))
router.add_api_route("/v2/billing/meter_event_adjustments", v2_adjustment, methods=["POST"],
                     summary="Cancel a meter event (v2)", openapi_extra=_json_body({
                         "type": "object", "required": ["event_name", "cancel"], "properties": {
                             "event_name": {"type": "string"}, "type": {"type": "string", "enum": ["cancel"]},
                             "cancel": {"type": "object", "properties": {"identifier": {"type": "string"}}}}}))
route(router, "POST", "/v1/billing/meter_events", create_meter_event, summary="Record a meter event",
      form={"event_name": "string", "payload[stripe_customer_id]": "string", "payload[value]": "string",
            "identifier": "string", "timestamp": "integer"})
route(router, "POST", "/v1/billing/meter_event_adjustments", create_adjustment, summary="Cancel a meter event",
      form={"event_name": "string", "type": "string", "cancel[identifier]": "string"})
router.add_api_route(
    "/v2/billing/meter_event_stream", meter_event_stream, methods=["POST"],
    summary="Record up to 100 meter events at once (beyond v1: Stripe's v2 stream shape)",
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["events"], "properties": {"events": {
            "type": "array", "maxItems": MAX_BATCH_EVENTS, "items": {"type": "object", "properties": {
                "event_name": {"type": "string"}, "identifier": {"type": "string"},
                "timestamp": {"type": "string"},
                "payload": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}}}})

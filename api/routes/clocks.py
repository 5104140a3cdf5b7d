"""Stripe's test clocks (/v1/test_helpers/test_clocks): time facts written to every partition of
customer-facts. (Named clocks.py: a module named test_*.py reads as a test file.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.store import now_ms, paginate, require
from billing.facts import TestClockAdvanced, TestClockCreated, TestClockDeleted
from billing.money import MAX_TIMESTAMP_S

router = APIRouter(tags=["test clocks"])
MAX_FROZEN_TIME_S = MAX_TIMESTAMP_S


def _live_clock(ctx: ApiContext, clock_id: str) -> dict[str, Any]:
    clock = require(ctx.pool, "test_clocks", "test_helpers.test_clock", clock_id)
    if clock["deleted_ms"] is not None:
        from api.errors import not_found

        raise not_found("test_helpers.test_clock", clock_id)
    return clock


DERIVED_TOPICS = ("invoices", "credit-balance-transactions", "usage-buckets", "live-balances")


def clock_status(ctx: ApiContext, clock_id: str) -> str:
    """"advancing" until the stream workers have committed past the clock's last advance on every
    partition and the projector has read what they had written by then; "ready" after."""
    with ctx.pool.connection() as conn:
        rows = conn.execute('select topic, partition, "offset" from test_clock_advances where test_clock_id = %s',
                            (clock_id,)).fetchall()
    if not rows:
        return "ready"
    committed = ctx.worker_committed_offsets([(row["topic"], row["partition"]) for row in rows])
    if any(committed.get((row["topic"], row["partition"]), -1) <= row["offset"] for row in rows):
        return "advancing"
    ends = ctx.end_offsets([ctx.publisher.topic(name) for name in DERIVED_TOPICS])
    with ctx.pool.connection() as conn:
        stored = {(row["topic"], row["partition"]): row["next_offset"] for row in conn.execute(
            "select topic, partition, next_offset from projection_offset where projection = 'main'").fetchall()}
        if any(stored.get(key, 0) < end for key, end in ends.items()):
            return "advancing"
        conn.execute("delete from test_clock_advances where test_clock_id = %s", (clock_id,))
    return "ready"


def _clock_object(ctx: ApiContext, clock_id: str) -> dict[str, Any]:
    return objects.test_clock(_live_clock(ctx, clock_id), clock_status(ctx, clock_id))


def create_test_clock(ctx: ApiContext, params: Params) -> dict[str, Any]:
    frozen_time_s = params.int("frozen_time", required=True, minimum=0, maximum=MAX_FROZEN_TIME_S)
    name = params.str("name", max_length=300)
    params.done()
    clock_id = new_id("clock")
    fact = TestClockCreated(test_clock_id=clock_id, name=name, frozen_time_ms=frozen_time_s * 1000,
                            created_at_ms=now_ms())
    ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", fact))
    return objects.test_clock(_live_clock(ctx, clock_id))


def retrieve_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    return _clock_object(ctx, id)


def list_test_clocks(ctx: ApiContext, params: Params) -> dict[str, Any]:
    return paginate(ctx.pool, params, "/v1/test_helpers/test_clocks", "test_clocks", ["deleted_ms is null"], [],
                    lambda row: objects.test_clock(row, clock_status(ctx, row["id"])))


def advance_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    frozen_time_s = params.int("frozen_time", required=True, minimum=0, maximum=MAX_FROZEN_TIME_S)
    params.done()
    clock = _live_clock(ctx, id)
    if frozen_time_s * 1000 <= clock["frozen_time_ms"]:
        raise invalid("frozen_time", "Test clocks only move forward: frozen_time must be after the current one.")
    fact = TestClockAdvanced(test_clock_id=id, frozen_time_ms=frozen_time_s * 1000, advanced_at_ms=now_ms())
    positions = ctx.publisher.publish_to_every_partition("customer-facts", fact)
    with ctx.pool.connection() as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                'insert into test_clock_advances (test_clock_id, topic, partition, "offset") values (%s, %s, %s, %s)'
                ' on conflict (test_clock_id, topic, partition) do update set "offset" = excluded."offset"',
                [(id, topic, partition, offset) for topic, partition, offset in positions])
    ctx.wait(positions)
    # Stripe answers an advance with "advancing" whatever happens next; a retrieve tells when it is
    # "ready". (Reading the status here raced the worker: a quick one made the answer "ready".)
    return objects.test_clock(_live_clock(ctx, id), "advancing")


def delete_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    _live_clock(ctx, id)
    fact = TestClockDeleted(test_clock_id=id, deleted_at_ms=now_ms())
    ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", fact))
    return {"id": id, "object": "test_helpers.test_clock", "deleted": True}


def deleted_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    """The answer to a delete, for a retry of one that took effect (api.idempotency)."""
    clock = require(ctx.pool, "test_clocks", "test_helpers.test_clock", id)
    if clock["deleted_ms"] is None:
        from api.errors import not_found

        raise not_found("test_helpers.test_clock", id)
    return {"id": id, "object": "test_helpers.test_clock", "deleted": True}


route(router, "POST", "/v1/test_helpers/test_clocks", create_test_clock, answers_with=retrieve_test_clock, creates="clock", summary="Create a test clock",
      form={"frozen_time": "integer", "name": "string"})
route(router, "GET", "/v1/test_helpers/test_clocks", list_test_clocks, summary="List test clocks",
      query={"limit": "integer", "starting_after": "string", "ending_before": "string"})
route(router, "GET", "/v1/test_helpers/test_clocks/{id}", retrieve_test_clock, summary="Retrieve a test clock")
route(router, "POST", "/v1/test_helpers/test_clocks/{id}/advance", advance_test_clock, answers_with=retrieve_test_clock, summary="Advance a test clock",
      form={"frozen_time": "integer"})
route(router, "DELETE", "/v1/test_helpers/test_clocks/{id}", delete_test_clock, answers_with=deleted_test_clock, summary="Delete a test clock")

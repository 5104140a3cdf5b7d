"""/v1/test_helpers/test_clocks: time facts written to every partition of customer-facts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import objects
from api.app import route
from api.context import ApiContext
from api.errors import invalid
from api.ids import new_id
from api.params import Params
from api.store import now_ms, paginate, require
from billing.facts import TestClockAdvanced, TestClockCreated, TestClockDeleted

router = APIRouter(tags=["test clocks"])
MAX_FROZEN_TIME_S = 253_402_300_799  # 9999-12-31


def _live_clock(ctx: ApiContext, clock_id: str) -> dict[str, Any]:
    clock = require(ctx.pool, "test_clocks", "test_helpers.test_clock", clock_id)
    if clock["deleted_ms"] is not None:
        from api.errors import not_found

        raise not_found("test_helpers.test_clock", clock_id)
    return clock


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
    return objects.test_clock(_live_clock(ctx, id))


def list_test_clocks(ctx: ApiContext, params: Params) -> dict[str, Any]:
    return paginate(ctx.pool, params, "/v1/test_helpers/test_clocks", "test_clocks", ["deleted_ms is null"], [],
                    objects.test_clock)


def advance_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    frozen_time_s = params.int("frozen_time", required=True, minimum=0, maximum=MAX_FROZEN_TIME_S)
    params.done()
    clock = _live_clock(ctx, id)
    if frozen_time_s * 1000 <= clock["frozen_time_ms"]:
        raise invalid("frozen_time", "Test clocks only move forward: frozen_time must be after the current one.")
    fact = TestClockAdvanced(test_clock_id=id, frozen_time_ms=frozen_time_s * 1000, advanced_at_ms=now_ms())
    ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", fact))
    return objects.test_clock(_live_clock(ctx, id))


def delete_test_clock(ctx: ApiContext, params: Params, id: str) -> dict[str, Any]:
    params.done()
    _live_clock(ctx, id)
    fact = TestClockDeleted(test_clock_id=id, deleted_at_ms=now_ms())
    ctx.wait(ctx.publisher.publish_to_every_partition("customer-facts", fact))
    return {"id": id, "object": "test_helpers.test_clock", "deleted": True}


route(router, "POST", "/v1/test_helpers/test_clocks", create_test_clock, summary="Create a test clock",
      form={"frozen_time": "integer", "name": "string"})
route(router, "GET", "/v1/test_helpers/test_clocks", list_test_clocks, summary="List test clocks",
      query={"limit": "integer", "starting_after": "string", "ending_before": "string"})
route(router, "GET", "/v1/test_helpers/test_clocks/{id}", retrieve_test_clock, summary="Retrieve a test clock")
route(router, "POST", "/v1/test_helpers/test_clocks/{id}/advance", advance_test_clock, summary="Advance a test clock",
      form={"frozen_time": "integer"})
route(router, "DELETE", "/v1/test_helpers/test_clocks/{id}", delete_test_clock, summary="Delete a test clock")

"""Reads from the projection: the connection pool, lookups that commands validate against, and
Stripe list pagination."""

from __future__ import annotations

import time
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from api.errors import invalid, not_found
from api.params import Params
from billing.facts import EventTimeWindow, MeterAggregation
from billing.meter_events import customer_now_ms
from billing.meters import MeterAggregator
from billing.usage_windows import ProjectedBucket, projected_bucket

LIST_LIMIT_DEFAULT = 10
LIST_LIMIT_MAX = 100


# A connection given back less than this long ago is handed out again without a check: it just
# answered, and the check (an empty query) would be one more round trip per request.
RECENTLY_USED_S = 1.0


class _CheckWhenIdle:
    """The pool's check and reset callbacks: test a connection (an empty query) before handing it out
    only when it sat idle RECENTLY_USED_S or more, so that the connections a database restart killed
    are replaced instead of failing one request each. Busy connections a restart kills fail the
    requests using them (503) and the pool replaces them as they come back broken."""

    def __init__(self) -> None:
        self.returned_at: dict[int, float] = {}  # id(connection) -> monotonic time given back

    def reset(self, conn: Any) -> None:
        self.returned_at[id(conn)] = time.monotonic()

    def check(self, conn: Any) -> None:
        if time.monotonic() - self.returned_at.get(id(conn), float("-inf")) >= RECENTLY_USED_S:
            ConnectionPool.check_connection(conn)


def open_pool(database_url: str, schema: str = "public", max_size: int = 10) -> ConnectionPool:
    """Autocommit connections (reads see the latest committed projection) on the projection's schema."""
    # min_size = max_size: opening a connection mid-burst takes ~20 ms, which showed up in p99 latency.
    # Statements a connection runs 5 times are prepared (psycopg's prepare_threshold).
    idle_check = _CheckWhenIdle()
    return ConnectionPool(database_url, min_size=max_size, max_size=max_size, open=True, timeout=10,
                          check=idle_check.check, reset=idle_check.reset,
                          kwargs={"autocommit": True, "row_factory": dict_row,
                                  "options": f"-c search_path={schema}"})


def now_ms() -> int:
    return int(time.time() * 1000)


def fetch_one(pool: ConnectionPool, statement: str, *params: Any) -> dict[str, Any] | None:
    with pool.connection() as conn:
        return conn.execute(statement, params).fetchone()


def fetch_all(pool: ConnectionPool, statement: str, *params: Any) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(statement, params).fetchall()


def require(pool: ConnectionPool, table: str, kind: str, object_id: str | None, param: str = "id") -> dict[str, Any]:
    """The row with `object_id` in `table`, or a 404 naming the kind (Stripe: "No such customer: 'x'")."""
    row = fetch_one(pool, f"select * from {table} where id = %s", object_id) if object_id else None
    if row is not None and row.get("deleted_ms") is not None and table == "customers":
        row = None  # a deleted customer is gone for every command and read but its own retrieve
    if row is None:
        raise not_found(kind, object_id or "", param) if param == "id" else invalid(
            param, f"No such {kind}: '{object_id}'", code="resource_missing")
    return row


def projected_usage(pool: ConnectionPool, customer_id: str, start_ms: int, end_ms: int,
                    meter_id: str | None = None) -> dict[str, tuple[MeterAggregator, list[ProjectedBucket]]]:
    """Each meter's aggregator and projected minute buckets of one customer in [start_ms, end_ms)
    (one meter's with `meter_id`): what billing/usage_windows.py folds into usage."""
    rows = fetch_all(pool, "select b.meter_id, m.aggregation, m.event_time_window, b.bucket_start_ms, b.value,"
                           " b.event_count, b.counted_event_time_ms, b.counted_received_at_ms, b.counted_identifier"
                           " from usage_buckets b join meters m on m.id = b.meter_id where b.customer_id = %s"
                           " and b.bucket_start_ms >= %s and b.bucket_start_ms < %s and (%s::text is null or"
                           " b.meter_id = %s)", customer_id, start_ms, end_ms, meter_id, meter_id)
    usage: dict[str, tuple[MeterAggregator, list[ProjectedBucket]]] = {}
    for row in rows:
        if row["meter_id"] not in usage:
            window = row["event_time_window"]
            aggregator = MeterAggregator(MeterAggregation(row["aggregation"]), window and EventTimeWindow(window))
            usage[row["meter_id"]] = (aggregator, [])
        usage[row["meter_id"]][1].append(projected_bucket(
            row["bucket_start_ms"], row["value"], row["event_count"], row["counted_event_time_ms"],
            row["counted_received_at_ms"], row["counted_identifier"]))
    return usage


def read_customer_now_ms(pool: ConnectionPool, customer: dict[str, Any]) -> int:
    """billing's customer_now_ms for a projected customer: its test clock as the projection has it
    (a clock deleted meanwhile: the wall clock)."""
    clock = fetch_one(pool, "select frozen_time_ms from test_clocks where id = %s", customer["test_clock_id"]) \
        if customer.get("test_clock_id") else None
    return customer_now_ms(now_ms(), None if clock is None else clock["frozen_time_ms"])


def _page_params(params: Params) -> tuple[int, str | None, str | None]:
    """A list's `limit` (1..100, default 10) and its one cursor, `starting_after` or `ending_before`;
    no other parameter is left."""
    limit = params.int("limit", minimum=1, maximum=LIST_LIMIT_MAX, default=LIST_LIMIT_DEFAULT)
    starting_after = params.str("starting_after", max_length=200)
    ending_before = params.str("ending_before", max_length=200)
    params.done()
    if starting_after and ending_before:
        raise invalid("ending_before", "You may only specify one of starting_after and ending_before.")
    return limit, starting_after, ending_before


def paginate(pool: ConnectionPool, params: Params, url: str, table: str, conditions: list[str],
             arguments: list[Any], render: Any, order_column: str = "created_ms") -> dict[str, Any]:
    """A Stripe list object: newest first, `limit` (1..100, default 10), `starting_after`, `ending_before`."""
    limit, starting_after, ending_before = _page_params(params)
    conditions, arguments = list(conditions), list(arguments)
    cursor_id = starting_after or ending_before
    ascending = False
    if cursor_id:
        cursor = fetch_one(pool, f"select {order_column} as sort_key, id from {table} where id = %s", cursor_id)
        if cursor is None:
            param = "starting_after" if starting_after else "ending_before"
            raise invalid(param, f"No such object: '{cursor_id}'", code="resource_missing")
        comparison = "<" if starting_after else ">"
        ascending = bool(ending_before)
        conditions.append(f"({order_column}, id) {comparison} (%s, %s)")
        arguments += [cursor["sort_key"], cursor["id"]]
    where = (" where " + " and ".join(conditions)) if conditions else ""
    direction = "asc" if ascending else "desc"
    rows = fetch_all(pool, f"select * from {table}{where} order by {order_column} {direction}, id {direction}"
                           f" limit %s", *arguments, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if ascending:
        rows.reverse()
    return {"object": "list", "data": [render(row) for row in rows], "has_more": has_more, "url": url}


def page_of(params: Params, items: list[dict[str, Any]], url: str) -> dict[str, Any]:
    """`paginate` over a list already in hand (in its order): `limit`, `starting_after`, `ending_before`."""
    limit, starting_after, ending_before = _page_params(params)
    ids = [item["id"] for item in items]
    start, stop = 0, len(items)
    if starting_after:
        if starting_after not in ids:
            raise invalid("starting_after", f"No such object: '{starting_after}'", code="resource_missing")
        start = ids.index(starting_after) + 1
    if ending_before:
        if ending_before not in ids:
            raise invalid("ending_before", f"No such object: '{ending_before}'", code="resource_missing")
        stop = ids.index(ending_before)
        start = max(0, stop - limit)
        return list_object(items[start:stop], url, has_more=start > 0)
    return list_object(items[start:start + limit], url, has_more=start + limit < stop)


def list_object(data: list[Any], url: str, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}

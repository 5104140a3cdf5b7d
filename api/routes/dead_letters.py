"""/v1/dead_letters: the records the engine could not take, with their reason codes (beyond
Stripe; modelled on its meter error reports, billing.meter.error_report_triggered, which tell
an integrator which events failed and why). The original bytes only when asked for."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter

from api.routing import route
from api.context import ApiContext
from api.errors import invalid
from api.objects import seconds
from api.params import Params
from api.store import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from projections.dead_letters import counts_by_reason, list_dead_letters

router = APIRouter(tags=["dead letters"])
URL = "/v1/dead_letters"
ID_PREFIX = "dl_"


def dead_letter_id(row: dict[str, Any]) -> str:
    """dl_<partition>_<offset>_<topic>: where the record was read, which makes it unique."""
    return f"{ID_PREFIX}{row['partition']}_{row['offset']}_{row['topic']}"


def _position(object_id: str) -> tuple[str, int, int]:
    """(topic, partition, offset) of a dead letter id; ValueError when it is none."""
    if not object_id.startswith(ID_PREFIX):
        raise ValueError(object_id)
    partition, offset, topic = object_id[len(ID_PREFIX):].split("_", 2)
    return topic, int(partition), int(offset)


def dead_letter(row: dict[str, Any]) -> dict[str, Any]:
    body = {"id": dead_letter_id(row), "object": "dead_letter", "created": seconds(row["dead_lettered_at_ms"]),
            "reason_code": row["reason_code"], "message": row["message"], "customer": row["customer_id"],
            "source": {"topic": row["topic"], "partition": row["partition"], "offset": row["offset"]}}
    if "original_bytes" in row:
        body["original_bytes"] = base64.b64encode(bytes(row["original_bytes"])).decode()
    return body


def list_letters(ctx: ApiContext, params: Params) -> dict[str, Any]:
    reason_code = params.str("reason_code", max_length=200)
    customer_id = params.str("customer", max_length=200)
    with_bytes = params.bool("include_original_bytes", default=False)
    limit = params.int("limit", minimum=1, maximum=LIST_LIMIT_MAX, default=LIST_LIMIT_DEFAULT)
    starting_after = params.str("starting_after", max_length=500)
    params.done()
    after = None
    if starting_after is not None:
        try:
            after = _position(starting_after)
        except ValueError:
            raise invalid("starting_after", f"No such object: '{starting_after}'", code="resource_missing") from None
    with ctx.pool.connection() as conn:
        try:
            rows, has_more = list_dead_letters(conn, reason_code=reason_code, customer_id=customer_id, after=after,
                                               limit=limit, with_original_bytes=bool(with_bytes))
        except LookupError:
            raise invalid("starting_after", f"No such object: '{starting_after}'", code="resource_missing") from None
    return {"object": "list", "data": [dead_letter(row) for row in rows], "has_more": has_more, "url": URL}


def metrics_lines(pool: Any) -> list[str]:
    """Prometheus lines: dead letters in the projection by reason code (none when it is unreachable)."""
    try:
        with pool.connection() as conn:
            counts = counts_by_reason(conn)
    except Exception:  # noqa: BLE001 - /metrics answers the request metrics all the same
        return []
    lines = ["# HELP drawdown_dead_letters_total Dead letters in the projection, by reason code.",
             "# TYPE drawdown_dead_letters_total counter"]
    for reason_code, count in sorted(counts.items()):
        label = reason_code.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'drawdown_dead_letters_total{{reason_code="{label}"}} {count}')
    return lines


route(router, "GET", URL, list_letters, summary="List dead letters (records the engine could not take)",
      query={"reason_code": "string", "customer": "string", "include_original_bytes": "boolean",
             "limit": "integer", "starting_after": "string"})

"""Reading the dead letters the projection holds: for the API list, the CLI and /metrics.

A dead letter is a record the engine could not take (see README "Dead letters"): its reason code,
a message, the customer when known, where it was read (topic, partition, offset) and its bytes.
Newest first; a page goes on after the (dead_lettered_at_ms, topic, partition, offset) of the
last one of the previous page.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row, tuple_row

def list_dead_letters(conn: Any, *, reason_code: str | None = None, customer_id: str | None = None,
                      after: tuple[str, int, int] | None = None, limit: int = 10,
                      with_original_bytes: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """(up to `limit` dead letters, newest first, whether more follow). `after`: the (topic,
    partition, offset) of the last one seen; an unknown one raises LookupError."""
    conditions, arguments = [], []
    if reason_code is not None:
        conditions.append("reason_code = %s")
        arguments.append(reason_code)
    if customer_id is not None:
        conditions.append("customer_id = %s")
        arguments.append(customer_id)
    with conn.cursor(row_factory=dict_row) as cursor:
        if after is not None:
            row = cursor.execute("select dead_lettered_at_ms from dead_letters where topic = %s and partition = %s"
                                 " and \"offset\" = %s", after).fetchone()
            if row is None:
                raise LookupError(after)
            conditions.append("(dead_lettered_at_ms, topic, partition, \"offset\") < (%s, %s, %s, %s)")
            arguments += [row["dead_lettered_at_ms"], *after]
        where = (" where " + " and ".join(conditions)) if conditions else ""
        columns = "topic, partition, \"offset\", reason_code, message, customer_id, dead_lettered_at_ms"
        if with_original_bytes:
            columns += ", original_bytes"
        rows = cursor.execute(f"select {columns} from dead_letters{where} order by dead_lettered_at_ms desc,"
                              f" topic desc, partition desc, \"offset\" desc limit %s", (*arguments, limit + 1)).fetchall()
    return rows[:limit], len(rows) > limit


def counts_by_reason(conn: Any) -> dict[str, int]:
    """How many dead letters the projection holds per reason code."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        rows = cursor.execute("select reason_code, count(*) from dead_letters group by reason_code").fetchall()
    return dict(rows)


def format_table(rows: list[dict[str, Any]], has_more: bool) -> str:
    """The dead letters as a readable table (`drawdown dead-letters`), newest first."""
    from datetime import datetime, timezone

    if not rows:
        return "no dead letters"
    table = [("WHEN (UTC)", "REASON", "CUSTOMER", "SOURCE", "MESSAGE")]
    for row in rows:
        when = datetime.fromtimestamp(row["dead_lettered_at_ms"] / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        message = " ".join(row["message"].split())
        table.append((when, row["reason_code"], row["customer_id"] or "-",
                      f"{row['topic']}[{row['partition']}]@{row['offset']}",
                      message if len(message) <= 80 else message[:79] + "…"))
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[4] for line in table]
    if has_more:
        lines.append("(more: raise --limit, or page with GET /v1/dead_letters?starting_after=...)")
    return "\n".join(lines)

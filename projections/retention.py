"""Retention of PostgreSQL's high-churn bookkeeping: what a year of running must not keep forever.

- idempotency keys: replayed for 24 hours (api/idempotency.py), then deleted;
- events: served and delivered for 30 days (as Stripe keeps them), then deleted, with their webhook
  deliveries and attempts (a delivery still pending is kept: its retries end after 3 days);
- dead letters: kept `dead_letter_retention_days` (0: for ever);
- usage buckets: a month's partition (migration 0019) is dropped once the whole month lies more
  than `usage_bucket_retention_days` (0: for ever; else at least 45, past the 35-day lateness limit
  and the grace period) before now. What invoices need is in invoice_lines and period_usage; the
  event summaries refuse a window before what is kept (api/routes/meters.py), and the replay reads
  the raw facts, which Kafka keeps.

The webhook dispatcher runs `purge` every RETENTION_INTERVAL_S (`drawdown retention` runs it now).
Deletes go in chunks, each its own short transaction, so the API and the projector never wait long.
Invoices and balances are not bookkeeping: they stay.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("drawdown.retention")

DAY_MS = 86_400_000
IDEMPOTENCY_KEY_RETENTION_MS = DAY_MS  # api/idempotency.py's REPLAY_WINDOW_MS
EVENT_RETENTION_MS = 30 * DAY_MS
RETENTION_INTERVAL_S = 3600.0
CHUNK_ROWS = 10_000

# table -> the condition (on %(cutoff)s) a row is purged by, and the cutoff's age in ms (None: the setting)
_RULES: dict[str, tuple[str, int | None]] = {
    "idempotency_keys": ("created_ms < %(cutoff)s and lease_until_ms < %(now)s",
                         IDEMPOTENCY_KEY_RETENTION_MS),
    "webhook_attempts": ("attempted_ms < %(cutoff)s", EVENT_RETENTION_MS),
    "webhook_deliveries": ("created_ms < %(cutoff)s and status <> 'pending'", EVENT_RETENTION_MS),
    "events": ("created_ms < %(cutoff)s", EVENT_RETENTION_MS),
    "dead_letters": ("dead_lettered_at_ms < %(cutoff)s", None),
}
_KEYS = {"webhook_attempts": "id", "webhook_deliveries": "id", "events": "id",
         "idempotency_keys": "key_sha256, idempotency_key", "dead_letters": "topic, partition, \"offset\""}


def kept_usage_since_ms(now_ms: int, usage_bucket_retention_days: int) -> int | None:
    """The start of the oldest month of usage buckets kept as of `now_ms` (None: all are kept)."""
    from projections.writers import month_start_ms

    if usage_bucket_retention_days <= 0:
        return None
    return month_start_ms(now_ms - usage_bucket_retention_days * DAY_MS)


def drop_old_usage_bucket_partitions(conn: Any, now_ms: int, usage_bucket_retention_days: int) -> list[str]:
    """Drop the usage-bucket partitions of the months wholly before what is kept; their names."""
    kept_since_ms = kept_usage_since_ms(now_ms, usage_bucket_retention_days)
    if kept_since_ms is None:
        return []
    dropped = []
    for name, bound in conn.execute("select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i"
                                    " join pg_class c on c.oid = i.inhrelid"
                                    " where i.inhparent = 'usage_buckets'::regclass").fetchall():
        month_end_ms = int(re.findall(r"-?\d+", bound.split(" TO ")[1])[0])  # FOR VALUES FROM ('a') TO ('b')
        if month_end_ms <= kept_since_ms:
            conn.execute(f'drop table "{name}"')
            dropped.append(name)
    return sorted(dropped)


def purge(conn: Any, now_ms: int, dead_letter_retention_days: int, usage_bucket_retention_days: int = 0) -> dict[str, int]:
    """Delete what is past its retention as of `now_ms`; returns rows (for usage buckets: monthly
    partitions) deleted per table. `conn` is in autocommit mode (each chunk commits on its own)."""
    deleted: dict[str, int] = {}
    if usage_bucket_retention_days > 0:
        deleted["usage_bucket_partitions"] = len(drop_old_usage_bucket_partitions(conn, now_ms,
                                                                                usage_bucket_retention_days))
    for table, (condition, age_ms) in _RULES.items():
        if age_ms is None:
            if dead_letter_retention_days <= 0:
                continue
            age_ms = dead_letter_retention_days * DAY_MS
        arguments = {"cutoff": now_ms - age_ms, "now": now_ms, "chunk": CHUNK_ROWS}
        key = _KEYS[table]
        total = 0
        while True:
            count = conn.execute(f"delete from {table} where ({key}) in (select {key} from {table} where {condition}"
                                 f" limit %(chunk)s)", arguments).rowcount
            total += count
            if count < CHUNK_ROWS:
                break
        deleted[table] = total
    if any(deleted.values()):
        log.info("retention: deleted %s", ", ".join(f"{count} {table}" for table, count in deleted.items() if count))
    return deleted

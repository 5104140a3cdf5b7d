"""Retention of PostgreSQL's high-churn bookkeeping: what a year of running must not keep forever.

- idempotency keys: replayed for 24 hours (api/idempotency.py), then deleted;
- events: served and delivered for 30 days (as Stripe keeps them), then deleted, with their webhook
  deliveries and attempts (a delivery still pending is kept: its retries end after 3 days);
- dead letters: kept `dead_letter_retention_days` (0: for ever).

The webhook dispatcher runs `purge` every RETENTION_INTERVAL_S (`drawdown retention` runs it now).
Deletes go in chunks, each its own short transaction, so the API and the projector never wait long.
Usage buckets, invoices and balances are not bookkeeping: they stay (issue 16: partitioning and
roll-up of usage buckets are still to come).
"""

from __future__ import annotations

import logging
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


def purge(conn: Any, now_ms: int, dead_letter_retention_days: int) -> dict[str, int]:
    """Delete what is past its retention as of `now_ms`; returns rows deleted per table.
    `conn` is in autocommit mode (each chunk commits on its own)."""
    deleted: dict[str, int] = {}
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

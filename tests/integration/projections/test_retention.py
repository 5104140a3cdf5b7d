"""Retention (projections/retention.py) against a real PostgreSQL: rows past their age go, the
rest stay. Ages worked out by hand from the documented rules: idempotency keys 24 h (and not
leased), events and finished webhook deliveries 30 days, dead letters the setting's days."""

from __future__ import annotations

from drawdown.settings import Settings
from projections.migrate import migrate
from projections.projector import connect
from projections.retention import DAY_MS, purge

NOW = 1_800_000_000_000


def _seed(conn) -> None:
    for key, age_ms, lease_until in (("old", DAY_MS + 1, 0), ("fresh", DAY_MS - 1000, 0), ("leased", 2 * DAY_MS, NOW + 1)):
        conn.execute("insert into idempotency_keys (key_sha256, idempotency_key, request_sha256, created_ms,"
                     " lease_until_ms) values ('k', %s, 'r', %s, %s)", (key, NOW - age_ms, lease_until))
    for event, age_days in (("evt_old", 31), ("evt_fresh", 29)):
        conn.execute("insert into events (id, type, created_ms, body) values (%s, 'customer.created', %s, '{}')",
                     (event, NOW - age_days * DAY_MS))
    for delivery, age_days, status in (("d_old", 31, "succeeded"), ("d_pending", 31, "pending"), ("d_fresh", 1, "failed")):
        conn.execute("insert into webhook_deliveries (id, endpoint_id, event_id, status, created_ms)"
                     " values (%s, 'we_1', %s, %s, %s)", (delivery, f"evt_{delivery}", status, NOW - age_days * DAY_MS))
    for attempt, age_days in ((1, 31), (2, 2)):
        conn.execute("insert into webhook_attempts (delivery_id, endpoint_id, event_id, attempted_ms, duration_ms,"
                     " status_code, outcome) values ('d_old', 'we_1', 'evt_old', %s, 5, 200, 'succeeded')",
                     (NOW - age_days * DAY_MS,))
    for offset, age_days in ((1, 91), (2, 89)):
        conn.execute("insert into dead_letters (topic, partition, \"offset\", reason_code, message, original_bytes,"
                     " dead_lettered_at_ms) values ('t', 0, %s, 'x', 'm', '', %s)", (offset, NOW - age_days * DAY_MS))


def _left(conn) -> dict[str, list]:
    def column(statement: str) -> list:
        return sorted(row[0] for row in conn.execute(statement).fetchall())

    return {"idempotency_keys": column("select idempotency_key from idempotency_keys"),
            "events": column("select id from events"),
            "webhook_deliveries": column("select id from webhook_deliveries"),
            "webhook_attempts": column(f"select ({NOW} - attempted_ms) / {DAY_MS} from webhook_attempts"),  # age, days
            "dead_letters": column("select \"offset\" from dead_letters")}


def test_purge_deletes_what_is_past_its_retention_and_keeps_the_rest(settings: Settings, schema: str):
    migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema, autocommit=True) as conn:
        _seed(conn)
        deleted = purge(conn, NOW, dead_letter_retention_days=90)
        assert deleted == {"idempotency_keys": 1, "webhook_attempts": 1, "webhook_deliveries": 1, "events": 1,
                           "dead_letters": 1}
        assert _left(conn) == {"idempotency_keys": ["fresh", "leased"], "events": ["evt_fresh"],
                               "webhook_deliveries": ["d_fresh", "d_pending"], "webhook_attempts": [2],
                               "dead_letters": [2]}
        assert purge(conn, NOW, dead_letter_retention_days=90) == dict.fromkeys(deleted, 0)  # nothing left to do


def test_dead_letters_are_kept_for_ever_with_a_retention_of_zero(settings: Settings, schema: str):
    migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema, autocommit=True) as conn:
        _seed(conn)
        deleted = purge(conn, NOW + 3650 * DAY_MS, dead_letter_retention_days=0)
        assert "dead_letters" not in deleted
        assert _left(conn)["dead_letters"] == [1, 2]

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


# --- usage buckets: monthly partitions (migration 0019) --------------------------------------

JAN_2027_MS = 1_798_761_600_000  # 2027-01-01T00:00:00Z
FEB_2027_MS = 1_801_440_000_000  # 2027-02-01
MAR_2027_MS = 1_803_859_200_000  # 2027-03-01
APR_20_2027_MS = 1_808_179_200_000  # 2027-04-20


def _write_buckets(conn, bucket_starts_ms: list[int]) -> None:
    import billing.facts as f
    from decimal import Decimal

    from projections.writers import Batch

    batch = Batch()
    for offset, bucket_start_ms in enumerate(bucket_starts_ms):
        batch.add(f.UsageBucketUpdated(customer_id="cus_1", meter_id="mtr_1", bucket_start_ms=bucket_start_ms,
                                       value=Decimal(offset + 1), event_count=1, updated_at_ms=bucket_start_ms),
                  0, offset, "usage-buckets")
    with conn.transaction():
        batch.write(conn)


def _partitions(conn) -> list[str]:
    return sorted(row[0] for row in conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'usage_buckets'::regclass").fetchall())


def test_usage_buckets_go_by_whole_months_once_past_their_retention(settings: Settings, schema: str):
    migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema, autocommit=True) as conn:
        _write_buckets(conn, [JAN_2027_MS + 60_000, FEB_2027_MS - 60_000, FEB_2027_MS, MAR_2027_MS + 86_400_000])
        assert _partitions(conn) == ["usage_buckets_202701", "usage_buckets_202702", "usage_buckets_202703"]
        # By hand: 45 days before April 20 is March 6, so March (from March 1) is kept, January and
        # February (ending Feb 1 and Mar 1) go.
        assert purge(conn, APR_20_2027_MS, dead_letter_retention_days=0, usage_bucket_retention_days=45) == {
            "usage_bucket_partitions": 2, **dict.fromkeys(["idempotency_keys", "webhook_attempts",
                                                           "webhook_deliveries", "events"], 0)}
        assert _partitions(conn) == ["usage_buckets_202703"]
        assert conn.execute("select bucket_start_ms from usage_buckets").fetchall() == [(MAR_2027_MS + 86_400_000,)]
        _write_buckets(conn, [JAN_2027_MS + 120_000])  # a bucket of a dropped month makes its partition again
        assert _partitions(conn) == ["usage_buckets_202701", "usage_buckets_202703"]
        purge(conn, APR_20_2027_MS, dead_letter_retention_days=0, usage_bucket_retention_days=0)  # 0: for ever
        assert len(_partitions(conn)) == 2


def test_the_partitioning_migration_keeps_the_buckets_there_were(settings: Settings, schema: str, monkeypatch):
    import projections.migrate as migrations

    every_file = migrations.migration_files()
    monkeypatch.setattr(migrations, "migration_files", lambda: [path for path in every_file if path.name < "0019"])
    migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema, autocommit=True) as conn:
        for index, bucket_start_ms in enumerate([JAN_2027_MS, FEB_2027_MS + 60_000, FEB_2027_MS + 120_000]):
            conn.execute("insert into usage_buckets (customer_id, meter_id, bucket_start_ms, value, event_count,"
                         " updated_at_ms, source_partition, source_offset) values ('cus_1', 'mtr_1', %s, %s, 1, 0, 0,"
                         " %s)", (bucket_start_ms, index + 1, index))
    monkeypatch.setattr(migrations, "migration_files", lambda: every_file)
    assert "0019_usage_buckets_partitioned.sql" in migrate(settings.effective_database_url, schema)
    with connect(settings.effective_database_url, schema, autocommit=True) as conn:
        assert _partitions(conn) == ["usage_buckets_202701", "usage_buckets_202702"]
        assert conn.execute("select bucket_start_ms, value::int from usage_buckets order by 1").fetchall() == [
            (JAN_2027_MS, 1), (FEB_2027_MS + 60_000, 2), (FEB_2027_MS + 120_000, 3)]


def test_a_retention_under_the_lateness_limit_is_refused():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least 45 days"):
        Settings(usage_bucket_retention_days=30)
    assert Settings(usage_bucket_retention_days=45).usage_bucket_retention_days == 45

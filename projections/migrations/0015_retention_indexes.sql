-- projections/retention.py deletes by age: each table's age column indexed, so an hourly purge
-- reads only what it deletes.
create index idempotency_keys_created on idempotency_keys (created_ms);
create index webhook_attempts_attempted on webhook_attempts (attempted_ms);
create index webhook_deliveries_created on webhook_deliveries (created_ms);
create index dead_letters_lettered on dead_letters (dead_lettered_at_ms);

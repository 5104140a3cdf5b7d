-- A claimed Idempotency-Key is held until lease_until_ms; after that a retry may resume the request
-- (api/idempotency.py). 0 = free to resume at once (the attempt failed after it may have published).
alter table idempotency_keys add column lease_until_ms bigint not null default 0;

-- The reading a bucket's value comes from, for `last` and hour/day-windowed meters (UsageBucketUpdated
-- v2): the invoice preview and the event summaries need its order to pick, across buckets, the
-- readings that count as the workers do (billing/usage_windows.py). Null for sum and count meters.
alter table usage_buckets
    add column counted_event_time_ms bigint,
    add column counted_received_at_ms bigint,
    add column counted_identifier text;

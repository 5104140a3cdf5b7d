-- Each subscription period's usage per meter, counted by exact event time (PeriodUsageUpdated): the
-- invoice preview reads it, since a period may start mid-minute, inside a minute bucket.
create table period_usage (
    subscription_id text not null,
    period_start_ms bigint not null,
    meter_id text not null,
    customer_id text not null,
    value numeric not null,
    event_count bigint not null,
    updated_at_ms bigint not null,
    source_partition integer not null,
    source_offset bigint not null,
    primary key (subscription_id, period_start_ms, meter_id)
);

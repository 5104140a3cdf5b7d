-- Usage buckets partitioned by month of bucket time (native declarative partitioning), so that an
-- old month goes with one DROP (projections/retention.py) instead of deleting rows one by one.
-- A month's partition is made when its first bucket is written (ensure_usage_bucket_partition,
-- called by the projector before each write); there is no default partition, so a month's
-- partition can always be made.

create or replace function ensure_usage_bucket_partition(month_start_ms bigint) returns void
language plpgsql as $$
declare
    month_start timestamp := to_timestamp(month_start_ms / 1000.0) at time zone 'UTC';
    partition_name text := 'usage_buckets_' || to_char(month_start, 'YYYYMM');
    month_end_ms bigint := (extract(epoch from month_start + interval '1 month') * 1000)::bigint;
begin
    if to_regclass(quote_ident(partition_name)) is null then
        perform pg_advisory_xact_lock(hashtext(partition_name));  -- two projectors making the same month
        execute format('create table if not exists %I partition of usage_buckets for values from (%s) to (%s)',
                       partition_name, month_start_ms, month_end_ms);
    end if;
end $$;

alter table usage_buckets rename to usage_buckets_unpartitioned;
alter table usage_buckets_unpartitioned rename constraint usage_buckets_pkey to usage_buckets_unpartitioned_pkey;
create table usage_buckets (like usage_buckets_unpartitioned including defaults) partition by range (bucket_start_ms);
alter table usage_buckets add primary key (customer_id, meter_id, bucket_start_ms);

do $$
declare
    month_start_ms bigint;
begin
    for month_start_ms in
        select distinct (extract(epoch from date_trunc('month', to_timestamp(bucket_start_ms / 1000.0)
                                                        at time zone 'UTC')) * 1000)::bigint
        from usage_buckets_unpartitioned
    loop
        perform ensure_usage_bucket_partition(month_start_ms);
    end loop;
end $$;

insert into usage_buckets select * from usage_buckets_unpartitioned;
drop table usage_buckets_unpartitioned;

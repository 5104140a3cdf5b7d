-- A meter event cancel without customer goes to every partition; each partition that does not hold
-- the event says so (a dead letter `meter_event_not_in_partition`). Once every partition has, the
-- projector writes one `meter_event_not_found` dead letter for the cancel (projections/writers.py).
create table meter_event_cancel_misses (
    fact_sha256 bytea not null,
    partition integer not null,
    missed_at_ms bigint not null,
    primary key (fact_sha256, partition)
);

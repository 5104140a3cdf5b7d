-- API state (not a projection): where each test clock advance landed in customer-facts, so that
-- the clock reads "advancing" until the stream workers have committed past it on every partition
-- and the projector has caught up with what they wrote. Rows go once the clock is ready.
create table test_clock_advances (
    test_clock_id text not null,
    topic text not null,
    partition integer not null,
    "offset" bigint not null,
    primary key (test_clock_id, topic, partition)
);

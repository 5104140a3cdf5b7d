-- Stripe event objects derived from the facts (written by the projector in the batch's
-- transaction, ids derived from the facts: a rebuild writes the same ids and changes nothing),
-- and the webhook endpoints, deliveries and attempts of the dispatcher (projections/webhooks.py).

create table events (
    id text primary key,
    -- the order events are committed in: writers hold an advisory lock (projections/events.py,
    -- lock_event_order) from their first nextval to their commit, so a reader that has seen seq n
    -- will never see a new event below it
    seq bigserial not null unique,
    type text not null,
    created_ms bigint not null,
    body json not null  -- the event object as served and delivered
);
create index events_created on events (created_ms, id);
create index events_type_created on events (type, created_ms, id);

-- API state: a rebuild leaves it alone.
create table webhook_endpoints (
    id text primary key,
    url text not null,
    enabled_events text[] not null,
    description text,
    metadata jsonb not null,
    status text not null,  -- enabled | disabled
    secret text not null,
    api_version text,
    created_ms bigint not null,
    deleted_ms bigint,
    cursor_seq bigint not null,  -- the dispatcher's cursor: the last event seq it scheduled for this endpoint
    failing_since_ms bigint  -- first failed attempt since the last success (null: not failing)
);

-- One row per (endpoint, event): pending until delivered (2xx) or given up (the retry schedule ran out).
create table webhook_deliveries (
    id text primary key,
    endpoint_id text not null,
    event_id text not null,
    status text not null,  -- pending | succeeded | failed
    attempts integer not null default 0,
    next_attempt_ms bigint,
    first_attempt_ms bigint,
    created_ms bigint not null,
    unique (endpoint_id, event_id)
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_ms) where status = 'pending';
create index webhook_deliveries_endpoint on webhook_deliveries (endpoint_id, created_ms);

create table webhook_attempts (
    id bigserial primary key,
    delivery_id text not null,
    endpoint_id text not null,
    event_id text not null,
    attempted_ms bigint not null,
    duration_ms integer not null,
    status_code integer,  -- null: no HTTP answer
    outcome text not null,  -- succeeded | failed
    error text
);
create index webhook_attempts_endpoint on webhook_attempts (endpoint_id, id);

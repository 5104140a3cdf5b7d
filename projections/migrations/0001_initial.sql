-- drawdown's read model. Every row is written by the projector from facts (ids come from the
-- facts, so a rebuild writes the same rows), except api_keys and idempotency_keys (API state).
-- Times are epoch milliseconds (bigint *_ms); money is bigint minor units; decimals are numeric.

create table projection_offset (
    projection text not null,
    topic text not null,
    partition integer not null,
    next_offset bigint not null,
    primary key (projection, topic, partition)
);

create table test_clocks (
    id text primary key,
    name text,
    frozen_time_ms bigint not null,
    created_ms bigint not null,
    deleted_ms bigint
);

create table meters (
    id text primary key,
    display_name text not null,
    event_name text not null unique,
    aggregation text not null,
    customer_payload_key text not null,
    value_payload_key text not null,
    event_time_window text,
    status text not null,
    created_ms bigint not null,
    updated_ms bigint not null
);

create table products (
    id text primary key,
    name text not null,
    metadata jsonb not null,
    created_ms bigint not null
);

create table prices (
    id text primary key,
    product_id text not null,
    currency text not null,
    unit_amount_decimal numeric not null,
    usage_type text not null,
    meter_id text,
    recurring_interval text not null,
    recurring_interval_count integer not null,
    created_ms bigint not null
);

create table customers (
    id text primary key,
    name text,
    email text,
    test_clock_id text,
    metadata jsonb not null,
    created_ms bigint not null
);

create table subscriptions (
    id text primary key,
    customer_id text not null,
    currency text not null,
    billing_cycle_anchor_ms bigint not null,
    test_clock_id text,
    status text not null,
    cancel_at_period_end boolean not null default false,
    canceled_ms bigint,
    invoice_now boolean,
    created_ms bigint not null
);
create index subscriptions_customer on subscriptions (customer_id);

create table subscription_items (
    id text primary key,
    subscription_id text not null,
    price_id text not null,
    quantity bigint not null,
    position integer not null
);
create index subscription_items_subscription on subscription_items (subscription_id);

create table credit_grants (
    id text primary key,
    customer_id text not null,
    name text,
    amount_minor bigint not null,
    currency text not null,
    scope_price_type text,
    scope_price_ids text[] not null,
    category text not null,
    priority integer not null,
    effective_at_ms bigint not null,
    expires_at_ms bigint,
    metadata jsonb not null,
    test_clock_id text,
    voided_ms bigint,
    expired_ms bigint,
    created_ms bigint not null,
    updated_ms bigint not null
);
create index credit_grants_customer on credit_grants (customer_id);

create table credit_balance_transactions (
    id text primary key,
    customer_id text not null,
    grant_id text not null,
    currency text not null,
    amount_minor bigint not null,
    type text not null,
    reason text not null,
    invoice_id text,
    invoice_line_id text,
    effective_at_ms bigint not null
);
create index credit_balance_transactions_customer on credit_balance_transactions (customer_id, effective_at_ms);
create index credit_balance_transactions_grant on credit_balance_transactions (grant_id);

create table invoices (
    id text primary key,
    customer_id text not null,
    subscription_id text not null,
    currency text not null,
    period_start_ms bigint not null,
    period_end_ms bigint not null,
    billing_reason text not null,
    finalized_ms bigint not null,
    subtotal_minor bigint not null,
    total_credits_minor bigint not null,
    amount_due_minor bigint not null,
    status text not null,
    voided_ms bigint
);
create index invoices_customer on invoices (customer_id);

create table invoice_lines (
    id text primary key,
    invoice_id text not null,
    position integer not null,
    subscription_item_id text not null,
    price_id text not null,
    meter_id text,
    quantity numeric not null,
    unit_amount_decimal numeric not null,
    amount_minor bigint not null
);
create index invoice_lines_invoice on invoice_lines (invoice_id);

create table invoice_line_credits (
    credit_balance_transaction_id text primary key,
    invoice_id text not null,
    invoice_line_id text not null,
    grant_id text not null,
    amount_minor bigint not null,
    position integer not null
);
create index invoice_line_credits_invoice on invoice_line_credits (invoice_id);

-- One row per (customer, meter, minute): the bucket's current aggregate; the later offset wins.
create table usage_buckets (
    customer_id text not null,
    meter_id text not null,
    bucket_start_ms bigint not null,
    value numeric not null,
    event_count bigint not null,
    updated_at_ms bigint not null,
    source_partition integer not null,
    source_offset bigint not null,
    primary key (customer_id, meter_id, bucket_start_ms)
);

create table live_balances (
    customer_id text not null,
    currency text not null,
    available_credits_minor bigint not null,
    accrued_usage_minor bigint not null,
    live_balance_minor bigint not null,
    as_of_ms bigint not null,
    primary key (customer_id, currency)
);

create table low_balance_alerts (
    id text primary key,
    customer_id text not null,
    currency text not null,
    threshold_minor bigint not null,
    live_balance_minor bigint not null,
    alerted_at_ms bigint not null
);

-- Dead letters from the workers, and records the projector itself could not decode.
create table dead_letters (
    topic text not null,
    partition integer not null,
    "offset" bigint not null,
    reason_code text not null,
    message text not null,
    customer_id text,
    original_bytes bytea not null,
    dead_lettered_at_ms bigint not null,
    primary key (topic, partition, "offset")
);

-- API state (not projections: a rebuild leaves them alone).
create table api_keys (
    key_sha256 text primary key,
    read_only boolean not null,
    created_ms bigint not null
);

create table idempotency_keys (
    key_sha256 text not null,
    idempotency_key text not null,
    request_sha256 text not null,
    status_code integer,
    response_body bytea,
    created_ms bigint not null,
    primary key (key_sha256, idempotency_key)
);

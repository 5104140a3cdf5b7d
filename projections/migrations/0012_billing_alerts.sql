-- Billing alerts (/v1/billing/alerts) and their crossings (billing.alert.triggered, drawdown's
-- billing.alert.recovered), projected from BillingAlertCreated/StatusChanged and BillingAlertCrossed.
create table billing_alerts (
    id text primary key,
    customer_id text not null,
    alert_type text not null,
    title text not null,
    status text not null,
    meter_id text,
    gte bigint,
    currency text,
    lte_minor bigint,
    created_ms bigint not null,
    updated_ms bigint not null
);
create index billing_alerts_customer on billing_alerts (customer_id);

create table billing_alert_crossings (
    id text primary key,
    alert_id text not null,
    customer_id text not null,
    crossing text not null,
    value bigint not null,
    crossed_ms bigint not null
);
create index billing_alert_crossings_alert on billing_alert_crossings (alert_id, crossed_ms);

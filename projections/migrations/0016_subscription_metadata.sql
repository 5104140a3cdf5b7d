-- Subscriptions carry metadata (SubscriptionCreated v2, SubscriptionUpdated).
alter table subscriptions add column metadata jsonb not null default '{}';

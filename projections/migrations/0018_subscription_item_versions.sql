-- Subscription items versioned by the period they start in (SubscriptionItemsChanged v2): a change
-- made through the API bills from the next period, so the items of the current period and those of
-- the next may differ. effective_from_ms 0: the items since the subscription began (or since a
-- change at once); a version bills the periods starting at or after its instant.
alter table subscription_items add column effective_from_ms bigint not null default 0;
alter table subscription_items drop constraint subscription_items_pkey;
alter table subscription_items add primary key (id, effective_from_ms);

-- Subscription items carry metadata (SubscriptionItem in SubscriptionCreated/SubscriptionItemsChanged v3).
-- It is the item's, not its version's: SubscriptionItemUpdated sets it on every version of the item at
-- once, so the current period's item and a waiting one answer alike.
alter table subscription_items add column metadata jsonb not null default '{}';

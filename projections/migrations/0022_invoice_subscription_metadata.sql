-- A subscription invoice's parent.subscription_details.metadata: its subscription's metadata as the
-- projection had it when it wrote the finalized invoice (Stripe: "an immutable snapshot of the
-- subscription metadata at the time of invoice finalization"), so later SubscriptionUpdated facts
-- leave it alone. Null for one-off invoices. Invoices finalized before this column get their
-- subscription's metadata now: the nearest this projection knows.
alter table invoices add column subscription_metadata jsonb;
update invoices i set subscription_metadata = s.metadata from subscriptions s where s.id = i.subscription_id;

-- A subscription scheduled to cancel at period end ends when its final invoice (billing reason
-- subscription_cancel) is finalized: ended_ms is when it ended (Stripe's ended_at), canceled_ms when
-- the cancellation was asked for (Stripe's canceled_at: the latest cancel_at_period_end request).
alter table subscriptions add column ended_ms bigint;
update subscriptions set ended_ms = canceled_ms where status = 'canceled';
update subscriptions s set status = 'canceled', ended_ms = coalesce(s.ended_ms, i.period_end_ms)
  from invoices i where i.subscription_id = s.id and i.billing_reason = 'subscription_cancel';
-- A subscription's row may be written after its final invoice's (separate topics, a rebuild): it
-- looks its final invoice up when it is inserted.
create index invoices_subscription on invoices (subscription_id) where billing_reason = 'subscription_cancel';

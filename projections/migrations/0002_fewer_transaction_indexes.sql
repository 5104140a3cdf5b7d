-- Every credit balance transaction read names its customer (lists require it, a grant's ledger
-- is read with its customer), so the (customer_id, effective_at_ms) index serves them all; the
-- grant index only slowed the projector's merges (~30% of their time).
drop index if exists credit_balance_transactions_grant;

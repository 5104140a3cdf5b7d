-- Invoice lifecycle: one-off invoices (drafts of invoice items, billing_reason manual, no
-- subscription), paid and uncollectible invoices.
alter table invoices alter column subscription_id drop not null;
alter table invoices alter column finalized_ms drop not null;  -- null while a draft
alter table invoices add column created_ms bigint;
update invoices set created_ms = finalized_ms;
alter table invoices alter column created_ms set not null;
alter table invoices
  add column description text,
  add column metadata jsonb not null default '{}',
  add column auto_advance boolean not null default false,
  add column amount_paid_minor bigint not null default 0,
  add column paid_out_of_band boolean not null default false,
  add column paid_ms bigint,
  add column marked_uncollectible_ms bigint;

alter table invoice_lines alter column subscription_item_id drop not null;
alter table invoice_lines alter column price_id drop not null;
alter table invoice_lines add column invoice_item_id text, add column description text;

-- Invoice items: pending (invoice_id null), on a draft, or billed on a finalized one-off invoice.
create table invoice_items (
    id text primary key,
    customer_id text not null,
    invoice_id text,
    currency text not null,
    quantity numeric not null,
    unit_amount_decimal numeric not null,
    amount_minor bigint not null,
    price_id text,
    description text,
    metadata jsonb not null,
    created_ms bigint not null
);
create index invoice_items_customer on invoice_items (customer_id, created_ms);
create index invoice_items_invoice on invoice_items (invoice_id);

-- Products and prices can change (POST /v1/products/{id}, /v1/prices/{id}): ProductUpdated, PriceUpdated.
alter table products add column active boolean not null default true;
alter table products add column description text;
alter table products add column updated_ms bigint;
alter table prices add column active boolean not null default true;
alter table prices add column nickname text;
alter table prices add column lookup_key text;
alter table prices add column metadata jsonb not null default '{}';
alter table prices add column updated_ms bigint;
create index prices_lookup_key on prices (lookup_key) where lookup_key is not null;

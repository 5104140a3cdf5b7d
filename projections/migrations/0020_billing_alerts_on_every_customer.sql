-- A usage alert without a customer filter watches every customer of its meter: no customer_id.
alter table billing_alerts alter column customer_id drop not null;
create index billing_alerts_meter on billing_alerts (meter_id) where customer_id is null;

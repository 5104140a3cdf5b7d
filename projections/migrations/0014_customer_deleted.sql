-- DELETE /v1/customers/{id}: the customer row stays (its invoices and transactions refer to it), marked.
alter table customers add column deleted_ms bigint;

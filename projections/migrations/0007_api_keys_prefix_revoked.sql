-- Keys can be listed (by the first characters of the key, kept in the clear) and revoked.
alter table api_keys add column prefix text;
alter table api_keys add column revoked_ms bigint;

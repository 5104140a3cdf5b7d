-- API state (not a projection): v2 meter event sessions. A session's token authenticates
-- POST /v2/billing/meter_event_stream until expires_ms, in any API process; it is stored as a
-- sha256 hash, and dies with the secret key that created it.
create table meter_event_sessions (
    token_sha256 text primary key,
    id text not null unique,
    key_sha256 text not null,
    created_ms bigint not null,
    expires_ms bigint not null
);
create index meter_event_sessions_expires on meter_event_sessions (expires_ms);

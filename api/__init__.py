"""The Stripe-compatible HTTP API: validates commands, publishes them as facts, reads from Postgres."""

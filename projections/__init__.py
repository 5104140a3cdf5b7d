"""The projector: derived and input facts into Postgres, with offsets stored in the same transaction."""

"""Numbered SQL migrations (projections/migrations/NNNN_*.sql), applied in order at start.

Each file runs once, in its own transaction, recorded in schema_migrations. An advisory lock makes
concurrent starters (the API and the projector start together) wait for each other.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_ADVISORY_LOCK_ID = 0x64726177  # "draw"


def migration_files() -> list[Path]:
    """The migration files in the order they apply."""
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(database_url: str, schema: str = "public") -> list[str]:
    """Apply the migrations not yet applied to `schema` (created if missing); returns their names."""
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_ADVISORY_LOCK_ID,))
        try:
            conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(schema)))
            conn.execute("create table if not exists schema_migrations (name text primary key, applied_at timestamptz not null default now())")
            done = {row[0] for row in conn.execute("select name from schema_migrations")}
            for path in migration_files():
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("insert into schema_migrations (name) values (%s)", (path.name,))
                applied_now.append(path.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_ADVISORY_LOCK_ID,))
    return applied_now

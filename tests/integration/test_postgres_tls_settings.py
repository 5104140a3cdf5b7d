"""The PostgreSQL TLS settings reach the engine's connections (through effective_database_url,
whose query libpq reads): asked to require TLS, a connection gets it or is refused, never silently
plain. The test server may run with or without TLS; each case checks what libpq must do then."""

from __future__ import annotations

import psycopg
import pytest

from drawdown.settings import Settings


def server_has_tls(settings: Settings) -> bool:
    with psycopg.connect(settings.effective_database_url) as conn:
        return conn.execute("show ssl").fetchone()[0] == "on"


def test_sslmode_require_gets_tls_or_is_refused_through_the_engine_s_own_connections(settings: Settings) -> None:
    from projections.migrate import migrate

    required = settings.model_copy(update={"postgres_sslmode": "require"})
    assert "sslmode=require" in required.effective_database_url
    if server_has_tls(settings):
        migrate(required.effective_database_url)
        with psycopg.connect(required.effective_database_url) as conn:
            assert conn.pgconn.ssl_in_use
    else:
        with pytest.raises(psycopg.OperationalError, match="SSL"):
            migrate(required.effective_database_url)


def test_sslmode_disable_connects_in_the_clear(settings: Settings) -> None:
    plain = settings.model_copy(update={"postgres_sslmode": "disable"})
    with psycopg.connect(plain.effective_database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert not conn.pgconn.ssl_in_use

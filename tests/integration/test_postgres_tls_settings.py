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


# --- against a server that takes TLS connections only (deploy/local.py, PostgresTls) ---------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A PostgreSQL server of this module's own (own state folder, free port) with a certificate
    from a CA of the test's own (tests/tls.py), taking TLS connections only. It must start: a
    failure to start it is an error, never a skip. Yields (plain URL, CA, another CA)."""
    import os

    from deploy import local
    from tests.integration.streams.conftest import free_port
    from tests.tls import certificate_authority, issue

    home = tmp_path_factory.mktemp("postgres-tls")
    os.chmod(home, 0o755)  # the server's OS user reads its certificate from here and owns its data below
    ca = certificate_authority(home / "pki")
    other_ca = certificate_authority(home / "other-pki")
    server = issue(home / "pki", "postgres", ca)
    for path in (home / "pki", server.certificate, server.key):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # copied by us, as root, into its data folder
    settings = Settings(state_dir=home / "state", postgres_port=free_port(), database_url="")  # (not the suite's)
    url = local.start_postgres(settings, tls=local.PostgresTls(certificate=server.certificate, key=server.key))
    try:
        yield url, ca.certificate, other_ca.certificate
    finally:
        local.stop_postgres(settings)


def test_verify_full_with_the_server_s_ca_migrates_and_reads_over_tls(tls_server) -> None:
    from projections.migrate import migrate

    url, ca, _ = tls_server
    verified = Settings(database_url=url, postgres_sslmode="verify-full", postgres_sslrootcert=ca)
    assert migrate(verified.effective_database_url)  # the engine's own migrations, over TLS
    with psycopg.connect(verified.effective_database_url) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True
        assert conn.execute("select count(*) from invoices").fetchone()[0] == 0


def test_a_server_certificate_from_another_ca_is_refused(tls_server) -> None:
    url, _, other_ca = tls_server
    untrusting = Settings(database_url=url, postgres_sslmode="verify-full", postgres_sslrootcert=other_ca)
    # (both test CAs share a name: OpenSSL reports the signature that does not verify)
    with pytest.raises(psycopg.OperationalError, match="SSL error|certificate verify failed"):
        psycopg.connect(untrusting.effective_database_url, connect_timeout=10)


def test_a_plain_connection_is_refused_by_a_server_that_takes_tls_only(tls_server) -> None:
    url, _, _ = tls_server
    plain = Settings(database_url=url, postgres_sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(plain.effective_database_url, connect_timeout=10)

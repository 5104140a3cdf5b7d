"""The local PostgreSQL that `make up` starts: from a clone inside a private folder, and with
password authentication."""

from __future__ import annotations

import os
import stat

import psycopg
import pytest

from deploy import local
from drawdown.settings import Settings


def test_postgres_starts_from_a_clone_inside_a_private_folder_and_status_says_where_its_log_is(own_postgres):
    url = local.start_postgres(own_postgres)

    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    log = local.postgres_log_file(own_postgres)
    assert "database system is ready to accept connections" in log.read_text()
    status = "\n".join(local.status_lines(own_postgres))
    assert f"log: {log}" in status
    if os.geteuid() == 0:  # the server runs as another user, which cannot enter the private folder
        assert not log.is_relative_to(own_postgres.state_dir)


def hba_methods(settings: Settings) -> set[str]:
    lines = (local.postgres_home(settings) / "data" / "pg_hba.conf").read_text().splitlines()
    return {line.split()[-1] for line in lines if line.strip() and not line.lstrip().startswith("#")}


def passwordless(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, _, where = rest.partition("@")
    return f"{scheme}://{credentials.split(':')[0]}@{where}"


def assert_password_authentication(settings: Settings, url: str) -> None:
    assert hba_methods(settings) == {"scram-sha-256"}
    password_file = settings.state_dir / "postgres-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().strip() in url
    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(passwordless(url), connect_timeout=5).close()
    status = "\n".join(local.status_lines(settings))
    assert password_file.read_text().strip() not in status


def test_a_new_cluster_asks_for_a_password_kept_in_the_state_folder(own_postgres):
    url = local.start_postgres(own_postgres)

    assert_password_authentication(own_postgres, url)


def test_a_cluster_created_with_trust_is_switched_to_password_authentication_by_up(own_postgres):
    # A cluster as earlier versions created it: initdb --auth=trust, no password.
    bin_dir = local.ensure_postgres_installed()
    home = local.postgres_home(own_postgres)
    user = local.postgres_os_user(own_postgres)
    result = local.run_as(user, [str(bin_dir / "initdb"), "-D", str(home / "data"), "-U", "drawdown",
                                 "--auth=trust", "--encoding=UTF8", "--no-instructions"], cwd="/")
    assert result.returncode == 0, result.stderr
    assert hba_methods(own_postgres) == {"trust"}

    url = local.start_postgres(own_postgres)

    assert_password_authentication(own_postgres, url)
    # and again, on the running server (a second `make up`)
    assert local.start_postgres(own_postgres) == url
    assert_password_authentication(own_postgres, url)

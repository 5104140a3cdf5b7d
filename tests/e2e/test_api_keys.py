"""API keys: listed and revoked from the command line; a revoked key is refused at once by a
running API (even one that had just verified it); the secret never reaches a log or a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from api.auth import create_key, key_prefix
from drawdown.settings import PROJECT_ROOT
from tests.e2e.test_api_killed_mid_command import ApiProcess, own_settings  # noqa: F401 - a fixture


def drawdown(database_url: str, *argv: str, state_dir: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=database_url, PYTHONPATH=str(PROJECT_ROOT))
    if state_dir:
        env["DRAWDOWN_STATE_DIR"] = state_dir
    return subprocess.run([sys.executable, "-m", "drawdown", *argv], env=env, capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)


def test_a_listed_key_revoked_by_its_prefix_is_refused_at_once(client, engine_settings):
    database_url = engine_settings.effective_database_url
    key = create_key(database_url)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/customers", headers=headers).status_code == 200  # verified, and now cached

    listed = drawdown(database_url, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if key_prefix(key) in line]
    assert key not in listed.stdout
    assert line.split()[1:3] == [f"{key_prefix(key)}...", "secret"]
    assert line.rstrip().endswith("-")  # not revoked

    revoked = drawdown(database_url, "keys", "revoke", key_prefix(key))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout

    # Far sooner than the 30 s the API caches a verified key: the revocation reaches it.
    deadline = time.monotonic() + 5
    while (answer := client.get("/v1/customers", headers=headers)).status_code != 401:
        assert time.monotonic() < deadline, f"revoked key still accepted: {answer.status_code}"
        time.sleep(0.05)
    assert answer.json()["error"]["type"] == "invalid_request_error"
    [line] = [line for line in drawdown(database_url, "keys", "list").stdout.splitlines() if key_prefix(key) in line]
    assert not line.rstrip().endswith("-")  # its revocation time
    assert client.get("/v1/customers").status_code == 200  # other keys still work


def test_revoking_an_unknown_or_ambiguous_key_says_so(engine_settings):
    answer = drawdown(engine_settings.effective_database_url, "keys", "revoke", "sk_test_nosuchkeyzz")
    assert answer.returncode == 1
    assert "no key matches" in answer.stderr


def test_the_development_key_is_never_in_the_api_log_nor_in_status(own_settings, tmp_path):  # noqa: F811
    api = ApiProcess(own_settings, tmp_path)
    api.start()
    try:
        key = (tmp_path / "dev-api-key").read_text().strip()
        assert (tmp_path / "dev-api-key").stat().st_mode & 0o077 == 0
        assert httpx.get(api.base + "/v1/customers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(api.base + "/v1/customers", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    finally:
        api.kill()
    log = api.log_path.read_text()
    assert key not in log
    assert f"development key {key_prefix(key)}..." in log
    status = drawdown(own_settings.effective_database_url, "status", state_dir=str(tmp_path))
    assert key not in status.stdout + status.stderr
    assert f"{key_prefix(key)}... (the whole key is in {tmp_path / 'dev-api-key'}, mode 0600)" in status.stdout

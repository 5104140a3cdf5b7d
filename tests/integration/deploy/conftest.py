"""A PostgreSQL server of the test's own, made by deploy/local.py as `make up` makes it: never the
shared one, so a test may stop, kill and restart it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import local
from drawdown.settings import Settings
from tests.e2e.conftest import free_port


def private_clone(tmp_path: Path) -> Path:
    """A clone's state folder inside a 0700 home folder (as root's on Debian)."""
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o700)
    return home / "drawdown" / ".state"


@pytest.fixture()
def own_postgres(tmp_path: Path) -> Iterator[Settings]:
    """Settings whose local PostgreSQL (state in a private folder, a free port) is this test's."""
    settings = Settings(state_dir=private_clone(tmp_path), postgres_port=free_port(), database_url="")
    try:
        yield settings
    finally:
        local.reset(settings)

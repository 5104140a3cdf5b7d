"""Secret API keys: shown once, stored as sha256 hashes. Restricted read-only keys can only GET."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SECRET_PREFIX = "sk_test_"
READ_ONLY_PREFIX = "rk_test_"
_CACHE_SECONDS = 30.0


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(read_only: bool = False) -> str:
    return (READ_ONLY_PREFIX if read_only else SECRET_PREFIX) + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")


def store_key(database_url: str, key: str, read_only: bool, schema: str = "public") -> None:
    """Record a key's hash (idempotent)."""
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        conn.execute("insert into api_keys (key_sha256, read_only, created_ms) values (%s, %s, %s)"
                     " on conflict do nothing", (key_sha256(key), read_only, int(time.time() * 1000)))


def create_key(database_url: str, read_only: bool = False, schema: str = "public") -> str:
    """A new key (the only time its plain text exists outside the caller)."""
    key = new_key(read_only)
    store_key(database_url, key, read_only, schema)
    return key


def ensure_dev_key(database_url: str, path: Path) -> str:
    """The development key in `path`: created on first start, re-registered if the database is new."""
    if path.exists():
        key = path.read_text().strip()
        store_key(database_url, key, read_only=False)
        return key
    key = create_key(database_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


@dataclass(frozen=True)
class Caller:
    key_sha256: str
    read_only: bool


class KeyRing:
    """Looks keys up by hash, caching answers briefly so each request does not hit the database."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[Caller | None, float]] = {}

    def cached(self, key: str) -> Caller | None:
        """The caller if its key was verified recently (no database: safe on the event loop)."""
        cached = self._cache.get(key_sha256(key))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def caller(self, key: str) -> Caller | None:
        digest = key_sha256(key)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        with self._pool.connection() as conn:
            row = conn.execute("select read_only from api_keys where key_sha256 = %s", (digest,)).fetchone()
        caller = None if row is None else Caller(digest, row["read_only"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (caller, time.monotonic() + (_CACHE_SECONDS if caller else 1.0))
        return caller

"""Secret API keys: shown once, stored as sha256 hashes (and their first characters, to recognise
them in a list). Restricted read-only keys can only GET. A revoked key is refused at once: the API
listens for revocations (NOTIFY) and forgets what it had cached."""

from __future__ import annotations

import hashlib
import os
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SECRET_PREFIX = "sk_test_"
READ_ONLY_PREFIX = "rk_test_"
SESSION_PREFIX = "ek_test_"  # a v2 meter event session's authentication token
METER_EVENT_SESSION_MS = 15 * 60 * 1000  # Stripe: a session lasts 15 minutes
_CACHE_SECONDS = 30.0
SHOWN_CHARACTERS = 12  # "sk_test_" and 4 random characters: enough to recognise, far from enough to use
REVOKED_CHANNEL = "drawdown_api_key_revoked"

log = logging.getLogger("drawdown.api.auth")


def key_prefix(key: str) -> str:
    """What may be shown of a key (logs, status, lists): e.g. "sk_test_CGyA"."""
    return key[:SHOWN_CHARACTERS]


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(read_only: bool = False) -> str:
    return (READ_ONLY_PREFIX if read_only else SECRET_PREFIX) + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")


def store_key(database_url: str, key: str, read_only: bool, schema: str = "public") -> None:
    """Record a key's hash (idempotent)."""
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        conn.execute("insert into api_keys (key_sha256, read_only, created_ms, prefix) values (%s, %s, %s, %s)"
                     " on conflict (key_sha256) do update set prefix = excluded.prefix where api_keys.prefix is null",
                     (key_sha256(key), read_only, int(time.time() * 1000), key_prefix(key)))


def is_revoked(database_url: str, key: str, schema: str = "public") -> bool:
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        row = conn.execute("select revoked_ms from api_keys where key_sha256 = %s", (key_sha256(key),)).fetchone()
    return row is not None and row[0] is not None


def list_keys(database_url: str, schema: str = "public") -> list[dict[str, Any]]:
    """Every key, newest first: id (start of its hash), prefix, mode, created_ms, revoked_ms."""
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, options=f"-c search_path={schema}", row_factory=dict_row) as conn:
        return conn.execute("select left(key_sha256, 12) as id, prefix, read_only, created_ms, revoked_ms"
                            " from api_keys order by created_ms desc, key_sha256").fetchall()


class KeyNotFound(LookupError):
    pass


def revoke_key(database_url: str, reference: str, schema: str = "public") -> dict[str, Any]:
    """Revoke the one key whose id or shown prefix starts with `reference` (or the key itself);
    running APIs are told at once. Returns the key's row as list_keys shows it."""
    reference = reference.strip().rstrip(".")
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        matches = conn.execute(
            "select key_sha256 from api_keys where key_sha256 = %s or key_sha256 like %s or prefix like %s",
            (key_sha256(reference), reference.lower() + "%", reference[:SHOWN_CHARACTERS] + "%")).fetchall()
        if len(reference) < 4 or not matches:
            raise KeyNotFound(f"no key matches {reference!r}; `drawdown keys list` shows ids and prefixes")
        if len(matches) > 1:
            raise KeyNotFound(f"{len(matches)} keys match {reference!r}; give more of its id")
        conn.execute("update api_keys set revoked_ms = coalesce(revoked_ms, %s) where key_sha256 = %s",
                     (int(time.time() * 1000), matches[0][0]))
        conn.execute(f"notify {REVOKED_CHANNEL}")  # delivered when this transaction commits
    return next(row for row in list_keys(database_url, schema) if matches[0][0].startswith(row["id"]))


def create_key(database_url: str, read_only: bool = False, schema: str = "public") -> str:
    """A new key (the only time its plain text exists outside the caller)."""
    key = new_key(read_only)
    store_key(database_url, key, read_only, schema)
    return key


def ensure_dev_key(database_url: str, path: Path) -> str:
    """The development key in `path`: created on first start, re-registered if the database is new,
    replaced if it was revoked."""
    if path.exists():
        key = path.read_text().strip()
        store_key(database_url, key, read_only=False)
        if not is_revoked(database_url, key):
            return key
    key = create_key(database_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:  # never readable by others
        out.write(key + "\n")
    return key


@dataclass(frozen=True)
class Caller:
    key_sha256: str
    read_only: bool
    # A meter event session's token (not a key): until when it authenticates the v2 stream.
    session_expires_ms: int | None = None


def create_meter_event_session(pool: Any, caller: Caller, now_ms: int) -> dict[str, Any]:
    """A new v2 meter event session of the caller's secret key: its token is returned once and
    stored as a hash, so any API process accepts it until it expires (or the key is revoked)."""
    from api.ids import new_id

    token = SESSION_PREFIX + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
    session = {"id": new_id("mes"), "authentication_token": token, "created_ms": now_ms,
               "expires_ms": now_ms + METER_EVENT_SESSION_MS}
    with pool.connection() as conn:
        conn.execute("delete from meter_event_sessions where expires_ms < %s", (now_ms - 86_400_000,))
        conn.execute("insert into meter_event_sessions (token_sha256, id, key_sha256, created_ms, expires_ms)"
                     " values (%s, %s, %s, %s, %s)", (key_sha256(token), session["id"], caller.key_sha256, now_ms,
                                                     session["expires_ms"]))
    return session


class KeyRing:
    """Looks keys up by hash, caching answers briefly so each request does not hit the database.
    A thread LISTENs for revocations and empties the cache on each one (and on every reconnect,
    for those it may have missed); it ends when the pool is closed."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[Caller | None, float]] = {}
        self._generation = 0  # bumped by each forget(): an answer read before it is not cached
        listener = threading.Thread(target=self._listen_for_revocations, name="api-key-revocations", daemon=True)
        listener.start()

    def cached(self, key: str) -> Caller | None:
        """The caller if its key was verified recently (no database: safe on the event loop)."""
        cached = self._cache.get(key_sha256(key))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def caller(self, key: str) -> Caller | None:
        if key.startswith(SESSION_PREFIX):
            return self._session_caller(key_sha256(key))
        return self.caller_by_sha256(key_sha256(key))

    def _session_caller(self, digest: str) -> Caller | None:
        """The caller of a meter event session's token (expired or not: the caller checks), while
        the key that created it is not revoked."""
        generation = self._generation
        with self._pool.connection() as conn:
            row = conn.execute("select s.expires_ms from meter_event_sessions s join api_keys k"
                               " on k.key_sha256 = s.key_sha256 where s.token_sha256 = %s and k.revoked_ms is null",
                               (digest,)).fetchone()
        caller = None if row is None else Caller(digest, False, session_expires_ms=row["expires_ms"])
        if generation == self._generation:
            self._cache[digest] = (caller, time.monotonic() + (_CACHE_SECONDS if caller else 1.0))
        return caller

    def caller_by_sha256(self, digest: str, fresh: bool = False) -> Caller | None:
        """The caller of the key with this hash (the dashboard's session holds only the hash).
        fresh skips the cache: the dashboard asks the database on every page, so a revocation ends
        its sessions at once rather than when the NOTIFY reaches this process."""
        cached = None if fresh else self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        generation = self._generation
        with self._pool.connection() as conn:
            row = conn.execute("select read_only from api_keys where key_sha256 = %s and revoked_ms is null",
                               (digest,)).fetchone()
        caller = None if row is None else Caller(digest, row["read_only"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        if generation == self._generation:
            self._cache[digest] = (caller, time.monotonic() + (_CACHE_SECONDS if caller else 1.0))
        return caller

    def forget(self) -> None:
        self._generation += 1
        self._cache = {}

    def _listen_for_revocations(self) -> None:
        conninfo = getattr(self._pool, "conninfo", None)
        if conninfo is None:  # a stand-in pool (tests): nothing to listen to
            return
        while not self._pool.closed:
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"listen {REVOKED_CHANNEL}")
                    self.forget()  # revocations made while we were not listening
                    while not self._pool.closed:
                        for _ in conn.notifies(timeout=1.0):
                            self.forget()
            except psycopg.Error as error:
                log.warning("not listening for key revocations (%s); retrying", str(error).splitlines()[0] if str(error) else error)
                time.sleep(1.0)

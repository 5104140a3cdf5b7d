"""Idempotency-Key: the first response for a key is stored in PostgreSQL and replayed for 24 hours.

A request claims its key by inserting a row without a response; a concurrent request with the
same key finds the claim and gets 409; the same key with different parameters gets 400
idempotency_error. Server errors (5xx) release the claim so that a retry runs again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from api.errors import ApiError

REPLAY_WINDOW_MS = 24 * 3600 * 1000
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes


def request_sha256(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def claim(pool: Any, key_sha256: str, idempotency_key: str, fingerprint: str) -> StoredResponse | None:
    """Claim the key for this request (None: go ahead), or the stored response to replay."""
    if len(idempotency_key) > MAX_KEY_LENGTH:
        raise ApiError(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.", type="idempotency_error",
                       code="idempotency_key_too_long")
    now = int(time.time() * 1000)
    with pool.connection() as conn:
        with conn.transaction():
            conn.execute("delete from idempotency_keys where key_sha256 = %s and idempotency_key = %s"
                         " and created_ms < %s", (key_sha256, idempotency_key, now - REPLAY_WINDOW_MS))
            inserted = conn.execute(
                "insert into idempotency_keys (key_sha256, idempotency_key, request_sha256, created_ms)"
                " values (%s, %s, %s, %s) on conflict do nothing returning created_ms",
                (key_sha256, idempotency_key, fingerprint, now)).fetchone()
            if inserted is not None:
                return None
            row = conn.execute("select request_sha256, status_code, response_body from idempotency_keys"
                               " where key_sha256 = %s and idempotency_key = %s",
                               (key_sha256, idempotency_key)).fetchone()
    if row is None:  # expired and deleted by a concurrent request: treat as a conflict, the client retries
        raise ApiError("A request with this Idempotency-Key is being processed.", status=409,
                       type="idempotency_error", code="idempotency_key_in_use")
    if row["request_sha256"] != fingerprint:
        raise ApiError("Keys for idempotent requests can only be used with the same parameters they were first "
                       f"used with. Try using a key other than '{idempotency_key}' if you meant to execute a "
                       "different request.", type="idempotency_error", code="idempotency_key_reused")
    if row["status_code"] is None:
        raise ApiError("A request with this Idempotency-Key is being processed.", status=409,
                       type="idempotency_error", code="idempotency_key_in_use")
    return StoredResponse(row["status_code"], bytes(row["response_body"]))


def complete(pool: Any, key_sha256: str, idempotency_key: str, status_code: int, body: bytes) -> None:
    """Store the response to replay, or release the claim after a server error."""
    with pool.connection() as conn:
        if status_code >= 500:
            conn.execute("delete from idempotency_keys where key_sha256 = %s and idempotency_key = %s"
                         " and status_code is null", (key_sha256, idempotency_key))
        else:
            conn.execute("update idempotency_keys set status_code = %s, response_body = %s"
                         " where key_sha256 = %s and idempotency_key = %s",
                         (status_code, body, key_sha256, idempotency_key))

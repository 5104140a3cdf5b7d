"""Idempotency-Key: a command takes effect once, whatever the client retries.

Stripe's contract, made safe for a command whose fact may already be in Kafka when the answer is
lost (a 503 while the projection lags, an ack that timed out, an API process killed mid-request):

- A request claims its key by inserting a row without a response, holding it for a lease (Settings.idempotency_lease_ms).
  A concurrent request with the same key gets 409 (the SDKs retry on 409); the same key with other
  parameters gets 400 idempotency_error.
- While a key is claimed, every new object id (api.ids.new_id) is derived from the caller and the
  key, so a retry builds the very same facts: re-publishing one is harmless, because every
  consumer keeps the first fact of an id (billing.customer, billing.catalog, the projection).
- A 2xx, or a 4xx after something was published, is stored and replayed for 24 hours. A 4xx before
  anything was published is not stored (Stripe: a request that failed validation is not saved).
- A 5xx, or a process that died, leaves the claim; once its lease has run out a retry RESUMES it:
  the handler runs again with the same ids, and when it refuses because the first attempt already
  took effect ("already voided", say), the object is answered as it now is (see api.app.route).
"""

from __future__ import annotations

import contextvars
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError

REPLAY_WINDOW_MS = 24 * 3600 * 1000
MAX_KEY_LENGTH = 255
# Settings.idempotency_lease_ms: longer than a handler can take (publish ack 15 s + read-your-writes
# wait), so a claim older than that belongs to a request that died or gave up: a retry may resume it.
DEFAULT_LEASE_MS = 30_000


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes


@dataclass
class Claim:
    """The request's hold on its Idempotency-Key, visible to the handler through `current()`."""

    key_sha256: str
    idempotency_key: str
    resumed: bool  # an earlier attempt may have taken effect
    published: bool = False  # this attempt has handed a fact to Kafka
    derived: dict[str, int] = field(default_factory=dict)  # ids derived so far, per prefix
    first_id: str | None = None

    def derive_id(self, prefix: str) -> str:
        """The n-th id with `prefix` of this request: the same on every attempt."""
        n = self.derived.get(prefix, 0)
        self.derived[prefix] = n + 1
        object_id = self.nth_id(prefix, n)
        if self.first_id is None:
            self.first_id = object_id
        return object_id

    def nth_id(self, prefix: str, n: int = 0) -> str:
        digest = hashlib.sha256(f"{self.key_sha256}\0{self.idempotency_key}\0{prefix}\0{n}".encode()).digest()
        return f"{prefix}_" + _base62(int.from_bytes(digest[:18], "big"), 24)


_current: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("idempotency_claim", default=None)


def current() -> Claim | None:
    """The claim of the request being handled (None without an Idempotency-Key)."""
    return _current.get()


def bind(claim: Claim | None) -> contextvars.Token:
    return _current.set(claim)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def note_published() -> None:
    """Called before a command's facts go to Kafka: from here on the request has (maybe) taken effect."""
    claim = _current.get()
    if claim is not None:
        claim.published = True


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def request_sha256(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _in_use(idempotency_key: str) -> ApiError:
    return ApiError(f"A request with the Idempotency-Key '{idempotency_key}' is being processed; retry it "
                    "in a moment.", status=409, type="idempotency_error", code="idempotency_key_in_use")


def claim(pool: Any, key_sha256: str, idempotency_key: str, fingerprint: str,
          lease_ms: int = DEFAULT_LEASE_MS) -> StoredResponse | Claim:
    """Claim the key for this request (a Claim: go ahead), or the stored response to replay."""
    if len(idempotency_key) > MAX_KEY_LENGTH:
        raise ApiError(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.", type="idempotency_error",
                       code="idempotency_key_too_long")
    now = int(time.time() * 1000)
    with pool.connection() as conn:
        with conn.transaction():
            conn.execute("delete from idempotency_keys where key_sha256 = %s and idempotency_key = %s"
                         " and created_ms < %s", (key_sha256, idempotency_key, now - REPLAY_WINDOW_MS))
            inserted = conn.execute(
                "insert into idempotency_keys (key_sha256, idempotency_key, request_sha256, created_ms, lease_until_ms)"
                " values (%s, %s, %s, %s, %s) on conflict do nothing returning created_ms",
                (key_sha256, idempotency_key, fingerprint, now, now + lease_ms)).fetchone()
            if inserted is not None:
                return Claim(key_sha256, idempotency_key, resumed=False)
            row = conn.execute("select request_sha256, status_code, response_body, lease_until_ms"
                               " from idempotency_keys where key_sha256 = %s and idempotency_key = %s for update",
                               (key_sha256, idempotency_key)).fetchone()
            if row is None:  # expired and deleted by a concurrent request: the client retries
                raise _in_use(idempotency_key)
            if row["request_sha256"] != fingerprint:
                raise ApiError("Keys for idempotent requests can only be used with the same parameters they were "
                               f"first used with. Try using a key other than '{idempotency_key}' if you meant to "
                               "execute a different request.", type="idempotency_error",
                               code="idempotency_key_reused")
            if row["status_code"] is not None:
                return StoredResponse(row["status_code"], bytes(row["response_body"]))
            if row["lease_until_ms"] > now:
                raise _in_use(idempotency_key)
            # The earlier attempt failed after it may have published, or died: resume it.
            conn.execute("update idempotency_keys set lease_until_ms = %s where key_sha256 = %s"
                         " and idempotency_key = %s", (now + lease_ms, key_sha256, idempotency_key))
    return Claim(key_sha256, idempotency_key, resumed=True)


def complete(pool: Any, held: Claim, status_code: int, body: bytes) -> None:
    """Store the response to replay, release the claim, or leave it to be resumed (see module doc)."""
    took_effect = held.published or held.resumed
    with pool.connection() as conn:
        if status_code >= 500 and took_effect:  # the outcome is unknown: a retry may resume at once
            conn.execute("update idempotency_keys set lease_until_ms = 0 where key_sha256 = %s"
                         " and idempotency_key = %s and status_code is null", (held.key_sha256, held.idempotency_key))
        elif status_code >= 500 or (status_code >= 400 and not took_effect):
            conn.execute("delete from idempotency_keys where key_sha256 = %s and idempotency_key = %s"
                         " and status_code is null", (held.key_sha256, held.idempotency_key))
        else:
            conn.execute("update idempotency_keys set status_code = %s, response_body = %s"
                         " where key_sha256 = %s and idempotency_key = %s",
                         (status_code, body, held.key_sha256, held.idempotency_key))

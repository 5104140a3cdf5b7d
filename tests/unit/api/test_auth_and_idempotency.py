"""API keys and idempotency fingerprints (no services)."""

from __future__ import annotations

from api.auth import READ_ONLY_PREFIX, SECRET_PREFIX, key_sha256, new_key
from api.idempotency import request_sha256


def test_secret_and_read_only_keys_carry_stripe_like_prefixes_and_are_unique():
    secret, restricted = new_key(), new_key(read_only=True)
    assert secret.startswith(SECRET_PREFIX) and restricted.startswith(READ_ONLY_PREFIX)
    assert len({new_key() for _ in range(100)}) == 100


def test_keys_are_stored_as_sha256_hex_never_in_plain_text():
    key = new_key()
    digest = key_sha256(key)
    assert len(digest) == 64 and key not in digest


def test_the_request_fingerprint_changes_with_any_part_and_cannot_be_shifted_between_parts():
    base = request_sha256("POST", "/v1/customers", "", b"name=a")
    assert base == request_sha256("POST", "/v1/customers", "", b"name=a")
    assert base != request_sha256("POST", "/v1/customers", "", b"name=b")
    assert base != request_sha256("DELETE", "/v1/customers", "", b"name=a")
    assert request_sha256("POST", "/v1/a", "b", b"") != request_sha256("POST", "/v1/ab", "", b"")

"""New object ids with Stripe's prefixes: prefix + 24 alphanumerics.

Random, unless the request holds an Idempotency-Key: then derived from the caller and the key, so
that a retried command builds the same objects and its facts are the same facts (api.idempotency).
"""

from __future__ import annotations

import secrets
import string

from api import idempotency

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """e.g. new_id("cus") -> "cus_Qx3...": unguessable, so clients cannot collide by accident."""
    claim = idempotency.current()
    if claim is not None:
        return claim.derive_id(prefix)
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))

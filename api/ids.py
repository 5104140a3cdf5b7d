"""New object ids with Stripe's prefixes: prefix + 24 random alphanumerics."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """e.g. new_id("cus") -> "cus_Qx3...": unguessable, so clients cannot collide by accident."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))

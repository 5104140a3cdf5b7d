"""The dashboard's login session: a signed cookie that holds the key's sha256 (never the key), whether
it is read-only, a CSRF token and an expiry. HMAC-SHA256 over the payload with a secret kept in the
state folder, so that sessions survive an API restart; the key itself is re-checked on every request,
so a revoked key logs its sessions out at once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from drawdown.settings import Settings

COOKIE_NAME = "drawdown_session"
SESSION_MAX_AGE_S = 12 * 3600
SECRET_FILE = "dashboard-session-secret"


@dataclass(frozen=True)
class Session:
    key_sha256: str
    key_prefix: str  # what may be shown of the key (api.auth.key_prefix)
    read_only: bool
    csrf_token: str
    expires_at_s: int


def session_secret(settings: Settings) -> bytes:
    """The signing secret: created once in the state folder (mode 0600); a process that cannot write
    there gets a random one (its sessions end with it)."""
    path: Path = settings.state_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    secret = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secret.hex() + "\n")
    except FileExistsError:  # another process made it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    except OSError:
        pass
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session(key_sha256: str, key_prefix: str, read_only: bool, now_s: int) -> Session:
    return Session(key_sha256=key_sha256, key_prefix=key_prefix, read_only=read_only,
                   csrf_token=secrets.token_urlsafe(24), expires_at_s=now_s + SESSION_MAX_AGE_S)


def encode(session: Session, secret: bytes) -> str:
    payload = _b64(json.dumps({"k": session.key_sha256, "p": session.key_prefix, "ro": session.read_only,
                               "csrf": session.csrf_token, "exp": session.expires_at_s},
                              separators=(",", ":")).encode())
    return payload + "." + _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def decode(cookie: str | None, secret: bytes, now_s: int) -> Session | None:
    """The session in a cookie, or None when it is absent, forged, malformed or expired."""
    if not cookie or cookie.count(".") != 1 or len(cookie) > 1000:
        return None
    payload, signature = cookie.split(".")
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = Session(key_sha256=str(data["k"]), key_prefix=str(data["p"]), read_only=bool(data["ro"]),
                          csrf_token=str(data["csrf"]), expires_at_s=int(data["exp"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires_at_s > now_s else None


def csrf_matches(session: Session, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(session.csrf_token.encode(), submitted.encode())

"""CSRF tokens of the dashboard: HMAC-SHA256 of the request's cookie seed under the secret key.

The seed is the session token for a signed-in browser and an anonymous random cookie before
sign-in (so the sign-in form is protected too). A forged cross-site form cannot read either
cookie, hence cannot compute the token; every POST must carry it (form field `csrf_token` or
header `X-CSRF-Token`). The key is `FOVEAL_DASHBOARD_SECRET_KEY`, else a random key created once
in `<home>/dashboard/secret_key` (mode 0600) so restarts keep open forms valid.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from foveal.settings import Settings

KEY_FILE = Path("dashboard") / "secret_key"


def secret_key(settings: Settings) -> bytes:
    """The configured key, or the one kept under the home directory (created on first use)."""
    if settings.dashboard_secret_key is not None:
        return settings.dashboard_secret_key.get_secret_value().encode()
    path = settings.home_dir / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        os.replace(temp, path)  # two processes racing both end with one complete key
    return path.read_text().strip().encode()


def token_for(key: bytes, seed: str) -> str:
    return hmac.new(key, b"csrf:" + seed.encode(), hashlib.sha256).hexdigest()


def valid(key: bytes, seed: str | None, given: str | None) -> bool:
    if not seed or not given:
        return False
    return hmac.compare_digest(token_for(key, seed), given)

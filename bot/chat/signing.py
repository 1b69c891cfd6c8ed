"""HMAC-SHA256 signatures for the generic webhook.

The signature lets a receiver prove a request came from us and was not altered;
it covers the exact body bytes, so receivers must verify before parsing JSON.
Replays can be detected by receivers through ``event_id`` / ``occurred_at``.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Tunnelwarden-Signature"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """Header value for ``body``: ``sha256=<lowercase hex HMAC-SHA256>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{_PREFIX}{digest}"


def verify(secret: str, body: bytes, header_value: str) -> bool:
    """Constant-time check of a signature header (for receivers and tests)."""
    if not header_value.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body), header_value)

"""Authenticate inbound chat requests (Slack, Discord, Teams) before anything parses them.

Every check works on the **raw body bytes** exactly as received (signatures cover
bytes, so verify first, parse later) and on a header mapping; lookups are
case-insensitive, so an aiohttp ``request.headers`` or a plain ``dict`` both work.
The clock is injectable (``now=``: seconds since the epoch, or a zero-argument
callable returning them), which is how Slack's 2018 example request still verifies.

A check either returns a :class:`Verified` or raises :class:`ChatAuthError` whose
``reason`` is one short machine word (``http_status`` gives the answer to send):

=================  =====  ============================================================
reason             HTTP   meaning
=================  =====  ============================================================
``too_large``      413    the body is over the size cap (checked before any crypto)
``missing_header`` 401    a required header is absent or unusable (not a number, ...)
``stale``          401    the signed timestamp is outside the allowed window
``bad_signature``  401    the signature does not match
``replay``         401    this message id was accepted before
=================  =====  ============================================================

Schemes (each pinned by tests):

- **Slack v0**: ``X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:{ts}:{body}")>``,
  ``X-Slack-Request-Timestamp`` within 5 minutes either way.
- **Discord**: ``X-Signature-Ed25519`` (hex) over ``X-Signature-Timestamp`` + body, checked
  with the application's hex public key; Discord documents no window, we enforce one.
- **Teams outgoing webhook**: ``Authorization: HMAC <base64 HMAC-SHA256(base64-decoded
  security token, body)>``. The scheme has no timestamp, so a replay is only caught by
  deduplicating the activity id: :func:`check_replay` with an async "seen before?" callable
  (Redis ``SET key 1 NX EX ttl`` in production, :class:`MemorySeenBefore` in tests).

Secrets never appear in exception messages, ``repr`` or logs from this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BODY",
    "DISCORD_SIGNATURE_HEADER",
    "DISCORD_TIMESTAMP_HEADER",
    "SLACK_SIGNATURE_HEADER",
    "SLACK_TIMESTAMP_HEADER",
    "TEAMS_AUTH_HEADER",
    "AuthReason",
    "ChatAuthError",
    "Clock",
    "MemorySeenBefore",
    "Platform",
    "SeenBefore",
    "Verified",
    "check_content_length",
    "check_replay",
    "check_size",
    "load_discord_public_key",
    "sign_slack",
    "sign_teams",
    "verify_discord",
    "verify_slack",
    "verify_teams",
]

AuthReason = Literal["stale", "bad_signature", "missing_header", "too_large", "replay"]
Platform = Literal["slack", "discord", "teams"]
Clock = Callable[[], float]
SeenBefore = Callable[[str], Awaitable[bool]]
"""``await seen_before(key)`` records ``key`` and returns True if it was already recorded.

It must test and record in one atomic step (Redis ``SET key 1 NX EX ttl`` returns None
when the key existed), or two concurrent deliveries of one message could both pass.
"""

DEFAULT_MAX_AGE = 300.0  # seconds; Slack's documented window, used for Discord as well
DEFAULT_MAX_BODY = 256 * 1024  # bytes; interaction payloads carry whole messages/views

SLACK_SIGNATURE_HEADER = "X-Slack-Signature"
SLACK_TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
DISCORD_SIGNATURE_HEADER = "X-Signature-Ed25519"
DISCORD_TIMESTAMP_HEADER = "X-Signature-Timestamp"
TEAMS_AUTH_HEADER = "Authorization"

_SLACK_VERSION = "v0"
_REASONS: frozenset[str] = frozenset(get_args(AuthReason))


class ChatAuthError(Exception):
    """An inbound chat request failed authentication; ``reason`` is one short word.

    The message is the reason alone: nothing from the request or the secrets.
    """

    def __init__(self, reason: AuthReason) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown chat auth reason {reason!r}")
        super().__init__(reason)
        self.reason: AuthReason = reason

    @property
    def http_status(self) -> int:
        """413 for an oversized body, otherwise 401 (Discord requires 401 for bad signatures)."""
        return 413 if self.reason == "too_large" else 401

    def __repr__(self) -> str:
        return f"ChatAuthError({self.reason!r})"


@dataclass(frozen=True, slots=True)
class Verified:
    """A request that passed its platform's check."""

    platform: Platform
    timestamp: int | None = None  # the signed timestamp (Slack, Discord); Teams has none


# ---------------------------------------------------------------------- helpers
def _now(now: float | Clock | None) -> float:
    if now is None:
        return time.time()
    if callable(now):
        return float(now())
    return float(now)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                value = candidate
                break
    if value is None:
        return None
    value = value.strip()
    return value or None


def _required(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise ChatAuthError("missing_header")
    return value


def _timestamp(value: str) -> int:
    # Digits only: int() would also take "+1_5", " 15" or other spellings nobody signs.
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise ChatAuthError("missing_header")
    return int(value)


def _check_window(timestamp: int, now: float | Clock | None, max_age: float) -> None:
    if abs(_now(now) - timestamp) > max_age:
        raise ChatAuthError("stale")


def _ascii(value: str) -> bytes:
    # compare_digest on str refuses non-ASCII; bytes always compare (and then mismatch).
    return value.encode("utf-8", "replace")


def check_size(raw_body: bytes, max_bytes: int = DEFAULT_MAX_BODY) -> None:
    """Refuse a body over ``max_bytes`` (``too_large``). Every ``verify_*`` calls this first."""
    if len(raw_body) > max_bytes:
        raise ChatAuthError("too_large")


def check_content_length(
    headers: Mapping[str, str], max_bytes: int = DEFAULT_MAX_BODY
) -> int | None:
    """Refuse a declared ``Content-Length`` over ``max_bytes`` before reading the body.

    Returns the declared length (None when absent). Routes should still read at most
    ``max_bytes + 1`` bytes: the header is a promise, not a limit.
    """
    value = _header(headers, "Content-Length")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ChatAuthError("missing_header")
    length = int(value)
    if length > max_bytes:
        raise ChatAuthError("too_large")
    return length


# ---------------------------------------------------------------------- Slack
def sign_slack(signing_secret: str, timestamp: int | str, raw_body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256 over ``v0:{timestamp}:{raw_body}`` (Slack's v0 scheme)."""
    if not signing_secret.strip():
        raise ValueError("the Slack signing secret is empty")
    base = f"{_SLACK_VERSION}:{timestamp}:".encode() + raw_body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"{_SLACK_VERSION}={digest}"


def verify_slack(
    signing_secret: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    now: float | Clock | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    max_body: int = DEFAULT_MAX_BODY,
) -> Verified:
    """Check a request from Slack (HTTP mode: slash commands, interactivity, events).

    Raises :class:`ChatAuthError`; an empty ``signing_secret`` is a configuration error
    (``ValueError``), never "accept everything".
    """
    if not signing_secret.strip():
        raise ValueError("the Slack signing secret is empty")
    check_size(raw_body, max_body)
    signature = _required(headers, SLACK_SIGNATURE_HEADER)
    timestamp_text = _required(headers, SLACK_TIMESTAMP_HEADER)
    timestamp = _timestamp(timestamp_text)
    _check_window(timestamp, now, max_age)
    expected = sign_slack(signing_secret, timestamp_text, raw_body)
    if not hmac.compare_digest(_ascii(expected), _ascii(signature)):
        raise ChatAuthError("bad_signature")
    return Verified("slack", timestamp)


# ---------------------------------------------------------------------- Discord
def load_discord_public_key(public_key_hex: str) -> Ed25519PublicKey:
    """Parse the application's public key (64 hex digits) from the Developer Portal.

    Raises ``ValueError`` for anything else: a configuration error, not a request error.
    """
    try:
        raw = bytes.fromhex(public_key_hex.strip())
    except ValueError:
        raise ValueError("the Discord public key is not hex") from None
    if len(raw) != 32:
        raise ValueError("the Discord public key must be 32 bytes (64 hex digits)")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_discord(
    public_key: str | Ed25519PublicKey,
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    now: float | Clock | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    max_body: int = DEFAULT_MAX_BODY,
) -> Verified:
    """Check a Discord interaction: Ed25519 over ``X-Signature-Timestamp`` + body.

    ``public_key`` is the hex key or one loaded with :func:`load_discord_public_key`
    (load once at start-up to catch a bad key early). Discord probes the endpoint with
    invalid signatures and expects 401, which ``ChatAuthError.http_status`` gives.
    """
    key = load_discord_public_key(public_key) if isinstance(public_key, str) else public_key
    check_size(raw_body, max_body)
    signature_hex = _required(headers, DISCORD_SIGNATURE_HEADER)
    timestamp_text = _required(headers, DISCORD_TIMESTAMP_HEADER)
    timestamp = _timestamp(timestamp_text)
    _check_window(timestamp, now, max_age)
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise ChatAuthError("bad_signature") from None
    if len(signature) != 64:
        raise ChatAuthError("bad_signature")
    try:
        key.verify(signature, timestamp_text.encode() + raw_body)
    except InvalidSignature:
        raise ChatAuthError("bad_signature") from None
    return Verified("discord", timestamp)


# ---------------------------------------------------------------------- Teams
def _teams_key(security_token: str) -> bytes:
    try:
        key = base64.b64decode(security_token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the Teams security token is not base64") from None
    if not key:
        raise ValueError("the Teams security token is empty")
    return key


def sign_teams(security_token: str, raw_body: bytes) -> str:
    """The ``Authorization`` value Teams sends: ``HMAC <base64 HMAC-SHA256>``.

    ``security_token`` is the base64 string Teams shows when the webhook is created.
    """
    digest = hmac.new(_teams_key(security_token), raw_body, hashlib.sha256).digest()
    return "HMAC " + base64.b64encode(digest).decode("ascii")


def verify_teams(
    security_token: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    max_body: int = DEFAULT_MAX_BODY,
) -> Verified:
    """Check a Teams outgoing-webhook request (``Authorization: HMAC <base64>``).

    The scheme signs no timestamp: follow with :func:`check_replay` on the activity id.
    A malformed security token raises ``ValueError`` (configuration error).
    """
    key = _teams_key(security_token)
    check_size(raw_body, max_body)
    header = _required(headers, TEAMS_AUTH_HEADER)
    scheme, _, provided = header.partition(" ")
    if scheme.lower() != "hmac" or not provided.strip():
        raise ChatAuthError("bad_signature")
    digest = hmac.new(key, raw_body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode("ascii")
    if not hmac.compare_digest(_ascii(expected), _ascii(provided.strip())):
        raise ChatAuthError("bad_signature")
    return Verified("teams")


# ---------------------------------------------------------------------- replay guard
async def check_replay(
    message_id: str | None, seen_before: SeenBefore, *, namespace: str = "teams"
) -> None:
    """Refuse (``replay``) a message id that was accepted before.

    Call it only after the signature check, so forged ids cannot fill the store.
    ``seen_before`` gets ``"{namespace}:{message_id}"``. A message without an id cannot
    be deduplicated and is refused as a possible replay (fail closed).
    """
    if not message_id or not message_id.strip():
        raise ChatAuthError("replay")
    if await seen_before(f"{namespace}:{message_id.strip()}"):
        raise ChatAuthError("replay")


class MemorySeenBefore:
    """In-process :data:`SeenBefore` for tests and single-process use.

    Remembers keys for ``ttl`` seconds, at most ``max_entries`` of them (oldest dropped
    first). Atomic within one event loop, as the check and the insert do not await.
    """

    def __init__(
        self, ttl: float = 3600.0, *, max_entries: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    async def __call__(self, key: str) -> bool:
        now = self._clock()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        known = self._seen.get(key)
        if known is not None and known > now:
            return True
        self._seen[key] = now + self.ttl
        self._seen.move_to_end(key)
        return False

"""Scrub secret values out of text and JSON-like payloads.

Chat messages are read by many people and copied around, and webhook URLs are
bearer credentials, so anything that might have picked up a secret (an error
message, a log line, a fact value) goes through here before leaving the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from bot.redact import Redactor

__all__ = ["REDACTED", "Scrubber", "redact", "redact_payload", "url_secrets"]

REDACTED = "[REDACTED]"

# URL path segments / query values at least this long are treated as tokens.
# Short ones ("services", "api", "v1") are routing, not credentials.
_MIN_TOKEN_LEN = 16


def _variants(secrets: Iterable[str]) -> list[str]:
    """Secrets plus their percent-encoded forms, longest first.

    Longest first so that a secret containing another secret is replaced whole
    rather than leaving a recognisable remainder.
    """
    out: set[str] = set()
    for secret in secrets:
        if not secret or not secret.strip():
            continue
        out.add(secret)
        encoded = quote(secret, safe="")
        if encoded != secret:
            out.add(encoded)
    return sorted(out, key=len, reverse=True)


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    variants = _variants(secrets)
    if not variants:
        return None
    return re.compile("|".join(re.escape(v) for v in variants))


def redact(text: str, secrets: Iterable[str], placeholder: str = REDACTED) -> str:
    """Return ``text`` with every occurrence of any secret replaced by ``placeholder``.

    Empty and whitespace-only secrets are ignored (they would match everywhere).
    """
    pattern = _pattern(secrets)
    if pattern is None:
        return text
    return pattern.sub(placeholder, text)


class Scrubber:
    """Reusable redactor: known secret values, plus (``shapes=True``) secret-shaped text.

    Shapes are the project-wide patterns of :mod:`bot.redact` (credentials in
    URLs, ``Bearer`` tokens, ``token=…``-style pairs), which catch secrets
    nobody told us about; they are masked as ``key=***`` like in the logs.
    """

    def __init__(
        self, secrets: Iterable[str], *, shapes: bool = False, placeholder: str = REDACTED
    ) -> None:
        self._pattern = _pattern(secrets)
        self._placeholder = placeholder
        self._shapes = Redactor() if shapes else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(self._placeholder, text)
        if self._shapes is not None:
            text = self._shapes(text)
        return text

    def payload(self, node: Any) -> Any:
        """Recursively scrub every string (keys included) in a JSON-like structure."""
        if isinstance(node, str):
            return self(node)
        if isinstance(node, dict):
            return {self.payload(k): self.payload(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.payload(item) for item in node]
        return node


def redact_payload(payload: Any, secrets: Iterable[str], placeholder: str = REDACTED) -> Any:
    """Recursively redact every string (keys included) in a JSON-like structure."""
    return Scrubber(secrets, placeholder=placeholder).payload(payload)


def url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that act as credentials.

    Besides the full URL this returns the password, long path segments (Slack
    and Discord tokens) and long query values (the Teams Workflows ``sig``), so
    a token that leaks on its own is still scrubbed.
    """
    found = [url]
    parts = urlsplit(url)
    if parts.password:
        found.append(parts.password)
    found.extend(seg for seg in parts.path.split("/") if len(seg) >= _MIN_TOKEN_LEN)
    found.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_TOKEN_LEN)
    return found

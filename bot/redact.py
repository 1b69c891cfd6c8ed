"""Keeping secrets out of everything we write: logs, history, chat, errors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Shapes of secrets we may not have been told about: credentials in URLs, bearer tokens,
# key=value pairs whose key names a secret.
_SHAPES = re.compile(
    r"(?P<url>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)"
    r"|(?P<bearer>\bBearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<pair>\b(?:password|passwd|pwd|secret|token|shared_?key|sharedKey|sig|api_?key)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+",
    re.I,
)


def _keep(match: re.Match[str]) -> str:
    return (match.group("url") or match.group("bearer") or match.group("pair")) + MASK


class Redactor:
    """Replaces known secret values and secret-shaped substrings with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        if len(secret) >= 4 and secret not in self.secrets:
            self.secrets = sorted([*self.secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _SHAPES.sub(_keep, text)

    def tree(self, value: Any) -> Any:
        """The same JSON-like structure with every string redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return value

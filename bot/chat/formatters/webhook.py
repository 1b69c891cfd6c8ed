"""Generic JSON webhook payload: a stable, versioned schema for our own consumers.

Unlike the chat platforms nothing is truncated or decorated here: receivers are
programs (ticketing, SIEM, custom bots) that want the raw values.  Bump
``SCHEMA_VERSION`` on any incompatible change.

Schema (version 1)::

    {
      "version": 1,
      "severity": "info" | "warning" | "error" | "critical",
      "title": str,
      "site": str,
      "summary": str,
      "facts": {name: value, ...},      # insertion-ordered
      "run_url": str | null,
      "next_step": str | null,
      "event_id": str,
      "occurred_at": str                # ISO 8601, UTC, "Z" suffix
    }
"""

from __future__ import annotations

from typing import Any

from bot.chat.formatters.common import iso_utc
from bot.chat.models import Notification

__all__ = ["SCHEMA_VERSION", "format_webhook"]

SCHEMA_VERSION = 1


def _facts_object(n: Notification) -> dict[str, str]:
    """Facts as a JSON object; a repeated name gets a " (2)", " (3)"… suffix, not overwritten."""
    out: dict[str, str] = {}
    for fact in n.facts:
        key, i = fact.name, 1
        while key in out:
            i += 1
            key = f"{fact.name} ({i})"
        out[key] = fact.value
    return out


def format_webhook(notification: Notification) -> dict[str, Any]:
    """Build the version-1 generic webhook body."""
    n = notification
    return {
        "version": SCHEMA_VERSION,
        "severity": n.severity.value,
        "title": n.title,
        "site": n.site,
        "summary": n.summary,
        "facts": _facts_object(n),
        "run_url": n.run_link,
        "next_step": n.next_step,
        "event_id": n.event_id,
        "occurred_at": iso_utc(n.occurred_at),
    }

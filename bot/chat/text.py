"""Text helpers shared by the platform formatters.

Platforms reject (Slack, Discord: HTTP 400) rather than clip over-long fields,
so formatters truncate to the documented limits themselves and mark the cut
with an ellipsis so readers know text is missing.
"""

from __future__ import annotations

import re

__all__ = ["ELLIPSIS", "escape_slack", "truncate", "truncate_escaped"]

ELLIPSIS = "…"

# A trailing, unfinished HTML entity such as "&am" left over after a cut.
_PARTIAL_ENTITY = re.compile(r"&[A-Za-z0-9#]*$")


def truncate(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """Clip ``text`` to at most ``limit`` characters, ending with ``ellipsis`` if cut."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if limit <= len(ellipsis):
        return text[:limit]
    return text[: limit - len(ellipsis)].rstrip() + ellipsis


def truncate_escaped(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """Like :func:`truncate` for entity-escaped text: never cuts inside ``&amp;``."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(ellipsis), 0)]
    return _PARTIAL_ENTITY.sub("", cut).rstrip() + ellipsis


def escape_slack(text: str) -> str:
    """Escape Slack's three control characters so user text cannot form links or @-mentions.

    Slack documents that only ``&``, ``<`` and ``>`` are escaped; full HTML
    escaping would show entities like ``&#39;`` literally.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

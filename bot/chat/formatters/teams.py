"""Microsoft Teams payload for a Workflows (Power Automate) webhook.

Workflows replaced Office 365 connectors and accept only Adaptive Cards, wrapped
in a ``message`` activity with one ``application/vnd.microsoft.card.adaptive``
attachment.  Teams caps a message at roughly 28 KB, so text is budgeted below.
"""

from __future__ import annotations

from typing import Any

from bot.chat.formatters.common import RUN_BUTTON_LABEL, SEVERITY_EMOJI, SEVERITY_LABEL, iso_utc
from bot.chat.models import Notification, Severity
from bot.chat.text import truncate

__all__ = [
    "ADAPTIVE_CARD_CONTENT_TYPE",
    "ADAPTIVE_CARD_SCHEMA",
    "ADAPTIVE_CARD_VERSION",
    "format_teams",
]

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# 1.4 renders on every Teams client (mobile included); 1.5 features are not needed.
ADAPTIVE_CARD_VERSION = "1.4"

TITLE_MAX = 200
SUMMARY_MAX = 3000
NEXT_STEP_MAX = 1000
FACT_TITLE_MAX = 100
FACT_VALUE_MAX = 500
MAX_FACTS = 25

# TextBlock "color" values from the Adaptive Card schema.
_COLOR: dict[Severity, str] = {
    Severity.INFO: "Accent",
    Severity.WARNING: "Warning",
    Severity.ERROR: "Attention",
    Severity.CRITICAL: "Attention",
}


def _text_block(text: str, **props: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **props}


def _fact_set(n: Notification) -> dict[str, Any] | None:
    if not n.facts:
        return None
    facts = [
        {"title": truncate(f.name, FACT_TITLE_MAX), "value": truncate(f.value, FACT_VALUE_MAX)}
        for f in n.facts[:MAX_FACTS]
    ]
    if len(n.facts) > MAX_FACTS:
        facts[-1] = {
            "title": "\N{HORIZONTAL ELLIPSIS}",
            "value": f"+{len(n.facts) - MAX_FACTS + 1} more",
        }
    return {"type": "FactSet", "facts": facts}


def format_teams(notification: Notification) -> dict[str, Any]:
    """Build the JSON body for a Teams Workflows webhook (Adaptive Card attachment)."""
    n = notification
    title = truncate(f"{SEVERITY_EMOJI[n.severity]} {n.title}", TITLE_MAX)
    body: list[dict[str, Any]] = [
        _text_block(title, size="Medium", weight="Bolder", color=_COLOR[n.severity]),
        _text_block(
            f"{SEVERITY_LABEL[n.severity]} \N{MIDDLE DOT} site {n.site} \N{MIDDLE DOT} "
            f"{iso_utc(n.occurred_at, 'seconds')}",
            isSubtle=True,
            spacing="None",
        ),
    ]
    if n.summary:
        body.append(_text_block(truncate(n.summary, SUMMARY_MAX)))
    fact_set = _fact_set(n)
    if fact_set is not None:
        body.append(fact_set)
    if n.next_step:
        body.append(_text_block(f"**Next step:** {truncate(n.next_step, NEXT_STEP_MAX)}"))
    body.append(_text_block(f"Event {n.event_id}", isSubtle=True, size="Small"))

    card: dict[str, Any] = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    link = n.run_link
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": RUN_BUTTON_LABEL, "url": link}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card}
        ],
    }

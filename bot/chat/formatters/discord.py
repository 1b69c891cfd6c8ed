"""Discord execute-webhook payload: short ``content`` line plus one rich embed.

Limits are Discord's documented embed limits (title 256, description 4096, 25
fields of name 256 / value 1024, footer 2048, 6000 characters across the embed,
content 2000); Discord answers 400 if any is exceeded.  ``allowed_mentions``
with an empty ``parse`` list makes sure text like ``@everyone`` never pings.
"""

from __future__ import annotations

from typing import Any

from bot.chat.formatters.common import RUN_BUTTON_LABEL, SEVERITY_EMOJI, SEVERITY_LABEL, iso_utc
from bot.chat.models import Notification, Severity
from bot.chat.text import truncate

__all__ = ["format_discord"]

CONTENT_MAX = 2000
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
EMBED_TOTAL_MAX = 6000
# When the 6000-character budget bites, the description keeps at least this much.
_DESCRIPTION_FLOOR = 200

COLOR: dict[Severity, int] = {
    Severity.INFO: 0x3498DB,
    Severity.WARNING: 0xF1C40F,
    Severity.ERROR: 0xE74C3C,
    Severity.CRITICAL: 0x992D22,
}


def _field(name: str, value: str, *, inline: bool) -> dict[str, Any]:
    # Empty names/values are rejected by Discord, hence the dash.
    return {
        "name": truncate(name, FIELD_NAME_MAX) or "\N{EM DASH}",
        "value": truncate(value, FIELD_VALUE_MAX) or "\N{EM DASH}",
        "inline": inline,
    }


def embed_length(embed: dict[str, Any]) -> int:
    """Characters that count toward Discord's 6000-per-message embed budget."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    total += len(embed.get("footer", {}).get("text", ""))
    total += len(embed.get("author", {}).get("name", ""))
    return total


def _description(n: Notification, limit: int = DESCRIPTION_MAX) -> str:
    """Summary plus a masked link to the run; the summary is clipped, never the link."""
    link = n.run_link
    link_line = f"[{RUN_BUTTON_LABEL}]({link})" if link else ""
    if not link_line or len(link_line) > limit:
        return truncate(n.summary, limit)
    if not n.summary:
        return link_line
    room = limit - len(link_line) - 2
    return f"{truncate(n.summary, max(room, 0))}\n\n{link_line}" if room > 0 else link_line


def _fit(embed: dict[str, Any], n: Notification, fact_count: int) -> None:
    """Shrink the description, then drop trailing facts, until the embed fits."""
    excess = embed_length(embed) - EMBED_TOTAL_MAX
    if excess > 0 and "description" in embed:
        limit = max(len(embed["description"]) - excess, _DESCRIPTION_FLOOR)
        embed["description"] = _description(n, limit)
    fields: list[dict[str, Any]] = embed["fields"]
    base_footer = embed["footer"]["text"]
    dropped = 0
    while embed_length(embed) > EMBED_TOTAL_MAX and fact_count - dropped > 0:
        del fields[fact_count - dropped - 1]
        dropped += 1
        embed["footer"]["text"] = truncate(f"{base_footer} · {dropped} facts omitted", FOOTER_MAX)


def format_discord(notification: Notification) -> dict[str, Any]:
    """Build the JSON body for a Discord webhook execute call."""
    n = notification
    label = SEVERITY_LABEL[n.severity]
    content = truncate(
        f"{SEVERITY_EMOJI[n.severity]} **[{label}]** {n.site}: {n.title}", CONTENT_MAX
    )

    reserve = 1 if n.next_step else 0
    facts = n.facts[: FIELDS_MAX - reserve]
    fields = [_field(f.name, f.value, inline=True) for f in facts]
    if len(n.facts) > len(facts):
        fields[-1] = _field(
            "\N{HORIZONTAL ELLIPSIS}", f"+{len(n.facts) - len(facts) + 1} more facts", inline=True
        )
    if n.next_step:
        fields.append(_field("Next step", n.next_step, inline=False))

    embed: dict[str, Any] = {
        "title": truncate(n.title, TITLE_MAX),
        "color": COLOR[n.severity],
        "timestamp": iso_utc(n.occurred_at),
        "fields": fields,
        "footer": {
            "text": truncate(
                f"tunnelwarden · {label} · site {n.site} · event {n.event_id}", FOOTER_MAX
            )
        },
    }
    description = _description(n)
    if description:
        embed["description"] = description
    if n.run_link:
        embed["url"] = n.run_link
    _fit(embed, n, len(facts))
    return {"content": content, "embeds": [embed], "allowed_mentions": {"parse": []}}

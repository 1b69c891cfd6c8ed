"""Slack incoming-webhook payload built with Block Kit (``slack_sdk.models.blocks``).

Layout: header, summary section, fact fields (two-column), next step, context
line (site/severity/time/event), and a link button to the run.  Limits come
from Slack's Block Kit reference (docs.slack.dev/reference/block-kit): Slack
rejects the whole message with ``invalid_blocks`` if any one is exceeded.  The
blocks are slack_sdk model objects, so ``to_dict()`` also checks them against
the SDK's own copy of those limits before anything is sent.
"""

from __future__ import annotations

import math
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.chat.formatters.common import RUN_BUTTON_LABEL, SEVERITY_EMOJI, SEVERITY_LABEL, iso_utc
from bot.chat.models import Fact, Notification
from bot.chat.text import escape_slack, truncate, truncate_escaped

__all__ = ["RUN_ACTION_ID", "build_slack_blocks", "format_slack"]

MAX_BLOCKS = 50
HEADER_TEXT_MAX = 150  # header block: plain_text only
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
FIELD_TEXT_MAX = 2000
CONTEXT_TEXT_MAX = 3000
BUTTON_TEXT_MAX = 75
BUTTON_URL_MAX = 3000
# Slack's own cap on top-level ``text`` is 40,000; the fallback only feeds
# notification previews, so keep it short.
FALLBACK_TEXT_MAX = 3000
FACT_NAME_MAX = 200
RUN_ACTION_ID = "tunnelwarden-open-run"


def _mrkdwn(text: str, limit: int) -> MarkdownTextObject:
    return MarkdownTextObject(text=truncate_escaped(text, limit))


def _fact_field(fact: Fact) -> MarkdownTextObject:
    name = escape_slack(truncate(fact.name, FACT_NAME_MAX))
    value = escape_slack(fact.value) or "\N{EM DASH}"
    return _mrkdwn(f"*{name}*\n{value}", FIELD_TEXT_MAX)


def _fact_sections(facts: tuple[Fact, ...], max_sections: int) -> list[SectionBlock]:
    """Chunk facts into sections of at most ten fields, within the block budget."""
    if not facts or max_sections <= 0:
        return []
    fields = [_fact_field(f) for f in facts]
    capacity = max_sections * SECTION_FIELDS_MAX
    if len(fields) > capacity:
        hidden = len(fields) - (capacity - 1)
        fields = [*fields[: capacity - 1], _mrkdwn(f"_+{hidden} more facts_", FIELD_TEXT_MAX)]
    sections = math.ceil(len(fields) / SECTION_FIELDS_MAX)
    return [
        SectionBlock(fields=fields[i * SECTION_FIELDS_MAX : (i + 1) * SECTION_FIELDS_MAX])
        for i in range(sections)
    ]


def _context(n: Notification) -> ContextBlock:
    ts = int(n.occurred_at.timestamp())
    # <!date^…|fallback> renders in the reader's time zone; fallback is the raw ISO time.
    when = f"<!date^{ts}^{{date_short_pretty}} {{time}}|{iso_utc(n.occurred_at, 'seconds')}>"
    text = (
        f"Site: *{escape_slack(n.site)}*  |  Severity: *{SEVERITY_LABEL[n.severity]}*"
        f"  |  {when}  |  Event `{escape_slack(n.event_id)}`"
    )
    return ContextBlock(elements=[_mrkdwn(text, CONTEXT_TEXT_MAX)])


def _fallback_text(n: Notification) -> str:
    text = f"{SEVERITY_EMOJI[n.severity]} [{SEVERITY_LABEL[n.severity]}] {n.site}: {n.title}"
    if n.summary:
        text = f"{text} \N{EM DASH} {n.summary}"
    return truncate_escaped(escape_slack(text), FALLBACK_TEXT_MAX)


def build_slack_blocks(notification: Notification) -> list[Block]:
    """The message's Block Kit blocks, as slack_sdk model objects (at most 50)."""
    n = notification
    header = HeaderBlock(
        text=PlainTextObject(
            text=truncate(f"{SEVERITY_EMOJI[n.severity]} {n.title}", HEADER_TEXT_MAX), emoji=True
        )
    )
    head: list[Block] = [header]
    if n.summary:
        head.append(SectionBlock(text=_mrkdwn(escape_slack(n.summary), SECTION_TEXT_MAX)))

    tail: list[Block] = []
    if n.next_step:
        text = f"*Next step:* {escape_slack(n.next_step)}"
        tail.append(SectionBlock(text=_mrkdwn(text, SECTION_TEXT_MAX)))
    tail.append(_context(n))
    link = n.run_link
    if link and len(link) <= BUTTON_URL_MAX:  # a clipped URL would be a broken link
        button = ButtonElement(
            text=PlainTextObject(text=truncate(RUN_BUTTON_LABEL, BUTTON_TEXT_MAX)),
            url=link,
            action_id=RUN_ACTION_ID,
        )
        tail.append(ActionsBlock(elements=[button]))

    facts = _fact_sections(n.facts, MAX_BLOCKS - len(head) - len(tail))
    return [*head, *facts, *tail]


def format_slack(notification: Notification) -> dict[str, Any]:
    """Build the JSON body for a Slack incoming webhook (``text`` fallback + ``blocks``).

    ``to_dict()`` validates every block (lengths, counts) with slack_sdk and raises
    ``SlackObjectFormationError`` if one would be rejected by Slack.
    """
    blocks = [block.to_dict() for block in build_slack_blocks(notification)]
    return {"text": _fallback_text(notification), "blocks": blocks}

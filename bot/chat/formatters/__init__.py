"""Per-platform payload builders, selected by :class:`~bot.chat.models.ChannelKind`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.chat.formatters.apprise import format_apprise
from bot.chat.formatters.discord import format_discord
from bot.chat.formatters.slack import format_slack
from bot.chat.formatters.teams import format_teams
from bot.chat.formatters.webhook import format_webhook
from bot.chat.models import ChannelKind, Notification

__all__ = [
    "FORMATTERS",
    "Formatter",
    "format_apprise",
    "format_discord",
    "format_payload",
    "format_slack",
    "format_teams",
    "format_webhook",
]

Formatter = Callable[[Notification], dict[str, Any]]

FORMATTERS: dict[ChannelKind, Formatter] = {
    ChannelKind.SLACK: format_slack,
    ChannelKind.TEAMS: format_teams,
    ChannelKind.DISCORD: format_discord,
    ChannelKind.WEBHOOK: format_webhook,
    ChannelKind.APPRISE: format_apprise,
}


def format_payload(kind: ChannelKind, notification: Notification) -> dict[str, Any]:
    """Render ``notification`` as the JSON body ``kind`` expects (for apprise: the
    title, body and type handed to apprise)."""
    return FORMATTERS[kind](notification)

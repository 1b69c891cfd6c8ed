"""Mount the configured chat endpoints on the public listener (``bot.http``).

Only what ``[chat.slack]`` (in HTTP mode), ``[chat.discord]`` and ``[chat.teams]`` enable is
served; nothing else answers under ``/chat/``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.services import Services


def add_chat_routes(app: web.Application, services: Services) -> list[Any]:
    """Add the routes; returns the chat objects (each has ``close()``, run at cleanup)."""
    chat = services.settings.chat
    mounted: list[Any] = []
    if chat.slack.enabled and chat.slack.mode == "http":
        from bot.chat.slack import SlackChat

        mounted.append(SlackChat(services))
    if chat.discord.enabled:
        from bot.chat.discord import DiscordChat

        mounted.append(DiscordChat(services))
    if chat.teams.enabled:
        from bot.chat.teams import TeamsChat

        mounted.append(TeamsChat(services))
    for item in mounted:
        item.add_routes(app)

    async def cleanup(_: web.Application) -> None:
        for item in mounted:
            close = getattr(item, "close", None)
            if close is not None:
                await close()

    if mounted:
        app.on_cleanup.append(cleanup)
    return mounted

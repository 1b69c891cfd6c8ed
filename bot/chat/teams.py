"""Microsoft Teams outgoing webhook at ``POST /chat/teams/outgoing`` (read-only commands).

Teams signs the body with the webhook's security token: ``Authorization: HMAC <base64
HMAC-SHA256(base64-decoded token, body)>`` (``bot.chat.verify``). The scheme has no
timestamp, so a replay is only caught by deduplicating the activity id (kept a day in
Redis). The webhook fires on an @mention in the team's channels and wants its answer within
5 seconds, in the HTTP response. Outgoing-webhook cards cannot call back (only ``openUrl``
actions), so Teams gets the read commands only: approvals need a registered bot.
Users are ``teams:<AAD object id>`` (or the channel account id when Teams sends none).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot.chat.verify import (
    DEFAULT_MAX_BODY,
    ChatAuthError,
    check_content_length,
    check_replay,
    verify_teams,
)
from bot.commands import Caller, Reply, context, dispatch
from bot.config import TeamsChatConfig
from bot.services import Services
from playbooks.base import Playbook

log = logging.getLogger("tunnelwarden.chat.teams")

OUTGOING_PATH = "/chat/teams/outgoing"
ANSWER_WITHIN = 4.0  # Teams gives up after 5 s
_MENTION = re.compile(r"<at>.*?</at>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")


def text_of(activity: dict[str, Any]) -> str:
    """The command in an activity's text: the @mention and HTML removed."""
    raw = str(activity.get("text") or "")
    cleaned = _TAGS.sub(" ", _MENTION.sub(" ", raw)).replace("&nbsp;", " ")
    return " ".join(cleaned.split())


def message(reply: Reply) -> dict[str, Any]:
    text = reply.text
    if reply.lines:
        text += "\n\n" + "\n\n".join(reply.lines[:20])
    if reply.link:
        text += f"\n\n[run record]({reply.link})"
    return {"type": "message", "text": text[:4000]}


class TeamsChat:
    def __init__(
        self,
        services: Services,
        config: TeamsChatConfig | None = None,
        *,
        playbooks: Mapping[str, Playbook[Any]] | None = None,
    ) -> None:
        self.services = services
        self.playbooks = playbooks
        self.config = config or services.settings.chat.teams

    async def _seen(self, key: str) -> bool:
        name = f"{self.services.settings.redis.prefix}:{{chat}}:seen:{key}"
        return not await self.services.redis.set(name, "1", nx=True, ex=86400)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = self.config.security_token
        if token is None:
            return web.json_response({"error": "not configured"}, status=404)
        max_body = min(self.services.settings.http.max_body_bytes, DEFAULT_MAX_BODY)
        try:
            check_content_length(request.headers, max_body)
            body = await request.read()
            verify_teams(token.get_secret_value(), request.headers, body, max_body=max_body)
            activity = json.loads(body)
            if not isinstance(activity, dict):
                raise ValueError("not an object")
            await check_replay(str(activity.get("id") or ""), self._seen, namespace="teams")
        except ChatAuthError as exc:
            log.warning("teams: request refused: %s", exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.http_status)
        except ValueError:
            return web.json_response({"error": "bad request"}, status=400)
        sender = activity.get("from") or {}
        user = str(sender.get("aadObjectId") or sender.get("id") or "")
        caller = Caller(f"teams:{user}", "teams", str(sender.get("name") or ""))
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                reply = await dispatch(
                    context(self.services, playbooks=self.playbooks, caller=caller),
                    text_of(activity),
                    read_only=True,
                )
        except TimeoutError:
            reply = Reply("still working after 4 s: try again, or use the CLI", ok=False)
        return web.json_response(message(reply))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(OUTGOING_PATH, self.handle)

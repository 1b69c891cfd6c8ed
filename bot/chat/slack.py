"""Slack: the slash command and the buttons, with slack-bolt (async).

Two transports, one bolt app:

- **Socket Mode** (default): outbound only, nothing exposed (right for a bot behind NAT).
  ``AsyncSocketModeHandler.connect_async()`` inside our loop; bolt skips signatures there
  (the WebSocket was opened with our app-level token).
- **HTTP mode**: ``POST /chat/slack/events`` on the public listener. bolt has no aiohttp
  request handler to mount, so the route checks the v0 signature itself (raw body, 5-minute
  window, constant-time compare; ``bot.chat.verify``) and then hands the request to bolt:
  ``to_bolt_request`` → ``async_dispatch`` → ``to_aiohttp_response``.

Every listener acknowledges first (Slack wants it within 3 s) and does the work after: the
reply goes to ``response_url`` (ephemeral to the asker; approval requests and run outcomes in
the channel). Users are ``slack:<team id>:<user id>``; display names are never authorised on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.verify import (
    DEFAULT_MAX_BODY,
    ChatAuthError,
    Clock,
    check_content_length,
    verify_slack,
)
from bot.commands import Caller, Reply, context, dispatch, outcome_reply, wait_run
from bot.config import SlackChatConfig
from bot.services import Services
from playbooks.base import Playbook

log = logging.getLogger("tunnelwarden.chat.slack")

EVENTS_PATH = "/chat/slack/events"
ACTION = re.compile(r"^tw_(apply|approve|deny)$")
SLACK_API = "https://slack.com/api/"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(reply: Reply) -> list[dict[str, Any]]:
    """A compact Block Kit rendering: one section, the buttons, a link to the run."""
    body = _escape(reply.text)
    if reply.lines:
        body += "\n```" + _escape("\n".join(reply.lines))[:2800] + "```"
    out: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": body[:2990]}}
    ]
    if reply.buttons:
        elements = []
        for b in reply.buttons:
            button: dict[str, Any] = {
                "type": "button",
                "action_id": f"tw_{b.action}",
                "value": b.value,
                "text": {"type": "plain_text", "text": b.label},
            }
            if b.style:
                button["style"] = b.style
            elements.append(button)
        out.append({"type": "actions", "block_id": "tw_actions", "elements": elements})
    if reply.link:
        out.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{reply.link}|run record>"}],
            }
        )
    return out


def message(reply: Reply, **extra: Any) -> dict[str, Any]:
    return {"text": reply.plain()[:3000], "blocks": blocks(reply), **extra}


class SlackChat:
    """The bolt app wired to the command layer (one per process)."""

    def __init__(
        self,
        services: Services,
        config: SlackChatConfig | None = None,
        *,
        clock: Clock | None = None,
        playbooks: Mapping[str, Playbook[Any]] | None = None,
    ) -> None:
        self.services = services
        self.playbooks = playbooks
        self.config = config or services.settings.chat.slack
        self.clock = clock
        c = self.config
        token = c.bot_token.get_secret_value() if c.bot_token else None
        self.client = AsyncWebClient(token=token, base_url=c.api_url or SLACK_API)
        secret = c.signing_secret.get_secret_value() if c.signing_secret else None
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret,
            request_verification_enabled=False,  # checked by the route (HTTP mode only)
            process_before_response=False,  # ack first, work after
        )
        self.app.command(c.command)(self._on_command)
        self.app.action(ACTION)(self._on_action)
        self.tasks: set[asyncio.Task[None]] = set()
        self._socket: Any = None

    # ------------------------------------------------------------------ listeners
    def _caller(self, team: str, user: str, name: str) -> Caller:
        return Caller(f"slack:{team}:{user}", "slack", name)

    async def _on_command(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        text = str(body.get("text") or "")
        await ack(response_type="ephemeral", text="working on it...")
        caller = self._caller(
            str(body.get("team_id", "")),
            str(body.get("user_id", "")),
            str(body.get("user_name", "")),
        )
        reply = await dispatch(
            context(self.services, playbooks=self.playbooks, caller=caller), text
        )
        await self._respond(respond, reply)

    async def _on_action(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        action = (body.get("actions") or [{}])[0]
        kind = str(action.get("action_id", "")).removeprefix("tw_")
        value = str(action.get("value") or "")
        user = body.get("user") or {}
        team = str(user.get("team_id") or (body.get("team") or {}).get("id") or "")
        caller = self._caller(team, str(user.get("id", "")), str(user.get("username", "")))
        reply = await dispatch(
            context(self.services, playbooks=self.playbooks, caller=caller),
            f"{kind} {shlex.quote(value)}",
        )
        if not reply.ok:  # a refusal goes to the clicker alone; the buttons stay
            await respond(**message(reply, response_type="ephemeral", replace_original=False))
            return
        await self._respond(respond, reply, replace=kind in ("approve", "deny"))

    async def _respond(self, respond: Any, reply: Reply, *, replace: bool = False) -> None:
        kind = "in_channel" if reply.public or replace else "ephemeral"
        await respond(**message(reply, response_type=kind, replace_original=replace))
        if reply.follow is not None:
            self._spawn(self._follow(respond, *reply.follow))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _follow(self, respond: Any, site: str, run_id: str) -> None:
        """Post the run's outcome in the channel once it is recorded."""
        policy = self.services.settings.policy_for(site)
        record = await wait_run(
            self.services, site, run_id, policy.lock_wait + policy.playbook_timeout
        )
        ctx = context(self.services, playbooks=self.playbooks, caller=Caller("slack:bot", "slack"))
        if record is None:
            reply = Reply(f"run {run_id[:12]} on {site}: no result yet; see: history {site}")
        else:
            reply = outcome_reply(ctx, record)
        reply.text = self.services.redact(reply.text)
        reply.lines = [self.services.redact(line) for line in reply.lines]
        try:
            await respond(**message(reply, response_type="in_channel", replace_original=False))
        except Exception as exc:
            log.warning("slack: cannot post the outcome of %s: %s", run_id, type(exc).__name__)

    # ------------------------------------------------------------------ HTTP mode
    def max_body(self) -> int:
        return min(self.services.settings.http.max_body_bytes, DEFAULT_MAX_BODY)

    async def handle_http(self, request: web.Request) -> web.StreamResponse:
        secret = self.config.signing_secret
        if secret is None:
            return web.json_response({"error": "not configured"}, status=404)
        try:
            check_content_length(request.headers, self.max_body())
            body = await request.read()
            verify_slack(
                secret.get_secret_value(),
                request.headers,
                body,
                now=self.clock,
                max_body=self.max_body(),
            )
        except ChatAuthError as exc:
            log.warning("slack: request refused: %s", exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.http_status)
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(EVENTS_PATH, self.handle_http)

    # ------------------------------------------------------------------ Socket Mode
    async def connect(self) -> None:
        from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

        token = self.config.app_token
        if token is None:
            raise ValueError("chat.slack: Socket Mode needs app_token")
        handler = AsyncSocketModeHandler(self.app, token.get_secret_value())
        await handler.connect_async()  # type: ignore[no-untyped-call]
        self._socket = handler
        log.info("slack: Socket Mode connected")

    def start(self) -> None:
        """Connect Socket Mode in the background, retrying with backoff (Slack being away
        is weather: the process stays up)."""
        self._spawn(self._connect_retrying())

    async def _connect_retrying(self) -> None:
        delay = 1.0
        while self._socket is None:
            try:
                await self.connect()
            except Exception as exc:
                log.warning("slack: Socket Mode: %s; retrying in %.0fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

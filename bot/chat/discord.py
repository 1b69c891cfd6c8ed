"""Discord interactions at ``POST /chat/discord/interactions``.

Ed25519 over ``X-Signature-Timestamp`` + raw body with the application's public key
(``bot.chat.verify``); an invalid signature gets 401 (Discord probes for that before it
accepts the URL). PING → PONG. A slash command (``/tunnelwarden text:"status hq"``) or a
button (``custom_id`` ``tw_approve:<id>``) is answered in the HTTP response when the command
finishes within the ack budget; otherwise the response is a deferred one (type 5 or 6) and
the outcome is sent later by editing the original response through the interaction webhook
(the interaction token is valid for 15 minutes). Interaction ids are deduplicated.
Users are ``discord:<user id>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from bot.chat.verify import (
    DEFAULT_MAX_BODY,
    ChatAuthError,
    Clock,
    check_content_length,
    check_replay,
    load_discord_public_key,
    verify_discord,
)
from bot.commands import Caller, Reply, context, dispatch, outcome_reply, redacted, wait_run
from bot.config import DiscordChatConfig
from bot.services import Services
from playbooks.base import Playbook

log = logging.getLogger("tunnelwarden.chat.discord")

INTERACTIONS_PATH = "/chat/discord/interactions"
PING, COMMAND, COMPONENT = 1, 2, 3
PONG, MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE = 1, 4, 5, 6, 7
EPHEMERAL = 64
ACK_BUDGET = 2.0  # seconds of work before answering "deferred" (Discord allows 3)
_STYLE = {"primary": 1, "danger": 4, None: 2}


def message(reply: Reply) -> dict[str, Any]:
    content = reply.text
    if reply.lines:
        content += "\n```\n" + "\n".join(reply.lines)[:1700] + "\n```"
    if reply.link:
        content += f"\n{reply.link}"
    doc: dict[str, Any] = {"content": content[:2000], "allowed_mentions": {"parse": []}}
    if reply.buttons:
        doc["components"] = [
            {
                "type": 1,
                "components": [
                    {
                        "type": 2,
                        "style": _STYLE[b.style],
                        "label": b.label,
                        "custom_id": f"tw_{b.action}:{b.value}",
                    }
                    for b in reply.buttons
                ],
            }
        ]
    else:
        doc["components"] = []
    if not reply.public and not reply.ok:
        doc["flags"] = EPHEMERAL
    return doc


class DiscordChat:
    def __init__(
        self,
        services: Services,
        config: DiscordChatConfig | None = None,
        *,
        clock: Clock | None = None,
        ack_budget: float = ACK_BUDGET,
        playbooks: Mapping[str, Playbook[Any]] | None = None,
    ) -> None:
        self.services = services
        self.playbooks = playbooks
        self.config = config or services.settings.chat.discord
        self.key = load_discord_public_key(self.config.public_key)
        self.clock = clock
        self.ack_budget = ack_budget
        self.tasks: set[asyncio.Task[None]] = set()

    async def _seen(self, key: str) -> bool:
        name = f"{self.services.settings.redis.prefix}:{{chat}}:seen:{key}"
        return not await self.services.redis.set(name, "1", nx=True, ex=3600)

    def _text(self, doc: dict[str, Any]) -> str | None:
        data = doc.get("data") or {}
        if doc.get("type") == COMMAND:
            if data.get("name") != self.config.command:
                return None
            parts = [str(o.get("value", "")) for o in data.get("options") or []]
            return " ".join(parts)
        kind, _, value = str(data.get("custom_id", "")).partition(":")
        if kind not in ("tw_apply", "tw_approve", "tw_deny"):
            return None
        return f"{kind.removeprefix('tw_')} {shlex.quote(value)}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        max_body = min(self.services.settings.http.max_body_bytes, DEFAULT_MAX_BODY)
        try:
            check_content_length(request.headers, max_body)
            body = await request.read()
            verify_discord(self.key, request.headers, body, now=self.clock, max_body=max_body)
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            if doc.get("type") == PING:
                return web.json_response({"type": PONG})
            await check_replay(str(doc.get("id") or ""), self._seen, namespace="discord")
        except ChatAuthError as exc:
            log.warning("discord: request refused: %s", exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.http_status)
        except ValueError:
            return web.json_response({"error": "bad request"}, status=400)
        text = self._text(doc)
        if text is None:
            return web.json_response({"error": "unknown interaction"}, status=400)
        user = (doc.get("member") or {}).get("user") or doc.get("user") or {}
        caller = Caller(f"discord:{user.get('id', '')}", "discord", str(user.get("username", "")))
        is_button = doc.get("type") == COMPONENT
        work = asyncio.create_task(
            dispatch(context(self.services, playbooks=self.playbooks, caller=caller), text)
        )
        done, _ = await asyncio.wait({work}, timeout=self.ack_budget)
        if work in done:
            reply = work.result()
            self._after(doc, reply)
            kind = UPDATE if is_button and reply.ok and not reply.public else MESSAGE
            return web.json_response({"type": kind, "data": message(reply)})
        self._spawn(self._deferred(doc, work))
        return web.json_response({"type": DEFERRED_UPDATE if is_button else DEFERRED_MESSAGE})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _hook(self, doc: dict[str, Any], original: bool) -> str:
        base = self.config.api_url.rstrip("/")
        app_id = self.config.application_id
        url = f"{base}/webhooks/{app_id}/{doc.get('token', '')}"
        return url + "/messages/@original" if original else url

    async def _send(self, doc: dict[str, Any], reply: Reply, *, original: bool) -> None:
        method = "PATCH" if original else "POST"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.request(method, self._hook(doc, original), json=message(reply)) as resp,
            ):
                if resp.status >= 300:
                    log.warning("discord: follow-up answered %d", resp.status)
        except aiohttp.ClientError as exc:
            log.warning("discord: follow-up failed: %s", type(exc).__name__)

    async def _deferred(self, doc: dict[str, Any], work: asyncio.Task[Reply]) -> None:
        reply = await work
        await self._send(doc, reply, original=True)
        self._after(doc, reply)

    def _after(self, doc: dict[str, Any], reply: Reply) -> None:
        if reply.follow is not None:
            self._spawn(self._follow(doc, *reply.follow))

    async def _follow(self, doc: dict[str, Any], site: str, run_id: str) -> None:
        policy = self.services.settings.policy_for(site)
        within = min(policy.lock_wait + policy.playbook_timeout, 14 * 60)  # the token's life
        record = await wait_run(self.services, site, run_id, within)
        ctx = context(
            self.services, playbooks=self.playbooks, caller=Caller("discord:bot", "discord")
        )
        if record is None:
            reply = Reply(f"run {run_id[:12]} on {site}: no result yet; see: history {site}")
        else:
            reply = outcome_reply(ctx, record)
        reply.public = True
        await self._send(doc, redacted(self.services, reply), original=False)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(INTERACTIONS_PATH, self.handle)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

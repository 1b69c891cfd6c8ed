"""Approvals a handler asks for: a destructive step on a site whose policy has ``approval``.

The site handler stays pure: it marks the destructive steps of its chain ``needs_approval``
(with the outage's ``incident``). When a run reaches such a step the runner calls
:meth:`Escalations.ask` instead of running it:

- the first time for this site, playbook and incident, an approval request is recorded
  (``bot.chat.approvals``, requested by ``tunnelwarden``, so any approver may decide) **before**
  it is posted: to ``[chat.slack] channel`` with Approve/Deny buttons, and to the
  ``[[notify]]`` channels with the commands to decide;
- a retry of the same incident finds the request (``<prefix>:{chat}:escalation:...``) and
  posts nothing: it waits;
- an approval queues the playbook as a confirmed ``playbook.requested`` through the gate (the
  command layer does that, as for any approval); once that run is recorded the step counts as
  done and the chain goes on (a gateway reset after a re-create that did not help asks again);
- a denial or an expiry is recorded (the approval's audit stream) and told once; the step then
  fails for the rest of the incident without asking again.

Expiry is noticed by whoever sees it first (:func:`expire_due`'s loop, a run, a late click);
the one Lua script that marks it expired decides who tells.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Literal

from bot.chat.approvals import KEEP, Approval, Approvals
from bot.chat.models import Notification, Severity
from bot.models import PlaybookCall, PlaybookResult

if TYPE_CHECKING:
    from bot.commands import Reply
    from bot.services import Services

log = logging.getLogger("tunnelwarden.escalate")
BOT = "tunnelwarden"  # the requester of the approvals the bot asks for itself


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Escalations:
    def __init__(self, services: Services) -> None:
        self.services = services
        s = services.settings
        self.prefix = s.redis.prefix
        self.approvals = Approvals(services.redis, s.redis.prefix, ttl=s.chat.approval_ttl)

    def key(self, site: str, playbook: str, incident: str) -> str:
        return f"{self.prefix}:{{chat}}:escalation:{site}:{playbook}:{incident}"

    @property
    def waiting_key(self) -> str:
        """Pending bot-asked approvals by expiry (what the expiry loop looks at)."""
        return f"{self.prefix}:{{chat}}:approvals:waiting"

    # ------------------------------------------------------------------ a run's step
    async def ask(
        self, site: str, call: PlaybookCall, *, now: float | None = None
    ) -> PlaybookResult:
        """What becomes of a ``needs_approval`` step: asked, waiting, done, or closed."""
        at = time.time() if now is None else now
        redis = self.services.redis
        key = self.key(site, call.name, call.incident)
        fresh = secrets.token_hex(5)
        if await redis.set(key, fresh, nx=True, ex=int(self.approvals.ttl + KEEP)):
            asked = await self._create(site, call, fresh, at)
            return _waiting(call, "ApprovalRequested", asked, "asked")
        raw = await redis.get(key)
        found = await self.approvals.get(_text(raw)) if raw else None
        if found is None:  # the key outlived its record (or a crash between the two)
            asked = await self._create(site, call, _text(raw) if raw else fresh, at)
            return _waiting(call, "ApprovalRequested", asked, "asked")
        approval = found
        if approval.status == "pending" and at >= approval.expires_at:
            if await self.approvals.expire(approval.id, now=at):
                approval.status = "expired"
                await self.closed(approval, "expired", "")
            approval = await self.approvals.get(approval.id) or approval
        if approval.status == "pending":
            return _waiting(call, "ApprovalPending", approval, "waiting for")
        if approval.status == "approved":
            if approval.run_id and await self.services.state.recorded(site, approval.run_id):
                return PlaybookResult(
                    playbook=call.name,
                    outcome="ok",
                    detail=f"approved by {approval.decided_by} (approval {approval.id}); "
                    f"ran as run {approval.run_id[:12]}",
                )
            return _waiting(call, "ApprovalPending", approval, "approved: queued by")
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        code = "ApprovalDenied" if approval.status == "denied" else "ApprovalExpired"
        return PlaybookResult(
            playbook=call.name,
            outcome="failed",
            error=f"approval {approval.id} {approval.status}{by}: {call.name} does not run "
            "in this incident (ask in chat to run it)",
            error_code=code,
        )

    async def _create(self, site: str, call: PlaybookCall, approval_id: str, at: float) -> Approval:
        approval = await self.approvals.create(
            site, call.name, dict(call.params), BOT, now=at, approval_id=approval_id
        )
        await self.services.redis.zadd(self.waiting_key, {approval.id: approval.expires_at})
        await self.announce(approval)  # recorded first, then posted
        return approval

    # ------------------------------------------------------------------ telling
    async def announce(self, approval: Approval) -> None:
        from bot.commands import approval_reply, clock

        reply = approval_reply(approval)
        await self._slack(reply)
        params = ", ".join(f"{k}={v}" for k, v in sorted(approval.params.items())) or "-"
        await self._notify(
            Notification(
                severity=Severity.WARNING,
                title=f"{approval.site}: approval needed to run {approval.playbook}",
                site=approval.site,
                summary=f"The tunnel stays down; {approval.playbook} is destructive and the "
                "site's policy asks an approver first. Nothing runs until one decides.",
                facts={
                    "Approval": approval.id,
                    "Playbook": approval.playbook,
                    "Parameters": params,
                    "Expires": clock(approval.expires_at),
                },
                next_step=f"An approver: /tunnelwarden approve {approval.id} (or deny "
                f"{approval.id}); from the CLI: tunnelwarden approve {approval.id}",
                event_id=f"approval-{approval.id}",
            )
        )

    async def closed(
        self,
        approval: Approval,
        status: Literal["denied", "expired"],
        by: str,
        *,
        slack: bool = True,
    ) -> None:
        """Tell of a denial or an expiry (once: the caller is the one that decided it)."""
        from bot.commands import Reply

        await self.services.redis.zrem(self.waiting_key, approval.id)
        who = f" by {by}" if by else ""
        text = (
            f"approval {approval.id} {status}{who}: {approval.playbook} will not run on "
            f"{approval.site}"
        )
        if slack:
            await self._slack(Reply(text, public=True))
        await self._notify(
            Notification(
                severity=Severity.WARNING,
                title=f"{approval.site}: approval {approval.id} {status}; "
                f"{approval.playbook} will not run",
                site=approval.site,
                summary=text,
                next_step="The site is still checked; to run it after all, ask in chat: "
                f"/tunnelwarden playbook {approval.playbook} {approval.site}",
                event_id=f"approval-{approval.id}-{status}",
            )
        )

    async def decided(self, approval: Approval) -> None:
        """An approval was decided from chat or the CLI: stop watching its expiry."""
        await self.services.redis.zrem(self.waiting_key, approval.id)

    async def _slack(self, reply: Reply) -> None:
        slack = self.services.settings.chat.slack
        if not (slack.enabled and slack.channel and slack.bot_token):
            return
        from slack_sdk.web.async_client import AsyncWebClient

        from bot.chat.slack import SLACK_API, message
        from bot.commands import redacted

        client = AsyncWebClient(
            token=slack.bot_token.get_secret_value(), base_url=slack.api_url or SLACK_API
        )
        try:
            await client.chat_postMessage(
                channel=slack.channel, **message(redacted(self.services, reply))
            )
        except Exception as exc:  # telling never fails a run
            log.warning("slack: cannot post to %s: %s", slack.channel, type(exc).__name__)

    async def _notify(self, notification: Notification) -> None:
        notifications = self.services.notifications
        if not notifications.enabled:
            return
        try:
            await notifications.send(notification)
        except Exception as exc:
            log.warning("approval message not sent: %s", type(exc).__name__)

    # ------------------------------------------------------------------ expiry
    async def expire_due(self, now: float | None = None) -> list[Approval]:
        """Mark the waiting requests past their expiry expired and tell of each once."""
        at = time.time() if now is None else now
        redis = self.services.redis
        out = []
        for raw in await redis.zrangebyscore(self.waiting_key, 0, at):
            approval_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            approval = await self.approvals.get(approval_id)
            if approval is not None and await self.approvals.expire(approval_id, now=at):
                approval.status = "expired"
                await self.closed(approval, "expired", "")
                out.append(approval)
            await redis.zrem(self.waiting_key, approval_id)
        return out


def _waiting(call: PlaybookCall, code: str, approval: Approval, what: str) -> PlaybookResult:
    from bot.commands import clock

    by = approval.decided_by if approval.status == "approved" else "an approver"
    return PlaybookResult(
        playbook=call.name,
        outcome="failed",
        error=f"destructive: {what} {by} (approval {approval.id}, expires "
        f"{clock(approval.expires_at)}); nothing destructive runs meanwhile",
        error_code=code,
        retry=True,
    )


async def expire_loop(services: Services, stop: asyncio.Event, every: float = 5.0) -> None:
    """Run :meth:`Escalations.expire_due` until ``stop``; Redis trouble is weather."""
    escalations = Escalations(services)
    while not stop.is_set():
        try:
            for approval in await escalations.expire_due():
                log.info("approval %s expired", approval.id, extra={"site": approval.site})
        except Exception as exc:
            log.warning("approval expiry: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)

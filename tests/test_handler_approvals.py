"""A site with ``approval = true``: the handler's destructive step waits for an approver.

The bot as ``tunnelwarden run`` assembles it, the ARM simulator with a tunnel that only a
re-created connection brings back, a real Redis, a loopback chat webhook, and the command
layer for the people who decide.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.commands import dispatch
from bot.config import Policy
from bot.escalate import BOT, Escalations
from bot.events import Event
from bot.models import RunRecord
from bot.sim.slack import PostedMessage, SlackSimHandle, start_slack_sim
from bot.sim.world import World
from handlers.base import SiteView
from handlers.site import Reconcile, decide
from tests.chat.chat_env import APPROVER, APPROVER2, OPERATOR, ROLES, ctx_for, slack_id
from tests.helpers import eventually
from tests.test_azure_playbooks import connections
from tests.test_handlers import view
from tests.test_ip_change_e2e import Bot, Receiver, receiver, running_bot

__all__ = ["receiver"]  # the fixture


def connection_guid(w: World) -> str:
    """The connection's resourceGuid: a DELETE and re-create gives it a new one."""
    (conn,) = connections(w)
    return str(conn["properties"]["resourceGuid"])


def titled(rx: Receiver, words: str) -> list[dict[str, Any]]:
    return [p for p in rx.posts if words in str(p.get("title", ""))]


@contextlib.asynccontextmanager
async def approving_bot(
    tmp_path: Path,
    prefix: str,
    redis_url: str,
    receiver: Receiver,
    ttl: float = 900.0,
    slack: SlackSimHandle | None = None,
) -> AsyncIterator[Bot]:
    """The bot with ``approval = true`` on every site, resets without cool-down or limit (so
    every retry reaches the destructive step), and chat roles; Slack when given."""
    chat: dict[str, Any] = {
        "roles": {k: v for k, v in ROLES.items() if k != "sites"},
        "approval_ttl": ttl,
    }
    if slack is not None:
        chat["slack"] = {
            "enabled": True,
            "mode": "socket",
            "bot_token": slack.settings.bot_token,
            "app_token": slack.settings.app_token,
            "api_url": slack.api_url,
            "channel": slack.settings.default_channel,
        }
    async with running_bot(
        tmp_path,
        prefix,
        redis_url,
        receiver,
        more={"chat": chat},
        approval=True,
        reset_cooldown=0,
        max_resets_per_hour=0,
    ) as b:
        yield b


@pytest.fixture
async def bot(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver, request: Any
) -> AsyncIterator[Bot]:
    ttl = getattr(request, "param", 900.0)
    async with approving_bot(tmp_path, prefix, redis_url, receiver, ttl) as b:
        yield b


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimHandle]:
    handle = await start_slack_sim()
    try:
        yield handle
    finally:
        await handle.close()


async def outage(bot: Bot) -> RunRecord:
    """The tunnel drops for good (only a re-created connection helps); a reconcile runs."""
    bot.world.drop_tunnel("conn-home", cleared_by=["put_connection"])
    return await reconcile(bot)


async def reconcile(bot: Bot) -> RunRecord:
    services = bot.services
    seen = {r.run_id for r in await services.state.history("home", 50)}
    await services.scheduler.at("site.reconcile", "home", time.time())

    async def new() -> RunRecord | None:
        fresh = [r for r in await services.state.history("home", 50) if r.run_id not in seen]
        return next((r for r in fresh if r.event_type == "site.reconcile"), None)

    return await eventually(new, within=30)


async def the_request(bot: Bot) -> str:
    audit = await Escalations(bot.services).approvals.audit()
    (asked,) = [a for a in audit if a.status == "requested"]
    assert asked.by == BOT
    return asked.approval


async def test_the_handler_marks_destructive_steps_for_approval() -> None:
    event = Event.new("site.reconcile", "home", source="scheduler")
    asked = await decide(event, Reconcile(), view(policy=Policy(approval=True)))
    reset = asked.playbooks[1].on_failure[0]
    recreate, verify = reset.on_failure
    gateway = verify.on_failure[0]
    assert recreate.name == "recreate-connection" and recreate.needs_approval
    assert gateway.name == "reset-gateway" and gateway.needs_approval
    assert recreate.incident and recreate.incident == gateway.incident
    # A retry of the same outage names the same incident: the one the first run recorded.
    since = {"ip.v4": "203.0.113.7", "incident.since": "1700000000.500"}
    retry = await decide(event, Reconcile(), view(state=since, policy=Policy(approval=True)))
    assert retry.playbooks[1].on_failure[0].on_failure[0].incident == "1700000000.500"
    allowed = Policy(approval=True, allow_destructive=True)
    plain = await decide(event, Reconcile(), view(policy=allowed))
    assert not plain.playbooks[1].on_failure[0].on_failure[0].needs_approval
    off = await decide(event, Reconcile(), view())
    assert off.playbooks[1].on_failure[0].on_failure == []


def test_the_incident_is_what_the_failed_run_records() -> None:
    from handlers.site import incident_of, remember

    v: SiteView = view(state={"ip.v4": "203.0.113.7"})
    event = Event.new("site.reconcile", "home", source="scheduler")
    failed = RunRecord(
        run_id="r1",
        site="home",
        event_type="site.reconcile",
        event_source="scheduler",
        idempotency_key="k",
        outcome="failed",
        started_at=v.now,
        finished_at=v.now + 1,
    )
    assert remember(event, Reconcile(), failed, v)["incident.since"] == incident_of(
        event, Reconcile(), v
    )


async def test_an_outage_asks_once_and_runs_nothing_destructive_until_approved(
    bot: Bot, receiver: Receiver
) -> None:
    w, services = bot.world, bot.services
    original = connection_guid(w)
    first = await outage(bot)
    assert first.outcome == "failed"
    assert [r.playbook for r in first.playbooks][-1] == "recreate-connection"
    assert first.playbooks[-1].error_code == "ApprovalRequested"
    approval_id = await the_request(bot)
    stored = await Escalations(services).approvals.get(approval_id)
    assert stored is not None and stored.status == "pending"
    assert stored.requested_by == BOT and stored.playbook == "recreate-connection"
    await eventually(lambda: _some(titled(receiver, "approval needed")))
    (posted,) = titled(receiver, "approval needed to run recreate-connection")
    assert approval_id in str(posted)
    # A retry of the same outage finds the request: it waits and posts nothing more.
    second = await reconcile(bot)
    assert second.playbooks[-1].error_code == "ApprovalPending"
    assert approval_id in (second.playbooks[-1].error or "")
    assert len(titled(receiver, "approval needed")) == 1
    (down,) = titled(receiver, "tunnel down")  # one incident, told once
    assert "approval request in chat" in str(down.get("next_step"))
    assert "--confirm-destructive" not in str(down), "no by-hand recreate while one is asked"
    assert connection_guid(w) == original and w.connection_status("conn-home") != "Connected"
    # Someone without the approver role cannot decide it.
    refused = await dispatch(ctx_for(services, OPERATOR), f"approve {approval_id}")
    assert not refused.ok and "approver" in refused.text
    decided = await dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}")
    assert decided.ok, decided.text
    assert decided.follow is not None
    site, run_id = decided.follow
    record = await eventually(lambda: services.state.recorded(site, run_id), within=30)
    assert record.outcome == "ok", record
    assert record.playbooks[0].playbook == "recreate-connection"
    assert f"{BOT} (approval {approval_id}, approved by {slack_id(APPROVER2)}" in record.reason
    assert "confirmed" in record.reason
    assert connection_guid(w) != original and w.connection_status("conn-home") == "Connected"
    audit = await Escalations(services).approvals.audit(approval_id)
    assert [(a.status, a.by) for a in audit] == [
        ("requested", BOT),
        ("approved", slack_id(APPROVER2)),
        ("queued", ""),
    ]
    assert await services.redis.zcard(Escalations(services).waiting_key) == 0
    assert len(titled(receiver, "approval needed")) == 1


async def test_a_denial_is_told_once_and_nothing_destructive_runs(
    bot: Bot, receiver: Receiver
) -> None:
    w, services = bot.world, bot.services
    original = connection_guid(w)
    await outage(bot)
    approval_id = await the_request(bot)
    denied = await dispatch(ctx_for(services, APPROVER), f"deny {approval_id}")
    assert denied.ok and "denied" in denied.text
    told = await eventually(lambda: _some(titled(receiver, f"approval {approval_id} denied")))
    assert slack_id(APPROVER) in str(told)
    after = await reconcile(bot)
    assert after.playbooks[-1].error_code == "ApprovalDenied"
    assert len(titled(receiver, "denied")) == 1
    assert len(titled(receiver, "approval needed")) == 1, "not asked again in the incident"
    assert connection_guid(w) == original and w.connection_status("conn-home") != "Connected"
    again = await dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}")
    assert not again.ok and "already denied" in again.text
    assert connection_guid(w) == original


@pytest.mark.parametrize("bot", [1.0], indirect=True)
async def test_an_expiry_is_told_once_and_nothing_runs(bot: Bot, receiver: Receiver) -> None:
    w, services = bot.world, bot.services
    original = connection_guid(w)
    await outage(bot)
    approval_id = await the_request(bot)
    await eventually(lambda: _some(titled(receiver, f"approval {approval_id} expired")))
    stored = await Escalations(services).approvals.get(approval_id)
    assert stored is not None and stored.status == "expired"
    late = await dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}")
    assert not late.ok
    after = await reconcile(bot)
    assert after.playbooks[-1].error_code == "ApprovalExpired"
    assert len(titled(receiver, "expired")) == 1
    assert len(titled(receiver, "approval needed")) == 1
    assert connection_guid(w) == original and w.connection_status("conn-home") != "Connected"


async def test_in_slack_the_request_has_buttons_and_an_approvers_click_runs_it(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver, slack: SlackSimHandle
) -> None:
    async with approving_bot(tmp_path, prefix, redis_url, receiver, slack=slack) as bot:
        w, services = bot.world, bot.services
        original = connection_guid(w)
        await slack.sim.wait_connected(within=10)
        await outage(bot)

        async def posted() -> list[PostedMessage]:
            return slack.sim.messages(via="chat.postMessage")

        (request,) = await eventually(posted)
        assert request.channel == slack.settings.default_channel
        buttons = [e for b in request.blocks or [] if b["type"] == "actions" for e in b["elements"]]
        assert [b["action_id"] for b in buttons] == ["tw_approve", "tw_deny"]
        approval_id = buttons[0]["value"]
        assert approval_id == await the_request(bot)
        assert request.text is not None and f"{BOT} asks to run recreate-connection" in request.text
        stored = await Escalations(services).approvals.get(approval_id)
        assert stored is not None and stored.status == "pending"
        await reconcile(bot)  # a retry: no second post
        assert len(slack.sim.messages(via="chat.postMessage")) == 1
        assert connection_guid(w) == original
        before = slack.sim.messages()[-1].seq
        await slack.sim.inject_interactive("tw_approve", approval_id, user=APPROVER2)

        async def answered() -> list[PostedMessage]:
            new = [m for m in slack.sim.messages() if m.seq > before]
            return new if len(new) >= 2 else []

        decided, outcome = (await eventually(answered, within=30))[:2]
        assert decided.replaced and decided.text is not None
        assert f"approved by {APPROVER2.lower()}" in decided.text
        assert outcome.text is not None and outcome.text.startswith("ok: playbook.requested")
        assert f"approved by {slack_id(APPROVER2)}" in outcome.text
        assert connection_guid(w) != original and w.connection_status("conn-home") == "Connected"
        for message in slack.sim.messages():
            shown = (message.text or "") + json.dumps(message.blocks)
            assert slack.settings.bot_token not in shown
            assert slack.settings.app_token not in shown


async def _some(items: list[Any]) -> Any:
    return items[0] if items else None

"""Two-person approvals over a real Redis and a real worker: the flow and its failures."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.commands import Reply, dispatch
from bot.services import Services
from tests.chat.chat_env import (
    APPROVER,
    APPROVER2,
    NOBODY,
    OPERATOR,
    VIEWER,
    chat_settings,
    ctx_for,
    slack_id,
    worker,
)
from tests.helpers import eventually


@pytest.fixture
def services(prefix: str, tmp_path: Path, redis_url: str) -> Services:
    return Services.build(chat_settings(prefix, tmp_path), Redis.from_url(redis_url))


async def request(services: Services, user: str = APPROVER, site: str = "hq") -> Reply:
    """``playbook test-wipe`` then its Apply button: the approval request."""
    ctx = ctx_for(services, user)
    dry = await dispatch(ctx, f"playbook test-wipe {site}")
    assert dry.ok, dry.text
    assert any("destructive" in line for line in dry.lines)
    asked = await dispatch(ctx, f"apply {dry.buttons[0].value}")
    assert asked.ok, asked.text
    return asked


async def queued(services: Services) -> int:
    return int((await services.queue.stats())["length"])


async def test_request_then_another_approver_runs_it_and_history_says_who(
    services: Services,
) -> None:
    asked = await request(services)
    assert asked.public and [b.action for b in asked.buttons] == ["approve", "deny"]
    assert "expires in 15 min" in "\n".join(asked.lines)
    approval_id = asked.buttons[0].value
    stored = await ctx_for(services, APPROVER).approvals.get(approval_id)
    assert stored is not None and stored.status == "pending"  # recorded before any post
    assert await queued(services) == 0  # nothing runs while it waits
    async with worker(services):
        decided = await dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}")
        assert decided.ok, decided.text
        assert decided.follow is not None
        site, run_id = decided.follow
        record = await eventually(lambda: services.state.recorded(site, run_id))
    assert record.outcome == "ok"
    assert record.playbooks[0].playbook == "test-wipe"
    assert slack_id(APPROVER) in record.reason and f"approved by {slack_id(APPROVER2)}" in (
        record.reason
    )
    assert "confirmed" in record.reason
    (listed,) = await services.state.history("hq", 5)
    assert listed.run_id == run_id
    audit = await ctx_for(services, APPROVER).approvals.audit(approval_id)
    assert [(a.status, a.by) for a in audit] == [
        ("requested", slack_id(APPROVER)),
        ("approved", slack_id(APPROVER2)),
        ("queued", ""),
    ]
    assert audit[2].extra["run_id"] == run_id
    assert audit[0].at <= audit[1].at <= audit[2].at


async def test_the_requester_cannot_approve_their_own(services: Services) -> None:
    asked = await request(services)
    mine = await dispatch(ctx_for(services, APPROVER), f"approve {asked.buttons[0].value}")
    assert not mine.ok and "another approver" in mine.text
    stored = await ctx_for(services, APPROVER).approvals.get(asked.buttons[0].value)
    assert stored is not None and stored.status == "pending"
    assert await queued(services) == 0


async def test_an_expired_request_runs_nothing_and_says_so(services: Services) -> None:
    asked = await request(services)
    approval_id = asked.buttons[0].value
    late = ctx_for(services, APPROVER2)
    stored = await late.approvals.get(approval_id)
    assert stored is not None
    late.now = lambda: stored.expires_at + 1
    reply = await dispatch(late, f"approve {approval_id}")
    assert not reply.ok and "expired" in reply.text
    assert await queued(services) == 0
    again = await dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}")
    assert not again.ok and "already expired" in again.text


async def test_a_double_click_is_decided_once(services: Services) -> None:
    asked = await request(services)
    approval_id = asked.buttons[0].value
    first, second = await asyncio.gather(
        dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}"),
        dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}"),
    )
    assert sorted([first.ok, second.ok]) == [False, True]
    loser = second if first.ok else first
    assert "already approved" in loser.text
    assert await queued(services) == 1  # one run, not two


async def test_approve_and_deny_race_first_wins(services: Services) -> None:
    asked = await request(services, user=OPERATOR)
    approval_id = asked.buttons[0].value
    yes, no = await asyncio.gather(
        dispatch(ctx_for(services, APPROVER2), f"approve {approval_id}"),
        dispatch(ctx_for(services, APPROVER), f"deny {approval_id}"),
    )
    assert yes.ok != no.ok
    assert await queued(services) == (1 if yes.ok else 0)


async def test_someone_without_the_role_is_refused_and_logged(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    asked = await request(services)
    approval_id = asked.buttons[0].value
    with caplog.at_level(logging.WARNING, logger="tunnelwarden.commands"):
        for user in (VIEWER, OPERATOR, NOBODY):
            reply = await dispatch(ctx_for(services, user), f"approve {approval_id}")
            assert not reply.ok and reply.text.startswith("not allowed"), user
    assert sum("refused" in r.getMessage() for r in caplog.records) == 3
    stored = await ctx_for(services, APPROVER).approvals.get(approval_id)
    assert stored is not None and stored.status == "pending"


async def test_deny_and_withdraw_run_nothing(services: Services) -> None:
    asked = await request(services, user=OPERATOR)
    denied = await dispatch(ctx_for(services, APPROVER2), f"deny {asked.buttons[0].value}")
    assert denied.ok and "will not run" in denied.text
    asked2 = await request(services, user=OPERATOR)
    withdrawn = await dispatch(ctx_for(services, OPERATOR), f"deny {asked2.buttons[0].value}")
    assert withdrawn.ok
    late = await dispatch(ctx_for(services, APPROVER2), f"approve {asked2.buttons[0].value}")
    assert not late.ok and "already denied" in late.text
    assert await queued(services) == 0


async def test_a_destructive_run_never_starts_without_a_recorded_approval(
    services: Services,
) -> None:
    ctx = ctx_for(services, OPERATOR)
    async with worker(services):
        await request(services, user=OPERATOR)
        await request(services, user=OPERATOR, site="branch")
        unknown = await dispatch(ctx_for(services, APPROVER2), "approve 0000000000")
        assert not unknown.ok and "no approval" in unknown.text
        # a forged click value cannot name parameters or skip the request
        assert not (await dispatch(ctx, "apply test-wipe")).ok
    assert await queued(services) == 0
    assert await services.state.history(None, 10) == []


async def test_expire_marks_a_request_once_and_only_when_due(services: Services) -> None:
    approvals = ctx_for(services, APPROVER).approvals
    asked = await approvals.create("hq", "test-wipe", {}, "tunnelwarden", now=1000.0)
    assert not await approvals.expire(asked.id, now=1000.0 + approvals.ttl - 1)  # not yet
    assert (await approvals.get(asked.id)).status == "pending"  # type: ignore[union-attr]
    assert await approvals.expire(asked.id, now=1000.0 + approvals.ttl)
    assert not await approvals.expire(asked.id, now=1000.0 + approvals.ttl + 5)  # told once
    assert [a.status for a in await approvals.audit(asked.id)] == ["requested", "expired"]
    decided = await approvals.create("hq", "test-wipe", {}, "tunnelwarden", now=1000.0)
    await approvals.decide(decided.id, slack_id(APPROVER2), False, now=1001.0)
    assert not await approvals.expire(decided.id, now=1000.0 + approvals.ttl)
    assert (await approvals.get(decided.id)).status == "denied"  # type: ignore[union-attr]

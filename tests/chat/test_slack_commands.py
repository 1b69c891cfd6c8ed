"""Slack end to end: the real slack-bolt app of bot/chat/slack.py against the loopback Slack
simulator (Socket Mode and HTTP mode through the real public route), a real Redis and a
real worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from bot.chat.slack import EVENTS_PATH, SlackChat
from bot.http import create_public_app
from bot.services import Services
from bot.sim.slack import PostedMessage, SlackSimHandle, SlackSimSettings, start_slack_sim
from tests.chat.chat_env import (
    APPROVER,
    APPROVER2,
    NOBODY,
    OPERATOR,
    PLAYBOOKS,
    VIEWER,
    HeldTarget,
    chat_settings,
    serve,
    worker,
)
from tests.helpers import eventually

SIGNING_SECRET = "tw-test-signing-secret-0123456789"
# Slack's published example (docs.slack.dev, "Verifying requests from Slack").
EXAMPLE_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EXAMPLE_TS = 1531420618
EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmib"
    b"IGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


@pytest.fixture
async def slack() -> AsyncIterator[SlackSimHandle]:
    handle = await start_slack_sim(settings=SlackSimSettings(signing_secret=SIGNING_SECRET))
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def held() -> AsyncIterator[HeldTarget]:
    target = HeldTarget()
    await target.start()
    try:
        yield target
    finally:
        await target.close()


def slack_config(slack: SlackSimHandle, mode: str, secret: str = SIGNING_SECRET) -> dict[str, Any]:
    return {
        "slack": {
            "enabled": True,
            "mode": mode,
            "bot_token": slack.settings.bot_token,
            "app_token": slack.settings.app_token,
            "signing_secret": secret,
            "api_url": slack.api_url,
        }
    }


@pytest.fixture
async def socket_bot(
    prefix: str, tmp_path: Path, redis_url: str, slack: SlackSimHandle, held: HeldTarget
) -> AsyncIterator[tuple[SlackChat, Services]]:
    settings = chat_settings(prefix, tmp_path, held.url, **slack_config(slack, "socket"))
    services = Services.build(settings, Redis.from_url(redis_url))
    chat = SlackChat(services, playbooks=PLAYBOOKS)
    await chat.connect()
    await slack.sim.wait_connected()
    try:
        yield chat, services
    finally:
        await chat.close()
        await services.redis.aclose()


async def answers(slack: SlackSimHandle, after: int, count: int = 1) -> list[PostedMessage]:
    async def found() -> list[PostedMessage]:
        new = [m for m in slack.sim.messages() if m.seq > after]
        return new if len(new) >= count else []

    return list(await eventually(found))


def last_seq(slack: SlackSimHandle) -> int:
    messages = slack.sim.messages()
    return messages[-1].seq if messages else 0


def secrets_of(slack: SlackSimHandle) -> list[str]:
    return [SIGNING_SECRET, slack.settings.bot_token, slack.settings.app_token]


async def test_socket_mode_acks_before_the_slow_work(
    socket_bot: tuple[SlackChat, Services], slack: SlackSimHandle, held: HeldTarget
) -> None:
    before = last_seq(slack)
    envelope = await slack.sim.inject_slash("probe hq", user=VIEWER)
    ack = await slack.sim.wait_ack(envelope.envelope_id)
    assert ack.payload is not None and "working" in json.dumps(ack.payload)
    await eventually(lambda: _true(held.hits >= 1))
    assert held.answered == 0  # the probe is still waiting: the ack did not wait for it
    assert [m for m in slack.sim.messages() if m.seq > before] == []
    held.release()
    (reply,) = await answers(slack, before)
    assert reply.via == "response_url" and reply.text is not None
    assert "hq: 1/1 probes up" in reply.text


async def _true(value: bool) -> bool:
    return value


async def test_every_command_is_acked_before_its_answer(
    socket_bot: tuple[SlackChat, Services], slack: SlackSimHandle
) -> None:
    for line in (
        "help",
        "status",
        "status hq",
        "history",
        "history hq",
        "run 0123abcd",
        "pause hq 1h",
        "resume hq",
        "playbook noop hq",
        "approve 00aa",
        "deny 00aa",
        "nonsense",
    ):
        before = last_seq(slack)
        envelope = await slack.sim.inject_slash(line, user=APPROVER)
        ack = await slack.sim.wait_ack(envelope.envelope_id)
        (reply,) = await answers(slack, before)
        # the ack carries no result: it was sent before the command's work, whose answer
        # comes separately through response_url
        assert ack.payload == {"text": "working on it...", "response_type": "ephemeral"}, line
        assert reply.via == "response_url", line
        assert reply.text, line
        for secret in secrets_of(slack):
            assert secret not in (reply.text or "") + json.dumps(reply.blocks), line


async def test_roles_are_checked_on_the_slack_ids(
    socket_bot: tuple[SlackChat, Services], slack: SlackSimHandle
) -> None:
    _, services = socket_bot
    before = last_seq(slack)
    await slack.sim.inject_slash("pause hq", user=NOBODY, user_name="approver")
    (reply,) = await answers(slack, before)
    assert reply.text is not None and reply.text.startswith("not allowed")
    before = last_seq(slack)
    await slack.sim.inject_slash("pause hq", user=VIEWER)
    (reply,) = await answers(slack, before)
    assert reply.text is not None and "operator" in reply.text
    # the same user id in another workspace is another user
    before = last_seq(slack)
    await slack.sim.inject_slash("pause hq", user=OPERATOR, team="T0OTHERTEAM")
    (reply,) = await answers(slack, before)
    assert reply.text is not None and reply.text.startswith("not allowed")
    assert (await services.state.site_state("hq")).get("paused") != "1"


async def test_approval_flow_through_buttons(
    socket_bot: tuple[SlackChat, Services], slack: SlackSimHandle
) -> None:
    _, services = socket_bot
    before = last_seq(slack)
    await slack.sim.inject_slash("playbook test-wipe hq", user=APPROVER)
    (dry,) = await answers(slack, before)
    assert dry.text is not None and "dry-run of test-wipe on hq" in dry.text
    (apply_button,) = [e for b in dry.blocks or [] if b["type"] == "actions" for e in b["elements"]]
    assert apply_button["action_id"] == "tw_apply"
    before = last_seq(slack)
    click = await slack.sim.inject_interactive("tw_apply", apply_button["value"], user=APPROVER)
    await slack.sim.wait_ack(click.envelope_id)
    (request,) = await answers(slack, before)
    assert request.response_type == "in_channel" and request.text is not None
    assert "expires in 15 min" in request.text
    buttons = [e for b in request.blocks or [] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == ["tw_approve", "tw_deny"]
    approval_id = buttons[0]["value"]
    chat_ctx = services.settings.redis.prefix
    stored = await services.redis.hget(f"{chat_ctx}:{{chat}}:approval:{approval_id}", "status")
    assert stored == b"pending"  # the record was written before the buttons were posted

    for user in (APPROVER, NOBODY, OPERATOR):  # self-approval, no role, not an approver
        before = last_seq(slack)
        await slack.sim.inject_interactive("tw_approve", user=user)
        (refusal,) = await answers(slack, before)
        assert refusal.ephemeral and not refusal.replaced, user
        assert refusal.text is not None and "not allowed" in refusal.text, user
    assert (await services.queue.stats())["length"] == 0

    async with worker(services):
        before = last_seq(slack)
        await slack.sim.inject_interactive("tw_approve", user=APPROVER2)
        decided, outcome = await answers(slack, before, 2)
    assert decided.replaced and decided.text is not None
    assert f"approved by {APPROVER2.lower()}" in decided.text
    assert not any(b["type"] == "actions" for b in decided.blocks or [])  # buttons gone
    assert outcome.response_type == "in_channel" and outcome.text is not None
    assert outcome.text.startswith("ok: playbook.requested on hq")
    assert "approved by slack:T0SIMTEAM1:UAPPR0002" in outcome.text
    for message in slack.sim.messages():
        for secret in secrets_of(slack):
            assert secret not in (message.text or "") + json.dumps(message.blocks)


# ---------------------------------------------------------------------- HTTP mode
@pytest.fixture
async def http_bot(
    prefix: str, tmp_path: Path, redis_url: str, slack: SlackSimHandle, held: HeldTarget
) -> AsyncIterator[tuple[str, Services]]:
    settings = chat_settings(prefix, tmp_path, held.url, **slack_config(slack, "http"))
    services = Services.build(settings, Redis.from_url(redis_url))
    runner, base = await serve(create_public_app(services))  # the real public listener
    try:
        yield base + EVENTS_PATH, services
    finally:
        await runner.cleanup()
        await services.redis.aclose()


async def test_http_mode_signed_command_is_acked_then_answered(
    http_bot: tuple[str, Services], slack: SlackSimHandle, held: HeldTarget
) -> None:
    url, _ = http_bot
    before = last_seq(slack)
    result = await slack.sim.deliver(url, slack.sim.signed_slash("probe hq", user=VIEWER))
    assert result["status"] == 200 and "working" in result["body"]
    assert held.answered == 0 and [m for m in slack.sim.messages() if m.seq > before] == []
    held.release()
    (reply,) = await answers(slack, before)
    assert reply.text is not None and "1/1 probes up" in reply.text


async def test_http_mode_refuses_bad_signatures_stale_and_oversized(
    http_bot: tuple[str, Services], slack: SlackSimHandle, http: aiohttp.ClientSession
) -> None:
    url, _ = http_bot
    forged = slack.sim.signed_slash("pause hq", user=OPERATOR, signing_secret="wrong-secret")
    assert (await slack.sim.deliver(url, forged))["status"] == 401
    old = slack.sim.signed_slash("pause hq", user=OPERATOR)
    stale_headers = dict(old.headers)
    async with http.post(
        url, data=old.body, headers={**stale_headers, "X-Slack-Request-Timestamp": "1531420618"}
    ) as response:
        assert response.status == 401
    big = b"text=" + b"a" * (300 * 1024)
    async with http.post(url, data=big, headers=old.headers) as response:
        assert response.status == 413
    async with http.post(url, data=old.body) as response:  # no signature at all
        assert response.status == 401
    assert slack.sim.messages() == []


async def test_http_route_is_mounted_only_when_configured(
    prefix: str, tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    services = Services.build(chat_settings(prefix, tmp_path), Redis.from_url(redis_url))
    runner, base = await serve(create_public_app(services))
    try:
        for path in (EVENTS_PATH, "/chat/discord/interactions", "/chat/teams/outgoing"):
            async with http.post(base + path, data=b"{}") as response:
                assert response.status in (404, 405), path
    finally:
        await runner.cleanup()
        await services.redis.aclose()


async def test_slacks_published_signing_example_with_the_clock_injected(
    prefix: str, tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    settings = chat_settings(
        prefix,
        tmp_path,
        slack={
            "enabled": True,
            "mode": "http",
            "bot_token": "xoxb-x",
            "signing_secret": EXAMPLE_SECRET,
            "api_url": "http://127.0.0.1:9/api/",
        },
    )
    services = Services.build(settings, Redis.from_url(redis_url))
    chat = SlackChat(services, clock=lambda: EXAMPLE_TS + 60)
    app = web.Application()
    chat.add_routes(app)
    runner, base = await serve(app)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(EXAMPLE_TS),
        "X-Slack-Signature": EXAMPLE_SIGNATURE,
    }
    try:
        async with http.post(base + EVENTS_PATH, data=EXAMPLE_BODY, headers=headers) as response:
            assert response.status not in (401, 413)  # verified; /webhook-collect is not ours
        tampered = EXAMPLE_BODY.replace(b"roadrunner", b"roadrunnex")
        async with http.post(base + EVENTS_PATH, data=tampered, headers=headers) as response:
            assert response.status == 401
        late = SlackChat(services, clock=lambda: EXAMPLE_TS + 301)
        app2 = web.Application()
        late.add_routes(app2)
        runner2, base2 = await serve(app2)
        try:
            async with http.post(base2 + EVENTS_PATH, data=EXAMPLE_BODY, headers=headers) as r:
                assert r.status == 401 and (await r.json())["error"] == "stale"
        finally:
            await runner2.cleanup()
    finally:
        await chat.close()
        await runner.cleanup()
        await services.redis.aclose()


async def test_the_process_starts_socket_mode_when_configured(
    prefix: str, tmp_path: Path, redis_url: str, slack: SlackSimHandle
) -> None:
    """``run_process`` (what ``tunnelwarden run`` runs) connects Socket Mode and answers."""
    import asyncio

    from bot.app import run_process

    settings = chat_settings(prefix, tmp_path, **slack_config(slack, "socket"))
    settings = settings.model_copy(update={"http": settings.http.model_copy(update={"port": 0})})
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_process(
            settings,
            redis_url=redis_url,
            worker=True,
            http=True,
            stop=stop,
            handle_signals=False,
        )
    )
    try:
        await slack.sim.wait_connected(within=15)
        before = last_seq(slack)
        envelope = await slack.sim.inject_slash("status hq", user=VIEWER)
        await slack.sim.wait_ack(envelope.envelope_id)
        (reply,) = await answers(slack, before)
        assert reply.text is not None and reply.text.startswith("1 site(s)")
    finally:
        stop.set()
        assert await task == 0
    assert slack.sim.connections == 0  # closed on the way out


async def test_tunnelwarden_sim_slack_serves_the_web_api() -> None:
    """``tunnelwarden sim slack``: the loopback Slack the demo and a newcomer point the bot at."""
    import asyncio
    import re

    from slack_sdk.web.async_client import AsyncWebClient

    from tests.conftest import tunnelwarden

    proc = await asyncio.create_subprocess_exec(
        *tunnelwarden(),
        "sim",
        "slack",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"Web API: (http://127\.0\.0\.1:\d+/api/)", line)
        assert match, line
        client = AsyncWebClient(token=SlackSimSettings().bot_token, base_url=match.group(1))
        posted = await client.chat_postMessage(channel="C0SIMCHAN1", text="hello")
        assert posted["ok"] is True
    finally:
        proc.terminate()
        await proc.wait()

"""Teams outgoing webhook through the real public route: HMAC with the base64-decoded token,
replay refused by activity id, read-only commands only."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.chat.teams import OUTGOING_PATH
from bot.chat.verify import sign_teams
from bot.http import create_public_app
from bot.services import Services
from tests.chat.chat_env import TEAMS_VIEWER, chat_settings, serve

TOKEN = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
async def bot(prefix: str, tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[str, Services]]:
    settings = chat_settings(prefix, tmp_path, teams={"enabled": True, "security_token": TOKEN})
    services = Services.build(settings, Redis.from_url(redis_url))
    runner, base = await serve(create_public_app(services))
    try:
        yield base + OUTGOING_PATH, services
    finally:
        await runner.cleanup()
        await services.redis.aclose()


def activity(text: str, user: str = TEAMS_VIEWER, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "id": extra.pop("id", uuid.uuid4().hex),
        "text": f"<at>tunnelwarden</at> {text}",
        "from": {"id": user, "name": "Display Name"},
        "channelId": "msteams",
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, url: str, doc: Any, token: str = TOKEN
) -> tuple[int, Any]:
    body = json.dumps(doc).encode()
    headers = {"Authorization": sign_teams(token, body), "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_signed_read_command_is_answered(
    bot: tuple[str, Services], http: aiohttp.ClientSession
) -> None:
    url, _ = bot
    status, doc = await post(http, url, activity("status"))
    assert status == 200 and doc["type"] == "message"
    assert "hq: tunnel" in doc["text"] and "branch: tunnel" in doc["text"]


async def test_wrong_signature_replay_and_oversized_are_refused(
    bot: tuple[str, Services], http: aiohttp.ClientSession
) -> None:
    url, _ = bot
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    assert (await post(http, url, activity("status"), token=other))[0] == 401
    doc = activity("status")
    assert (await post(http, url, doc))[0] == 200
    status, answer = await post(http, url, doc)  # the same activity again
    assert status == 401 and answer["error"] == "replay"
    no_id = activity("status")
    del no_id["id"]
    assert (await post(http, url, no_id))[0] == 401
    big = activity("status", filler="a" * (300 * 1024))
    assert (await post(http, url, big))[0] == 413
    async with http.post(url, data=b"{}") as response:
        assert response.status == 401


async def test_changes_are_not_available_from_teams(
    bot: tuple[str, Services], http: aiohttp.ClientSession
) -> None:
    url, services = bot
    for text in ("pause hq", "resume hq", "playbook noop hq", "approve abc", "deny abc"):
        status, doc = await post(http, url, activity(text))
        assert status == 200 and "read-only" in doc["text"], text
    assert (await services.state.site_state("hq")).get("paused") != "1"
    assert (await services.queue.stats())["length"] == 0


async def test_an_unknown_teams_user_is_refused(
    bot: tuple[str, Services], http: aiohttp.ClientSession
) -> None:
    url, _ = bot
    status, doc = await post(http, url, activity("status", user="29:someone-else"))
    assert status == 200 and doc["text"].startswith("not allowed")

"""Discord interactions through the real public route: Ed25519 with real keys (cryptography),
PING, slash commands, buttons, deferred answers and their follow-ups."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from redis.asyncio import Redis

from bot.chat.approvals import Approvals
from bot.chat.discord import INTERACTIONS_PATH
from bot.http import create_public_app
from bot.services import Services
from tests.chat.chat_env import (
    DISCORD_APPROVER,
    DISCORD_NOBODY,
    DISCORD_OPERATOR,
    HeldTarget,
    chat_settings,
    serve,
)
from tests.chat.chat_receiver import Receiver
from tests.helpers import eventually

APP_ID = "123456789012345678"


class Signer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_hex = raw.hex()

    def headers(self, body: bytes, ts: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if ts is None else ts)
        signature = self.key.sign(stamp.encode() + body).hex()
        return {
            "Content-Type": "application/json",
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": stamp,
        }


@pytest.fixture
async def held() -> AsyncIterator[HeldTarget]:
    target = HeldTarget()
    await target.start()
    try:
        yield target
    finally:
        await target.close()


@pytest.fixture
async def bot(
    prefix: str, tmp_path: Path, redis_url: str, held: HeldTarget, receiver: Receiver
) -> AsyncIterator[tuple[str, Services, Signer]]:
    signer = Signer()
    discord = {
        "enabled": True,
        "application_id": APP_ID,
        "public_key": signer.public_hex,
        "api_url": receiver.url("/api/v10"),
    }
    settings = chat_settings(prefix, tmp_path, held.url, discord=discord)
    services = Services.build(settings, Redis.from_url(redis_url))
    runner, base = await serve(create_public_app(services))
    try:
        yield base + INTERACTIONS_PATH, services, signer
    finally:
        await runner.cleanup()
        await services.redis.aclose()


def command(text: str, user: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": 2,
        "application_id": APP_ID,
        "token": "interaction-token-" + uuid.uuid4().hex[:8],
        "member": {"user": {"id": user, "username": "someone"}},
        "data": {"name": "tunnelwarden", "options": [{"name": "text", "type": 3, "value": text}]},
    }


def click(custom_id: str, user: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": 3,
        "application_id": APP_ID,
        "token": "interaction-token-" + uuid.uuid4().hex[:8],
        "user": {"id": user, "username": "someone"},
        "data": {"custom_id": custom_id, "component_type": 2},
    }


async def post(
    http: aiohttp.ClientSession, url: str, signer: Signer, doc: Any, **kw: Any
) -> tuple[int, Any]:
    body = json.dumps(doc).encode()
    async with http.post(url, data=body, headers=signer.headers(body, **kw)) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def test_ping_pong_and_invalid_signatures_get_401(
    bot: tuple[str, Services, Signer], http: aiohttp.ClientSession
) -> None:
    url, _, signer = bot
    assert await post(http, url, signer, {"type": 1}) == (200, {"type": 1})
    body = b'{"type":1}'
    bad = {**signer.headers(body), "X-Signature-Ed25519": "00" * 64}
    async with http.post(url, data=body, headers=bad) as response:
        assert response.status == 401
    other = Signer()  # someone else's key
    assert (await post(http, url, other, {"type": 1}))[0] == 401
    assert (await post(http, url, signer, {"type": 1}, ts=int(time.time()) - 301))[0] == 401
    async with http.post(url, data=body) as response:
        assert response.status == 401
    big = b'{"type":1,"x":"' + b"a" * (300 * 1024) + b'"}'
    async with http.post(url, data=big, headers=signer.headers(big)) as response:
        assert response.status == 413


async def test_slash_command_answers_in_the_response(
    bot: tuple[str, Services, Signer], http: aiohttp.ClientSession
) -> None:
    url, services, signer = bot
    status, doc = await post(http, url, signer, command("pause hq 1h", DISCORD_OPERATOR))
    assert status == 200 and doc["type"] == 4
    assert "hq paused until" in doc["data"]["content"]
    assert (await services.state.site_state("hq"))["paused.by"] == f"discord:{DISCORD_OPERATOR}"
    status, doc = await post(http, url, signer, command("resume hq", DISCORD_NOBODY))
    assert doc["type"] == 4 and doc["data"]["content"].startswith("not allowed")
    assert doc["data"]["flags"] == 64  # a refusal is shown to the asker alone


async def test_a_replayed_interaction_is_refused(
    bot: tuple[str, Services, Signer], http: aiohttp.ClientSession
) -> None:
    url, _, signer = bot
    doc = command("status", DISCORD_OPERATOR)
    assert (await post(http, url, signer, doc))[0] == 200
    assert (await post(http, url, signer, doc))[0] == 401


async def test_slow_work_is_deferred_then_followed_up(
    bot: tuple[str, Services, Signer],
    http: aiohttp.ClientSession,
    held: HeldTarget,
    receiver: Receiver,
) -> None:
    url, _, signer = bot
    doc = command("probe hq", DISCORD_OPERATOR)
    status, answer = await post(http, url, signer, doc)
    assert status == 200 and answer == {"type": 5}  # deferred: the ack came first
    assert held.answered == 0 and receiver.requests == []
    held.release()
    path = f"/api/v10/webhooks/{APP_ID}/{doc['token']}/messages/@original"
    (edit,) = await eventually(lambda: _at(receiver, path))
    assert "1/1 probes up" in edit.json()["content"]


async def _at(receiver: Receiver, path: str) -> list[Any]:
    return receiver.at(path)


async def test_buttons_dry_run_apply_and_approval(
    bot: tuple[str, Services, Signer], http: aiohttp.ClientSession
) -> None:
    url, services, signer = bot
    _, doc = await post(http, url, signer, command("playbook noop hq", DISCORD_OPERATOR))
    assert doc["type"] == 4 and "dry-run of noop on hq" in doc["data"]["content"]
    (row,) = doc["data"]["components"]
    (apply_button,) = row["components"]
    assert apply_button["custom_id"].startswith("tw_apply:")
    _, applied = await post(http, url, signer, click(apply_button["custom_id"], DISCORD_OPERATOR))
    assert applied["type"] == 7 and "queued" in applied["data"]["content"]
    assert (await services.queue.stats())["length"] == 1
    approvals = Approvals(services.redis, services.settings.redis.prefix)
    approval = await approvals.create("hq", "noop", {}, f"discord:{DISCORD_OPERATOR}")
    _, refused = await post(http, url, signer, click(f"tw_approve:{approval.id}", DISCORD_NOBODY))
    assert refused["type"] == 4 and refused["data"]["content"].startswith("not allowed")
    _, own = await post(http, url, signer, click(f"tw_approve:{approval.id}", DISCORD_OPERATOR))
    assert "not allowed" in own["data"]["content"]
    _, ok = await post(http, url, signer, click(f"tw_approve:{approval.id}", DISCORD_APPROVER))
    assert ok["type"] == 7  # the request message is updated: its buttons go
    assert ok["data"]["components"] == []
    assert "approved by someone" in ok["data"]["content"]
    decided = await approvals.get(approval.id)
    assert decided is not None and decided.status == "approved"
    assert (await services.queue.stats())["length"] == 2

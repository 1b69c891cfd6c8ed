"""Secrets never appear in logs, dead letters, history or chat messages."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from aiohttp import web
from cryptography.fernet import Fernet

from bot.events import Event
from bot.services import Services
from tests.conftest import start_worker
from tests.helpers import eventually

CONFIG = """
[worker]
visibility_timeout = 0.5
reclaim_interval = 0.1
max_deliveries = 2
block_ms = 100

[[notify]]
kind = "webhook"
url_env = "HOOK_URL"
"""


async def test_a_secret_in_errors_is_masked_everywhere(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    secret = Fernet.generate_key().decode()  # the journal key: a configured secret
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/tok-0123456789abcdef"
    config = tmp_path / "tw.toml"
    config.write_text(CONFIG)
    try:
        poison = Event.new("test.fail", "home", source="test", data={"message": f"boom {secret}"})
        await services.queue.publish(poison)
        asked = Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={"playbook": f"x{secret}", "params": {}},
        )
        await services.queue.publish(asked)
        chat = Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={"playbook": "notify", "params": {"message": f"key is {secret}"}},
        )
        await services.queue.publish(chat)
        worker = start_worker(
            procs,
            config,
            redis_url,
            prefix,
            "w",
            capture_logs=True,
            TUNNELWARDEN_SECURITY__JOURNAL_KEY=secret,
            HOOK_URL=hook_url,
        )
        dead = await eventually(lambda: services.queue.dead_letters(), within=20)
        records = await eventually(lambda: _two(services), within=20)
        await eventually(lambda: _some(received), within=10)
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        logs = (worker.stderr.read() if worker.stderr else b"").decode()
        assert code == 0, logs[-3000:]
    finally:
        await runner.cleanup()

    assert "RuntimeError: boom ***" in dead[0].reason
    failed = next(r for r in records if r.outcome == "failed")
    assert failed.playbooks[0].error_code == "UnknownPlaybook"
    assert "unknown playbook 'x***'" in (failed.playbooks[0].error or "")
    message = json.loads(received[0])
    assert message["summary"] == "key is [REDACTED]"
    assert "boom ***" in logs
    everything = (
        logs
        + dead[0].reason
        + json.dumps(dead[0].raw)
        + json.dumps([r.model_dump() for r in records])
    )
    journals = [await services.state.journal("home", r.run_id) for r in records]
    everything += json.dumps([[e.__dict__ for e in j] for j in journals])
    assert secret not in everything
    assert secret not in received[0].decode()
    assert "tok-0123456789abcdef" not in logs, "the webhook URL's token leaked into the logs"


async def _two(services: Services) -> list:  # type: ignore[type-arg]
    records = await services.state.history("home", 10)
    return records if len(records) >= 2 else []


async def _some(items: list[bytes]) -> bool:
    return bool(items)


def encodings(user: str, secret: str) -> dict[str, str]:
    """The forms a secret takes on its way through URLs, headers and JSON."""
    import base64
    import re
    from urllib.parse import quote, quote_plus

    return {
        "plain": secret,
        "percent": quote(secret, safe=""),
        "percent-lower": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
        "plus": quote_plus(secret),
        "basic": base64.b64encode(f"{user}:{secret}".encode()).decode(),
        "base64": base64.b64encode(secret.encode()).decode(),
        "json": json.dumps(secret)[1:-1],
    }


async def test_every_encoding_of_a_secret_is_masked_everywhere(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    secret = 'Pa$$/w:rd+ä "9'  # a router's push password: every encoding differs
    forms = encodings("home", secret)
    assert len(set(forms.values())) == len(forms)
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    config = tmp_path / "tw.toml"
    config.write_text(
        CONFIG
        + '\n[sites.home.push]\nhostname = "home.example.net"\nusername = "home"\n'
        + 'password_env = "PUSH_PW"\n'
    )
    text = " ".join(f"{k}={v}" for k, v in forms.items())
    try:
        poison = Event.new("test.fail", "home", source="test", data={"message": f"boom {text}"})
        await services.queue.publish(poison)
        asked = Event.new(
            "playbook.requested", "home", source="test", data={"playbook": f"x {text}"}
        )
        await services.queue.publish(asked)
        chat = Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={"playbook": "notify", "params": {"message": f"see {text}"}},
        )
        await services.queue.publish(chat)
        worker = start_worker(
            procs,
            config,
            redis_url,
            prefix,
            "w",
            capture_logs=True,
            PUSH_PW=secret,
            HOOK_URL=f"http://127.0.0.1:{runner.addresses[0][1]}/hook",
        )
        dead = await eventually(lambda: services.queue.dead_letters(), within=20)
        records = await eventually(lambda: _two(services), within=20)
        await eventually(lambda: _some(received), within=10)
        worker.send_signal(signal.SIGTERM)
        logs = worker.communicate(timeout=20)[1].decode()  # reads the pipe while it stops
    finally:
        await runner.cleanup()
    journals = [await services.state.journal("home", r.run_id) for r in records]
    places = {
        "logs": logs,
        "dead letters": dead[0].reason + json.dumps(dead[0].raw),
        "history": json.dumps([r.model_dump() for r in records]),
        "journals": json.dumps([[e.__dict__ for e in j] for j in journals]),
        "chat": received[0].decode(),
    }
    assert "boom" in places["logs"] and "boom" in places["dead letters"]
    for where, content in places.items():
        for name, form in forms.items():
            assert form not in content, f"{name} form of the secret in {where}"


async def test_a_shared_key_learnt_at_run_time_is_masked_in_errors(
    prefix: str, tmp_path: Path, redis_url: str
) -> None:
    """ARM quotes a connection's shared key in an error: history and journal get it masked
    (the key is registered with the redactor the moment it is read), and so does chat: a
    message quoting the key reaches a local chat receiver with it masked."""
    from redis.asyncio import Redis

    from bot.chat.models import Notification, Severity
    from bot.models import PlaybookCall
    from bot.sim.arm import start_arm_sim
    from tests.azure_world import SHARED_KEY, azure_settings, world
    from tests.chat.chat_receiver import Receiver
    from tests.test_azure_playbooks import execute

    w = world()
    sim, port = await start_arm_sim(w)
    chat = Receiver()
    await chat.start()
    client = Redis.from_url(redis_url)
    settings = azure_settings(
        prefix,
        tmp_path,
        port,
        notify=[{"kind": "webhook", "url": f"http://127.0.0.1:{chat.port}/hook", "name": "ops"}],
    )
    services = Services.build(settings, client)
    assert services.redact(SHARED_KEY) == SHARED_KEY, "not a configured secret: learnt later"
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])
    w.add_fault(
        kind="error",
        method="PUT",
        path="connections/conn-home$",
        status=400,
        code="InvalidSharedKey",
        message=f"the shared key {SHARED_KEY} does not match the policy",
        count=5,
    )
    try:
        record = await execute(services, PlaybookCall(name="recreate-connection", confirmed=True))
        journal = await services.state.journal("home", record.run_id)
        quoted = f"ARM said: the shared key {SHARED_KEY} does not match the policy"
        await services.notifications.send(
            Notification(
                severity=Severity.CRITICAL,
                title=f"home: {quoted}",
                site="home",
                summary=quoted,
                facts={"error": quoted},
                next_step=quoted,
            )
        )
    finally:
        await services.azure.close()
        await services.notifications.close()
        await client.aclose()
        await sim.cleanup()
        await chat.close()
    assert len(chat.requests) == 1, "the message reached the chat receiver"
    delivered = chat.requests[0].body.decode()
    assert "ARM said: the shared key [REDACTED] does not match" in json.dumps(
        chat.requests[0].json()
    )
    assert SHARED_KEY not in delivered
    assert record.outcome == "failed"
    error = record.playbooks[0].error or ""
    assert "the shared key *** does not match" in error
    everything = json.dumps(record.model_dump()) + json.dumps([e.__dict__ for e in journal])
    assert SHARED_KEY not in everything

"""Real worker processes against the ARM simulator: fencing, crash-resume, journal keys.

- A worker paused (SIGSTOP) past its lock's TTL while another finishes the site makes, once
  resumed (SIGCONT), no ARM write and no Redis write.
- A worker killed in the middle of an LNG update: the resumed run records what really
  happened (the change), and the team hears about it.
- A worker that lacks the journal key cannot finish a re-create; it leaves the run for one
  that has the key (rotated keys: new first, old still read), and nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from bot.events import Event
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.world import World
from bot.sources.report import IpReporter
from tests.azure_world import NEW_IP, OLD_IP, RG, SHARED_KEY, SUB, world
from tests.conftest import start_worker
from tests.helpers import eventually
from tests.test_azure_playbooks import connections, lng_of, settings_of
from tests.test_ip_change_e2e import Receiver, receiver

__all__ = ["receiver"]

CONFIG = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
max_deliveries = 20
block_ms = 100
grace_period = 2

[scheduler]
tick = 0.2

[policies]
lock_ttl = 1.5
tunnel_timeout = {tunnel_timeout}
tunnel_poll = 0.1
retry_base_delay = 60
max_changes_per_hour = 0

[azure]
cloud = "sim"
endpoint = "http://127.0.0.1:{port}"
subscription_id = "{sub}"
polling_interval = 0.1
retry_backoff_factor = 0.01

[sites.home]
resource_group = "{rg}"
local_network_gateway = "lng-home"
connection = "conn-home"
"""

NOTIFY = """
[[notify]]
kind = "webhook"
name = "ops"
url_env = "TW_TEST_HOOK"
"""


@pytest.fixture
async def sim() -> AsyncIterator[tuple[World, int]]:
    w = world()
    runner, port = await start_arm_sim(w)
    try:
        yield w, port
    finally:
        await runner.cleanup()


def config(tmp_path: Path, port: int, *, tunnel_timeout: float = 3.0, notify: bool = False) -> Path:
    path = tmp_path / "tw.toml"
    text = CONFIG.format(port=port, sub=SUB, rg=RG, tunnel_timeout=tunnel_timeout)
    path.write_text(text + (NOTIFY if notify else ""))
    return path


async def site_keys(services: Services) -> dict[str, Any]:
    """Everything stored under the site's hash tag (state, lock, fence, runs, journals,
    history, done keys, changes): what a fenced-out worker must not touch."""
    r = services.redis
    out: dict[str, Any] = {}
    async for raw in r.scan_iter(match=f"{services.keys.prefix}:site:{{home}}:*", count=1000):
        key = raw.decode()
        kind = (await r.type(key)).decode()
        if kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "list":
            out[key] = await r.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "stream":
            out[key] = await r.xrange(key)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(await r.smembers(key))  # type: ignore[misc]
        else:
            out[key] = await r.get(key)
    return out


async def test_a_worker_paused_past_its_lock_writes_nothing_once_resumed(
    sim: tuple[World, int],
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    w, port = sim
    path = config(tmp_path, port)
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    event = Event.new("site.reconcile", "home", source="test")
    await services.queue.publish(event)
    first = start_worker(procs, path, redis_url, prefix, "first", capture_logs=True)

    async def waiting_for_connected() -> bool:
        journal = await services.state.journal("home", event.id)
        return any(e.step == ":playbook" and e.phase == "start" for e in journal)

    await eventually(waiting_for_connected, within=30, every=0.01)
    first.send_signal(signal.SIGSTOP)  # a GC pause, a frozen VM: the lock runs out
    try:
        assert w.counters.totals().writes == 0
        await asyncio.sleep(2.5)  # past the lock TTL (1.5 s) and the visibility timeout (1 s)
        second = start_worker(procs, path, redis_url, prefix, "second")
        record = await eventually(
            lambda: services.state.recorded("home", event.id), within=30, every=0.05
        )
        assert record.outcome == "ok" and record.worker == "second", record
        assert record.fence > 1
        assert w.connection_status("conn-home") == "Connected"
        assert w.counters.totals().writes == 1  # the second worker's one reset
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
        # The tunnel drops again: a worker that still believed it held the site would reset.
        w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
        writes = w.counters.totals().writes
        before = await site_keys(services)
    finally:
        first.send_signal(signal.SIGCONT)
    await asyncio.sleep(5)  # its wait times out, it would go on to reset-connection
    if first.poll() is not None:
        _, err = first.communicate(timeout=5)
        raise AssertionError(f"the paused worker must survive losing its lock: {err.decode()}")
    assert w.counters.totals().writes == writes, "a fenced-out worker wrote to ARM"
    assert await site_keys(services) == before, "a fenced-out worker wrote to Redis"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=20)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any("no longer ours" in e["msg"] or "lost" in e["msg"] for e in logs), logs


async def test_a_change_interrupted_by_a_crash_is_recorded_and_told(
    sim: tuple[World, int],
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    receiver: Receiver,
) -> None:
    w, port = sim
    # The LNG update takes a while (its operation completes after 3 s): time to crash in it.
    w.configure(lro_polls=1000, lro_settle_seconds=3.0)
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    path = config(tmp_path, port, notify=True)
    reporter = IpReporter(services, allow_documentation=True)
    seen = await reporter.observe("home", NEW_IP, "v4", "dyndns2")
    assert seen.status == "good"
    hook = {"TW_TEST_HOOK": receiver.url}
    first = start_worker(procs, path, redis_url, prefix, "first", capture_logs=True, **hook)

    async def in_update() -> bool:
        journal = await services.state.journal("home", seen.event_id)
        return any(e.step == "update-lng" and e.phase == "start" for e in journal)

    async def put_sent() -> bool:
        return bool(lng_of(w)["properties"]["provisioningState"] == "Updating")

    try:
        await eventually(in_update, within=30, every=0.01)
    except AssertionError:
        first.terminate()
        raise AssertionError(first.communicate(timeout=10)[1].decode()) from None
    await eventually(put_sent, within=10, every=0.005)
    first.send_signal(signal.SIGKILL)  # the PUT went out; its operation is still running
    first.wait(10)

    second = start_worker(procs, path, redis_url, prefix, "second", capture_logs=True, **hook)
    try:
        record = await eventually(
            lambda: services.state.recorded("home", seen.event_id), within=30, every=0.05
        )
    except AssertionError:
        second.terminate()
        raise AssertionError(second.communicate(timeout=10)[1].decode()[-3000:]) from None
    assert record.outcome == "ok", record
    assert record.attempt == 2 and record.worker == "second"
    update = record.playbooks[0]
    assert (update.playbook, update.outcome) == ("update-local-gateway", "ok")
    assert [str(c) for c in update.changes] == [
        f"lng lng-home gatewayIpAddress: {OLD_IP} -> {NEW_IP}"
    ], "the resumed run records the change the crashed one made"
    assert lng_of(w)["properties"]["provisioningState"] == "Succeeded"
    assert w.connection_status("conn-home") == "Connected"
    assert w.counters.get(lng_of(w)["id"]).writes == 1, "the PUT was not repeated"
    await eventually(lambda: _any(receiver.posts), within=10)
    (message,) = receiver.posts
    assert message["severity"] == "info" and NEW_IP in message["title"]
    assert message["facts"]["Old IP"] == OLD_IP


async def _any(items: list[Any]) -> bool:
    return bool(items)


def _admin_port(proc: subprocess.Popen[bytes]) -> int:
    """The port a worker's admin listener took (it logs it at start; any free port)."""
    assert proc.stderr is not None
    for raw in iter(proc.stderr.readline, b""):
        line = raw.decode(errors="replace")
        if line.startswith("{"):
            msg = str(json.loads(line).get("msg", ""))
            if msg.startswith("admin: listening on "):
                return int(msg.rsplit(":", 1)[1])
    raise AssertionError("the worker stopped before its admin listener started")


async def _metric(port: int, name: str) -> float | None:
    """A counter's value from a worker's admin listener (None until it answers)."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1]) or None
    return None


async def test_a_worker_without_the_journal_key_leaves_the_run_to_one_that_has_it(
    sim: tuple[World, int],
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    receiver: Receiver,
) -> None:
    w, port = sim
    w.configure(lro_polls=6, lro_settle_seconds=2.0)
    before = settings_of(connections(w)[0])
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])  # only re-creating helps
    path = config(tmp_path, port, notify=True)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    event = Event.new(
        "playbook.requested",
        "home",
        source="test",
        data={"playbook": "recreate-connection", "confirm_destructive": True},
    )
    await services.queue.publish(event)
    first = start_worker(
        procs,
        path,
        redis_url,
        prefix,
        "first",
        capture_logs=True,
        TUNNELWARDEN_SECURITY__JOURNAL_KEY=old,
        TW_TEST_HOOK=receiver.url,
    )

    async def deleting() -> bool:
        journal = await services.state.journal("home", event.id)
        return any(e.step == "delete-connection" and e.phase == "start" for e in journal)

    try:
        await eventually(deleting, within=30, every=0.01)
    except AssertionError:
        first.terminate()
        raise AssertionError(first.communicate(timeout=10)[1].decode()[-3000:]) from None
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    # The key was rotated, and this worker was given only the new one.
    second = start_worker(
        procs,
        path,
        redis_url,
        prefix,
        "second",
        capture_logs=True,
        TUNNELWARDEN_SECURITY__JOURNAL_KEY=new,
        TW_TEST_HOOK=receiver.url,
    )
    admin = await asyncio.wait_for(asyncio.to_thread(_admin_port, second), 30)

    async def noted() -> str | None:
        entries = await services.redis.xrange(services.keys.stream)
        error = await services.queue.last_error(entries[0][0].decode())
        return error if error and "JournalKeyUnavailable" in error else None

    try:
        note = await eventually(noted, within=30)
    except AssertionError:
        second.terminate()
        raise AssertionError(second.communicate(timeout=10)[1].decode()) from None
    assert "rotated away" in note
    assert await services.state.recorded("home", event.id) is None, "not given up"
    # ...and it raised the alarm: a chat message saying what to do, and the metric.
    await eventually(lambda: _any(receiver.posts), within=10)
    alert = receiver.posts[0]
    assert alert["severity"] == "critical" and alert["site"] == "home"
    assert alert["title"] == "home: a run cannot finish on worker second"
    assert "rotated away" in alert["summary"]
    assert "security.journal_key" in (alert["next_step"] or "")

    async def redelivered() -> float | None:
        value = await _metric(admin, "tunnelwarden_journal_key_missing_total")
        return value if value is not None and value >= 2 else None

    await eventually(redelivered, within=30)  # the entry came back to it: told once only
    assert len(receiver.posts) == 1, receiver.posts
    assert {p["severity"] for p in receiver.posts} == {"critical"}, "no success told yet"
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0

    start_worker(  # rotation done right: new key first, old key still there to read
        procs,
        path,
        redis_url,
        prefix,
        "third",
        TUNNELWARDEN_SECURITY__JOURNAL_KEY=f"{new},{old}",
        TW_TEST_HOOK=receiver.url,
    )
    record = await eventually(
        lambda: services.state.recorded("home", event.id), within=30, every=0.05
    )
    assert record.outcome == "ok", record
    assert record.worker == "third"
    (conn,) = connections(w)
    assert settings_of(conn) == before
    assert conn["sim"]["sharedKey"] == SHARED_KEY
    assert w.connection_status("conn-home") == "Connected"
    assert time.time() - record.finished_at < 30

"""Redis faults are weather: the bot stays up, says it is not ready, and carries on after.

Each test runs its own ``redis-server`` (on a unix socket in a temporary directory) so it can
stop and start it under a running bot; the bot runs in this event loop as ``tunnelwarden run``
assembles it, with its admin listener, push endpoint, worker and scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.app import run_process
from bot.config import Settings
from bot.embedded import find_redis_server
from bot.events import Event
from bot.scheduler import member
from bot.services import Services
from bot.sim.arm import start_arm_sim
from tests.azure_world import NEW_IP, azure_settings, world
from tests.conftest import SOCKET_NAME, make_settings, start_private_redis
from tests.helpers import eventually, free_port
from tests.test_ip_change_e2e import HOST, PASSWORD, Receiver, push, receiver, running_bot

__all__ = ["receiver"]


@dataclass
class PrivateRedis:
    directory: Path
    extra: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        self.proc, self.url = start_private_redis(self.directory, *self.extra)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): with AOF on, everything written is on disk."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis", ("--appendonly", "yes", "--appendfsync", "always"))
    server.directory.mkdir()
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.stop()


@contextlib.asynccontextmanager
async def bot(settings: Settings, redis_url: str) -> AsyncIterator[Services]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_process(
            settings, redis_url=redis_url, worker=True, http=True, stop=stop, handle_signals=False
        )
    )
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    admin = f"http://127.0.0.1:{settings.admin.port}"
    try:
        await eventually(lambda: _status(admin, 200), within=15)
        yield services
    finally:
        stop.set()
        assert await task == 0
        await client.aclose()


async def _status(admin: str, want: int, path: str = "/readyz") -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(admin + path) as resp:
            return resp.status == want
    except aiohttp.ClientError:
        return False


async def test_a_redis_restart_under_a_running_bot(tmp_path: Path, aof_redis: PrivateRedis) -> None:
    """The bot stays up through the outage, /readyz goes 503 then 200, events queued before
    the restart are each handled exactly once, and a push afterwards converges."""
    w = world()
    sim, sim_port = await start_arm_sim(w)
    admin_port, http_port = free_port(), free_port()
    settings = azure_settings(
        "tw",
        tmp_path,
        sim_port,
        admin={"port": admin_port},
        http={"port": http_port},
        policies={"tunnel_timeout": 2.0, "tunnel_poll": 0.05},
    )
    settings.sites["home"].push = (
        type(settings.sites["home"])
        .model_validate({"push": {"hostname": HOST, "username": "home", "password": PASSWORD}})
        .push
    )
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        async with bot(settings, aof_redis.url) as services:
            events = [
                Event.new("test.sleep", f"site{i}", source="test", data={"seconds": 0.3})
                for i in range(6)
            ]
            for event in events:
                await services.queue.publish(event)
            aof_redis.stop()  # runs are in flight; Redis goes away for a few seconds
            await eventually(lambda: _status(admin, 503), within=10)
            assert await _status(admin, 200, "/healthz"), "the process must stay up"
            await asyncio.sleep(2)
            aof_redis.start()
            await eventually(lambda: _status(admin, 200), within=20)

            async def all_recorded() -> bool:
                found = [await services.state.recorded(e.site, e.id) for e in events]
                return all(r is not None and r.outcome == "ok" for r in found)

            await eventually(all_recorded, within=40)
            for event in events:
                history = await services.state.history(event.site, 10)
                assert [r.run_id for r in history] == [event.id], "exactly once"
            # A push after the restart converges.
            w.set_device("fritzbox-home", public_ip=NEW_IP)
            assert await push(f"http://127.0.0.1:{http_port}", NEW_IP) == f"good {NEW_IP}"

            async def converged() -> bool:
                state = await services.state.site_state("home")
                return (
                    state.get("reconcile.status") == "converged"
                    and w.connection_status("conn-home") == "Connected"
                )

            await eventually(converged, within=20)
    finally:
        await sim.cleanup()


async def test_a_bot_started_while_redis_is_down_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis not there yet at start-up (a private redis-server started later): the process
    stays up, /readyz says 503 until Redis answers, then 200, and an event is processed."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, ())
    url = f"unix://{directory / SOCKET_NAME}"  # where the server will listen
    admin_port = free_port()
    settings = make_settings(
        "tw", tmp_path, admin={"port": admin_port}, http={"port": free_port()}, sites={"home": {}}
    )
    admin = f"http://127.0.0.1:{admin_port}"
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="tunnelwarden.worker"):
        task = asyncio.create_task(  # what `tunnelwarden run` assembles
            run_process(
                settings,
                redis_url=url,
                worker=True,
                http=True,
                sources=True,
                stop=stop,
                handle_signals=False,
            )
        )
        client = Redis.from_url(url)
        services = Services.build(settings, client)
        try:
            await eventually(lambda: _status(admin, 503), within=15)

            async def retried() -> bool:
                return any(
                    "creating the consumer group failed" in r.getMessage() for r in caplog.records
                )

            await eventually(retried, within=10)
            assert not task.done(), "the process must stay up"
            assert await _status(admin, 200, "/healthz")
            async with aiohttp.ClientSession() as http, http.get(f"{admin}/readyz") as resp:
                checks = (await resp.json())["checks"]
            assert checks["worker"] == "not consuming" and checks["redis"] != "ok", checks
            server.start()
            await eventually(lambda: _status(admin, 200), within=20)
            event = Event.new("test.noop", "home", source="test")
            await services.queue.publish(event)
            record = await eventually(lambda: services.state.recorded("home", event.id), within=20)
            assert record.outcome == "no_changes"
        finally:
            stop.set()
            assert await task == 0
            await client.aclose()
            if server.proc and server.proc.poll() is None:
                server.stop()


async def test_redis_that_came_back_empty_is_noticed_and_the_bot_carries_on(
    tmp_path: Path,
) -> None:
    """Without persistence a restart loses everything: the bot warns at start, re-creates
    its consumer group and schedule, and works again."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, ())
    server.start()
    admin_port = free_port()
    settings = make_settings(
        "tw", tmp_path, admin={"port": admin_port}, sites={"home": {}}, scheduler={"tick": 0.2}
    )
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        async with bot(settings, server.url) as services:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{admin}/readyz") as resp:
                    assert (await resp.json())["redis_persistence"] == "none"
                async with http.get(f"{admin}/metrics") as resp:
                    assert 'tunnelwarden_redis_persistence{mode="none"} 1.0' in await resp.text()
            server.stop()
            server.start()  # empty: no AOF, no RDB
            await eventually(lambda: _status(admin, 200), within=20)
            event = Event.new("test.noop", "home", source="test")
            await services.queue.publish(event)
            record = await eventually(lambda: services.state.recorded("home", event.id), within=20)
            assert record.outcome == "no_changes"
            assert await _due(services, "site.reconcile", "home") is not None
            async with aiohttp.ClientSession() as http, http.get(f"{admin}/metrics") as resp:
                assert "tunnelwarden_redis_data_lost_total 1.0" in await resp.text()
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()


async def test_admin_floods_do_not_starve_pushes(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """300 concurrent requests to the admin listener while 20 routers push: every push is
    answered good (the admin routes cannot take the Redis connections)."""
    async with running_bot(tmp_path, prefix, redis_url, receiver) as b:
        paths = ["/readyz", "/metrics", "/runs/home/nope"] * 100

        async def admin_get(path: str) -> int:
            async with aiohttp.ClientSession() as http, http.get(b.admin + path) as resp:
                await resp.read()
                return resp.status

        flood = [asyncio.create_task(admin_get(p)) for p in paths]
        pushes = [
            asyncio.create_task(push(b.base, f"203.0.113.{50 + i}", source=f"127.0.0.{20 + i}"))
            for i in range(20)
        ]
        answers = await asyncio.gather(*pushes)
        statuses = await asyncio.gather(*flood)
        assert all(a.startswith("good ") for a in answers), answers
        assert set(statuses) <= {200, 404, 503}, set(statuses)
        assert statuses.count(500) == 0


async def test_huge_and_deeply_nested_entries_are_dead_lettered_on_first_delivery(
    services: Services,
) -> None:
    from bot.app import build_worker

    huge = Event.new("test.noop", "home", source="test", data={"pad": "A" * 1_000_000})
    nested = '{"schema": 1, "data": ' + "[" * 20_000 + "]" * 20_000 + "}"
    entries = [
        await services.queue.publish_fields({"event": huge.to_wire()}),
        await services.queue.publish_fields({"event": nested}),
    ]
    ok = Event.new("test.noop", "home", source="test")
    await services.queue.publish(ok)
    worker = build_worker(services, "w")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: services.state.recorded("home", ok.id), within=10)
        dead = await eventually(_dead(services, 2), within=10)
    finally:
        stop.set()
        await task
    by_entry = {d.entry_id: d for d in dead}
    assert by_entry[entries[0]].deliveries == 1 and "bytes; the limit is" in (
        by_entry[entries[0]].reason
    )
    assert by_entry[entries[1]].deliveries == 1 and "nested 20001 deep" in (
        by_entry[entries[1]].reason
    )
    stored = json.dumps(by_entry[entries[0]].raw)
    assert len(stored) < 10_000, "a huge entry is not kept whole"


def _dead(services: Services, n: int) -> Any:
    async def check() -> Any:
        rows = await services.queue.dead_letters()
        return rows if len(rows) >= n else None

    return check


async def test_a_worker_survives_redis_going_away_and_its_timers_come_back(
    services: Services,
) -> None:
    """The scheduler re-creates every configured site's resync entry if they vanish."""
    await services.scheduler.ensure_resync(
        [("site.reconcile", "home"), ("site.reconcile", "office")], interval=900
    )
    await services.redis.delete(services.keys.schedule)
    added = await services.scheduler.ensure_resync(
        [("site.reconcile", "home"), ("site.reconcile", "office")], interval=900
    )
    assert added == 2
    due = await _due(services, "site.reconcile", "home")
    assert due is not None and time.time() <= due <= time.time() + 900


async def _due(services: Services, event_type: str, site: str) -> float | None:
    """When the scheduler will publish ``event_type`` for ``site`` (None: not scheduled)."""
    return dict(await services.scheduler.entries()).get(member(event_type, site))


async def test_a_redis_error_while_dead_lettering_does_not_end_reclaiming(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses the read of an entry's last error (an ACL that denies HGET) while the
    reclaim loop gives the entry up: the loop logs it and goes on, and once Redis allows the
    read again the entry is dead-lettered."""
    from bot.app import build_worker
    from bot.redisconn import from_url
    from tests.test_redis_urls import BASE, start, wait_port

    binary = find_redis_server()
    assert binary
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    start(procs, binary, "--port", str(port), "--dir", str(tmp_path), *BASE)
    (proc,) = procs
    admin = Redis(host="127.0.0.1", port=port)
    settings = make_settings("tw", tmp_path, worker={"max_deliveries": 1})
    client = from_url(f"redis://bot:bot-Pw-5521@127.0.0.1:{port}/0", settings.redis)
    try:
        wait_port(port, proc)
        await admin.execute_command("ACL", "SETUSER", "bot", "on", ">bot-Pw-5521", "~*", "&*")
        await admin.execute_command("ACL", "SETUSER", "bot", "+@all", "-hget")
        services = Services.build(settings, client)
        await services.queue.ensure_group()
        event = Event.new("test.noop", "home", source="test")
        await services.queue.publish(event)
        (taken,) = await services.queue.read("ghost", 1, 1000)  # a worker that then died
        worker = build_worker(services, "w")
        stop = asyncio.Event()
        with caplog.at_level(logging.WARNING, logger="tunnelwarden.worker"):
            task = asyncio.create_task(worker.run(stop))
            try:

                async def refused() -> bool:
                    return any(
                        f"dead-lettering {taken.entry_id} failed" in r.getMessage()
                        for r in caplog.records
                    )

                await eventually(refused, within=15)
                await admin.execute_command("ACL", "SETUSER", "bot", "+hget")
                dead = await eventually(_dead(services, 1), within=15)
                assert not task.done(), "the worker is still running"
            finally:
                stop.set()
                await task
        assert [d.entry_id for d in dead] == [taken.entry_id]
        assert "gave up after" in dead[0].reason
    finally:
        await client.aclose()
        await admin.aclose()
        proc.terminate()
        proc.wait(10)

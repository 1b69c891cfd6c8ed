"""The whole story: a router pushes its new IP (dyndns2) → Azure follows → tunnel back → chat.

Everything is real and on loopback: the bot process pieces (HTTP server, worker) run in this
event loop, the ARM simulator serves the real SDK, and a local webhook receiver stands in for
the chat platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import run_process
from bot.config import Settings
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.world import World
from tests.azure_world import NEW_IP, OLD_IP, azure_settings, world
from tests.helpers import eventually, free_port
from tests.test_azure_playbooks import connections, lng_of

HOST = "home.example.net"
PASSWORD = "router-push-pw-123"


@dataclass
class Receiver:
    """A chat webhook endpoint on loopback that records what it is sent."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()

    async def hook(request: web.Request) -> web.Response:
        got.posts.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield got
    await runner.cleanup()


@dataclass
class Bot:
    world: World
    settings: Settings
    services: Services
    base: str
    sim: web.AppRunner
    sim_port: int
    admin: str  # the admin listener's base URL

    async def arm_down(self) -> None:
        """Azure Resource Manager unreachable: the simulator stops listening."""
        await self.sim.cleanup()

    async def arm_up(self) -> None:
        """ARM is back, on the same address, with the same world."""
        self.sim, _ = await start_arm_sim(self.world, port=self.sim_port)


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path,
    prefix: str,
    redis_url: str,
    receiver: Receiver,
    sources: list[dict[str, Any]] | None = None,
    scheduler: dict[str, Any] | None = None,
    worker: bool = True,
    more: dict[str, Any] | None = None,
    **policy: Any,
) -> AsyncIterator[Bot]:
    """The bot as `tunnelwarden run` assembles it, on the simulated world; ``more`` adds
    config sections (``{"watcher": {...}}``), ``policy`` overrides [policies] keys."""
    w = world()
    sim_runner, sim_port = await start_arm_sim(w)
    port = free_port()
    admin_port = free_port()
    settings = azure_settings(
        prefix,
        tmp_path,
        sim_port,
        http={"port": port},
        admin={"port": admin_port, "public_url": f"http://127.0.0.1:{admin_port}"},
        notify=[{"kind": "webhook", "url": receiver.url, "name": "ops"}],
        policies={
            "tunnel_timeout": 1.0,
            "tunnel_poll": 0.05,
            # Slow retries unless a test is about them: one failed run, one record.
            "retry_base_delay": 60,
            "retry_max_delay": 120,
            **policy,
        },
        sources=sources or [],
        scheduler={"tick": 0.1, **(scheduler or {})},
        **{"watcher": {"enabled": False}, **(more or {})},
    )
    settings.sites["home"].push = (
        type(settings.sites["home"])
        .model_validate({"push": {"hostname": HOST, "username": "home", "password": PASSWORD}})
        .push
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_process(
            settings,
            redis_url=redis_url,
            worker=worker,
            http=True,
            sources=True,
            stop=stop,
            handle_signals=False,
        )
    )
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    base = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    bot = Bot(w, settings, services, base, sim_runner, sim_port, admin)
    try:
        await eventually(lambda: _ready(admin, worker), within=10)
        yield bot
    finally:
        stop.set()
        assert await task == 0
        await client.aclose()
        await bot.sim.cleanup()


async def _ready(base: str, worker: bool = True) -> bool:
    """Ready; without an in-process worker, just serving (workers come from the test)."""
    try:
        path = "/readyz" if worker else "/healthz"
        async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def push(base: str, ip: str, password: str = PASSWORD, source: str | None = None) -> str:
    """What a FRITZ!Box / ddclient sends (from ``source``, another loopback address, when
    a test needs more clients than the endpoint's per-client burst allows)."""
    headers = {
        "User-Agent": "ddclient/3.11",
        "Authorization": aiohttp.encode_basic_auth("home", password),
    }
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with (
        aiohttp.ClientSession(headers=headers, connector=connector) as http,
        http.get(f"{base}/nic/update", params={"hostname": HOST, "myip": ip}) as resp,
    ):
        return (await resp.text()).strip()


async def test_pushed_ip_change_updates_azure_and_tells_the_team(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)  # the router got a new address
        assert w.connection_status("conn-home") == "NotConnected"

        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"

        records = await eventually(lambda: bot.services.state.history("home", 5), within=15)
        (record,) = records
        assert record.outcome == "ok", record
        assert [p.playbook for p in record.playbooks] == ["update-local-gateway", "verify-tunnel"]
        assert lng_of(w)["properties"]["gatewayIpAddress"] == NEW_IP
        assert w.connection_status("conn-home") == "Connected"

        await eventually(lambda: _some(receiver.posts), within=10)
        (message,) = receiver.posts
        assert message["version"] == 1 and message["severity"] == "info"
        assert message["site"] == "home" and NEW_IP in message["title"]
        assert message["facts"]["Old IP"] == OLD_IP and message["facts"]["New IP"] == NEW_IP
        assert float(message["facts"]["Tunnel down for"].rstrip("s")) >= 0
        assert message["run_url"] == f"{bot.admin}/runs/home/{record.run_id}"
        async with aiohttp.ClientSession() as http, http.get(message["run_url"]) as resp:
            assert (await resp.json())["record"]["run_id"] == record.run_id

        # The same address again: nochg, and Azure is not touched.
        writes = w.counters.totals().writes
        assert await push(bot.base, NEW_IP) == f"nochg {NEW_IP}"
        await asyncio.sleep(0.5)
        assert w.counters.totals().writes == writes
        assert len(await bot.services.state.history("home", 5)) == 1

        # Wrong password: badauth, nothing published.
        length = (await bot.services.queue.stats())["length"]
        assert await push(bot.base, "203.0.113.99", password="wrong") == "badauth"
        assert (await bot.services.queue.stats())["length"] == length
        assert len(receiver.posts) == 1


async def _some(items: list[Any]) -> bool:
    return bool(items)


async def test_cgnat_address_is_refused_and_reported(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver) as bot:
        assert await push(bot.base, "100.64.12.34") == "dnserr"
        await eventually(lambda: _some(receiver.posts), within=10)
        (message,) = receiver.posts
        assert message["severity"] == "error"
        assert "carrier-grade NAT" in message["summary"]
        assert "public IPv4" in message["next_step"]
        (record,) = await bot.services.state.history("home", 5)
        assert record.event_type == "ip.rejected" and record.outcome == "skipped"
        assert bot.world.counters.totals().writes == 0
        # Pushed again: no second message.
        assert await push(bot.base, "100.64.12.34") == "dnserr"
        await asyncio.sleep(0.5)
        assert len(receiver.posts) == 1


async def test_tunnel_that_stays_down_is_reset(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        (record,) = await eventually(lambda: bot.services.state.history("home", 5), within=20)
        assert record.outcome == "ok", record
        assert [(p.playbook, p.outcome) for p in record.playbooks] == [
            ("update-local-gateway", "ok"),
            ("verify-tunnel", "failed"),
            ("reset-connection", "ok"),
        ]
        assert w.connection_status("conn-home") == "Connected"
        await eventually(lambda: _some(receiver.posts), within=10)
        assert receiver.posts[0]["severity"] == "info"


async def test_still_down_after_reset_asks_for_recreate(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        w.drop_tunnel("conn-home", cleared_by=["put_connection"])
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        (record,) = await eventually(lambda: bot.services.state.history("home", 5), within=20)
        assert record.outcome == "failed"
        assert [p.playbook for p in record.playbooks] == [
            "update-local-gateway",
            "verify-tunnel",
            "reset-connection",
        ]
        await eventually(lambda: _some(receiver.posts), within=10)
        message = receiver.posts[0]
        assert message["severity"] == "error"
        assert "reset-connection" in message["summary"]
        assert "recreate-connection --site home" in message["next_step"]
        assert "--confirm-destructive" in message["next_step"]
        assert len(connections(w)) == 1, "recreate must not run without allow_destructive"
        status = await bot.services.state.site_state("home")
        assert status["reconcile.status"] == "retrying"
        due = await bot.services.scheduler.due_at("site.reconcile", "home")
        assert due is not None and due - time.time() > 30, "backoff, not a hot loop"


async def test_recreate_runs_where_the_policy_allows_it(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver, allow_destructive=True) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        w.drop_tunnel("conn-home", cleared_by=["put_connection"])
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        (record,) = await eventually(lambda: bot.services.state.history("home", 5), within=30)
        assert record.outcome == "ok", record
        assert [p.playbook for p in record.playbooks][-2:] == [
            "recreate-connection",
            "verify-tunnel",
        ]
        assert w.connection_status("conn-home") == "Connected"
        assert len(connections(w)) == 1


async def test_polled_ip_change_with_echo_consensus(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """No push: the bot asks echo services (three local ones; one lies) what its IP is."""
    answers = {"a": NEW_IP, "b": NEW_IP, "c": "203.0.113.66"}

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=answers[request.match_info["name"]] + "\n")

    app = web.Application()
    app.router.add_get("/{name}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    echo_base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    source = {
        "kind": "echo",
        "sites": ["home"],
        "interval": 0.5,
        "providers": [{"name": n, "url": f"{echo_base}/{n}", "kind": "text"} for n in answers],
        "debounce": {"polls": 1},
    }
    try:
        async with running_bot(tmp_path, prefix, redis_url, receiver, sources=[source]) as bot:
            bot.world.set_device("fritzbox-home", public_ip=NEW_IP)
            (record,) = await eventually(lambda: bot.services.state.history("home", 5), within=20)
            assert record.outcome == "ok", record
            assert record.event_source == "echo"
            assert lng_of(bot.world)["properties"]["gatewayIpAddress"] == NEW_IP
            assert bot.world.connection_status("conn-home") == "Connected"
            await asyncio.sleep(1.2)  # more polls: same answer, no new event
            assert len(await bot.services.state.history("home", 5)) == 1
    finally:
        await runner.cleanup()

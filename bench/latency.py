"""Reaction latency: a router pushes its new IP → the ARM simulator receives the LNG write.

The bot runs as it does in production, ``tunnelwarden run`` in its own process (through
bench.bot_proc, which only lifts the dyndns2 rate limit), with 50 sites. Both ends of every
figure are timestamped in this process with one clock (``time.perf_counter``): the routers
(an aiohttp client speaking dyndns2 to ``/nic/update``) and the ARM simulator, built with
``create_app(world)`` and wrapped with a middleware that timestamps every PUT of a local
network gateway as it arrives; the world's ``reevaluate`` is wrapped to timestamp the moment a
tunnel agrees again (with ``tunnel_delay = 0`` that is the moment it is Connected).

Per change (the router got a new address, then pushes it):

- *bot overhead* = push answered (``good``, response received by the router) → LNG PUT
  received by ARM: what the bot adds between knowing and acting;
- push sent → LNG PUT (adds the dyndns2 request itself: password check, publish);
- push sent → tunnel Connected, and push sent → run recorded (verify-tunnel saw Connected).

``sequential``: one change at a time (the next after the previous is recorded), round-robin
over 50 sites — the latency of a bot that is not busy. ``storm``: all 50 sites change at
once, several rounds — what queueing adds when an ISP renumbers everyone together.

Three things are lifted so the bench measures the bot, not its safety valves: the dyndns2
per-client rate limit (every router here is 127.0.0.1; by default 5 requests, then 6/min),
the per-site change limit (``max_changes_per_hour = 0``) and the bot's ARM request budget
(``[azure.budget] enabled = false``); the simulator's ARM throttling is off too (ARM's
25 reads/s subscription bucket, which the budget keeps to, would otherwise pace a 500-change
run: that pacing is the storm benchmark's subject). The
first change after start-up (cold: SDK client, first connections) is reported on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from bench.common import SITES, BenchError, clean_env, free_port, median, percentile
from bench.config import PASSWORD, PASSWORD_ENV, site_name, sites_world, write_config
from bot.keys import Keys
from bot.sim.arm import create_app
from bot.sim.world import World
from bot.state import StateStore

PREFIX = "lat"
# Documentation ranges: accepted as public by the bot when azure.cloud = "sim".
ADDRESSES = [
    str(ip)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    for ip in ipaddress.ip_network(net).hosts()
]
FIRST_IPS = ADDRESSES[-SITES:]
CHANGE_IPS = ADDRESSES[:-SITES]


def bench_world(sites: int = SITES) -> World:
    return sites_world(
        FIRST_IPS[:sites], tunnel_delay=0.0, retry_after=0, lro_polls=1, throttling=False
    )


@dataclass
class Observer:
    """Timestamps taken inside the simulator (same process, same clock as the router side)."""

    lng_put: dict[str, list[float]] = field(default_factory=dict)  # site → arrival times
    connected: dict[str, list[float]] = field(default_factory=dict)  # site → agree times
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)

    def middleware(self) -> Any:
        @web.middleware
        async def stamp(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.method == "PUT":
                path = request.path.lower()
                marker = "/localnetworkgateways/lng-"
                if marker in path:
                    site = path.split(marker, 1)[1].split("/", 1)[0]
                    self.lng_put.setdefault(site, []).append(time.perf_counter())
            return await handler(request)

        return stamp

    def watch(self, world: World) -> None:
        original = world.reevaluate

        def reevaluate() -> None:
            before = {k: t.agreed for k, t in world.tunnels.items()}
            original()
            for key, tunnel in world.tunnels.items():
                if tunnel.agreed and not before.get(key, False):
                    site = key.rsplit("/conn-", 1)[-1]
                    up_at = min((leg.up_at for leg in tunnel.legs if leg.up_at), default=None)
                    self.connected.setdefault(site, []).append(up_at or world.clock())

        world.reevaluate = reevaluate  # type: ignore[method-assign]


@dataclass
class Change:
    site: int
    ip: str
    sent: float = 0.0
    accepted: float = 0.0
    accepted_wall: float = 0.0
    put: float = 0.0
    connected: float = 0.0
    recorded: float = 0.0


class Router:
    """The routers' side: dyndns2 pushes over one keep-alive session."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(headers={"User-Agent": "bench-router/1"})

    async def push(self, change: Change) -> None:
        name = site_name(change.site)
        auth = aiohttp.BasicAuth(name, PASSWORD)
        params = {"hostname": f"{name}.bench.example", "myip": change.ip}
        change.sent = time.perf_counter()
        async with self.http.get(f"{self.base}/nic/update", params=params, auth=auth) as resp:
            answer = (await resp.text()).strip()
        change.accepted = time.perf_counter()
        change.accepted_wall = time.time()
        if answer != f"good {change.ip}":
            raise BenchError(f"push {name} {change.ip}: answered {answer!r}")

    async def close(self) -> None:
        await self.http.close()


@dataclass
class Bench:
    world: World
    observer: Observer
    router: Router
    state: StateStore
    ips: Iterator[str]

    def change(self, site: int) -> Change:
        return Change(site, next(self.ips))


async def _run(redis_url: str, changes: int, storm_rounds: int) -> dict[str, Any]:
    world = bench_world()
    observer = Observer()
    observer.watch(world)
    sim_app = create_app(world)
    sim_app.middlewares.append(observer.middleware())
    sim_runner = web.AppRunner(sim_app, access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", 0).start()
    sim_port = int(sim_runner.addresses[0][1])
    http_port, admin_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="twbench-lat-"))
    config = write_config(
        tmp / "bench.toml",
        prefix=PREFIX,
        http_port=http_port,
        sim_port=sim_port,
        admin_port=admin_port,
        arm_budget=False,  # ARM's throttling is off in this simulator: measure the bot
    )
    log = (tmp / "bot.log").open("wb")
    env = clean_env(TUNNELWARDEN_REDIS_URL=redis_url, **{PASSWORD_ENV: PASSWORD})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bot_proc",
        "--config",
        str(config),
        "run",
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=log,
    )
    router = Router(f"http://127.0.0.1:{http_port}")
    client = Redis.from_url(redis_url)
    ips = itertools.cycle(CHANGE_IPS)  # 715 addresses; a site's next one always differs
    bench = Bench(world, observer, router, StateStore(client, Keys(PREFIX)), ips)
    try:
        await _ready(router, proc, f"http://127.0.0.1:{admin_port}")
        cold = await _one(bench, bench.change(0))
        seq = [await _one(bench, bench.change(i % SITES)) for i in range(changes)]
        storm: list[Change] = []
        spans: list[float] = []
        for _ in range(storm_rounds):
            batch = [bench.change(s) for s in range(SITES)]
            done = await asyncio.gather(*(_one(bench, c, poll=0.05) for c in batch))
            storm.extend(done)
            spans.append(max(c.connected for c in done) - min(c.sent for c in done))
    finally:
        await router.close()
        await client.aclose()
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await sim_runner.cleanup()
    if proc.returncode != 0:
        raise BenchError(f"tunnelwarden run exited with {proc.returncode}; see {log.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "cold_first_change_ms": (cold.put - cold.accepted) * 1000,
        "sequential": _summary(seq),
    }
    if storm:
        out["storm"] = _summary(storm)
        out["storm"]["rounds"] = storm_rounds
        out["storm"]["round_s_median"] = median(spans)
    return out


async def _ready(router: Router, proc: asyncio.subprocess.Process, admin: str) -> None:
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if proc.returncode is not None:
            raise BenchError(f"tunnelwarden run exited with {proc.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientError):
            async with router.http.get(f"{admin}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.02)
    raise BenchError("tunnelwarden run did not become ready within 60 s")


async def _one(bench: Bench, change: Change, poll: float = 0.01) -> Change:
    """The router gets a new address and pushes it; wait until the run is recorded."""
    name = site_name(change.site)
    puts = len(bench.observer.lng_put.get(name, []))
    ups = len(bench.observer.connected.get(name, []))
    bench.world.set_device(f"router-{name}", public_ip=change.ip)
    await bench.router.push(change)
    deadline = time.perf_counter() + 60
    while True:
        records = await bench.state.history(name, 1)
        # The push's own run, or the reconcile it was folded into when the site was busy
        # (a resync that came due at the same moment): both name the address.
        if records and change.ip in records[0].reason:
            record = records[0]
            break
        if await bench.state.redis.hlen(Keys(PREFIX).errors):
            raise BenchError(f"{name}: the worker failed on an event (see the bot's log)")
        if time.perf_counter() > deadline:
            raise BenchError(f"{name}: no run recorded for {change.ip} within 60 s")
        await asyncio.sleep(poll)  # pacing only: the record's finished_at is the figure
    if record.outcome != "ok":
        raise BenchError(f"{name} {change.ip}: run {record.outcome}")
    put_times = bench.observer.lng_put.get(name, [])[puts:]
    up_times = bench.observer.connected.get(name, [])[ups:]
    if not put_times or not up_times:
        raise BenchError(f"{name} {change.ip}: the simulator saw no LNG write / no tunnel up")
    change.put = put_times[0]
    change.connected = up_times[0]
    change.recorded = change.accepted + (record.finished_at - change.accepted_wall)
    return change


def _dist(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


def _summary(changes: list[Change]) -> dict[str, Any]:
    return {
        "changes": len(changes),
        "sites": len({c.site for c in changes}),
        "overhead": _dist([c.put - c.accepted for c in changes]),
        "sent_to_put": _dist([c.put - c.sent for c in changes]),
        "push_rtt": _dist([c.accepted - c.sent for c in changes]),
        "sent_to_connected": _dist([c.connected - c.sent for c in changes]),
        "sent_to_recorded": _dist([c.recorded - c.sent for c in changes]),
    }


def measure(redis_url: str, changes: int = 500, storm_rounds: int = 0) -> dict[str, Any]:
    return asyncio.run(_run(redis_url, changes, storm_rounds))


# ddclient's shipped ddclient.conf.in: "daemon=300  # check every 300 seconds"; a change lands
# uniformly within the interval, so the wait until the next check is uniform on [0, 300 s].
POLL_INTERVAL_S = 300.0


def polling_peer() -> dict[str, float]:
    """Detection delay by design of a 300 s poller (ddclient's default, or a 5-minute cron)."""
    return {
        "interval_s": POLL_INTERVAL_S,
        "p50_ms": 0.50 * POLL_INTERVAL_S * 1000,
        "p95_ms": 0.95 * POLL_INTERVAL_S * 1000,
        "p99_ms": 0.99 * POLL_INTERVAL_S * 1000,
    }

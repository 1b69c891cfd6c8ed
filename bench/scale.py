"""Scale inside Azure's request budget (issue 14): a renumbering storm, the peer script, the
ARM watcher at 1,000 connections.

**Storm.** N sites (1,000; ``--quick`` fewer) change address at the same moment: every router
pushes its new IP through ``/nic/update`` at once. The bot runs as in production
(``tunnelwarden run`` in its own process, bench.bot_proc only lifts the dyndns2 limit); the
ARM simulator runs in this process with throttling on at ARM's documented limits (reads
250 / 25 s⁻¹, writes 200 / 10 s⁻¹) and ``tunnel_delay`` 0. Completion is the moment the
simulator's world shows every tunnel Connected (read in this process, as ``/_sim/`` would:
it costs no ARM budget). The floor the budget sets, with at least a plan read, a write, an
operation poll and a verify read per site: ``max((3N - 250)/25, (N - 200)/10)`` s.

**The peer, same run, same world.** The script a user would write with the same SDK: for each
site ``begin_create_or_update`` of its LNG with the new address, all at once with
``asyncio.gather``, azure-core's default retry policy (10 tries, honouring Retry-After).

**Detection.** N connections, the ARM watcher alone (its read share 10 % of the budget), 10
dropped at random: time to ``tunnel.down`` (state written by the watcher); ARM reads per second
while everything is healthy. The figure for probes is not measured here yet (``probe_p99_s``
is None): see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from bench.common import BenchError, clean_env, free_port, percentile
from bench.config import PASSWORD, PASSWORD_ENV, RG, SUB, site_name, sites_world, write_config
from bot.keys import Keys
from bot.sim.arm import create_app
from bot.sim.world import World
from bot.state import StateStore


def old_ip(i: int) -> str:
    return f"44.{i // 250}.{i % 250 + 1}.10"


def new_ip(i: int) -> str:
    return f"45.{i // 250}.{i % 250 + 1}.20"


def floor_s(n: int) -> float:
    return max((3 * n - 250) / 25, (n - 200) / 10, 0.0)


def scale_world(n: int, *, throttling: bool = True) -> World:
    return sites_world(
        [old_ip(s) for s in range(n)],
        tunnel_delay=0.0,
        retry_after=1,
        lro_polls=0,
        throttling=throttling,
    )


def connected(world: World) -> int:
    return sum(1 for key in world.tunnels if world.connection_status(key) == "Connected")


def arm_calls(world: World) -> dict[str, int]:
    t = world.counters.totals()
    return {"reads": t.reads, "writes": t.writes, "polls": t.polls, "faults": t.faults}


def throttled(world: World) -> int:
    return sum(world.limiter.throttled.values())


async def _start_sim(world: World) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(create_app(world), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def _wait_ready(http: aiohttp.ClientSession, proc: Any, admin: str, within: float) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if proc.returncode is not None:
            raise BenchError(f"tunnelwarden run exited with {proc.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{admin}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"tunnelwarden run did not become ready within {within:.0f} s")


class BotProcess:
    """``tunnelwarden run`` with N sites against the simulator at ``sim_port``."""

    def __init__(self, redis_url: str, sim_port: int, n: int, prefix: str, extra: list[str]):
        self.redis_url, self.sim_port, self.n, self.prefix = redis_url, sim_port, n, prefix
        self.extra = extra
        self.tmp = Path(tempfile.mkdtemp(prefix=f"twbench-{prefix}-"))
        self.http_port, self.admin_port = free_port(), free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        config = write_config(
            self.tmp / "bench.toml",
            prefix=self.prefix,
            http_port=self.http_port,
            sim_port=self.sim_port,
            admin_port=self.admin_port,
            sites=self.n,
            log_level="WARNING",
        )
        text = config.read_text()
        # Sections of our own go before the [sites.*] tables (TOML: a table ends at the next).
        head, sep, tail = text.partition("\n[sites.")
        config.write_text(head + "\n" + "\n".join(self.extra) + "\n" + sep + tail)
        self.log = (self.tmp / "bot.log").open("wb")
        env = clean_env(TUNNELWARDEN_REDIS_URL=self.redis_url, **{PASSWORD_ENV: PASSWORD})
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bot_proc",
            "--config",
            str(config),
            "run",
            env=env,
            cwd=self.tmp,
            stdout=self.log,
            stderr=self.log,
        )
        await _wait_ready(http, self.proc, self.admin, 120)

    def rss_mb(self) -> float | None:
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        import os

        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self.log.close()
        if proc is not None and proc.returncode not in (0, None):
            raise BenchError(f"tunnelwarden run exited with {proc.returncode}; see {self.log.name}")
        shutil.rmtree(self.tmp, ignore_errors=True)


async def _push_all(http: aiohttp.ClientSession, base: str, n: int) -> None:
    async def push(s: int) -> None:
        name = site_name(s)
        params = {"hostname": f"{name}.bench.example", "myip": new_ip(s)}
        auth = aiohttp.BasicAuth(name, PASSWORD)
        async with http.get(f"{base}/nic/update", params=params, auth=auth) as resp:
            answer = (await resp.text()).strip()
        if answer != f"good {new_ip(s)}":
            raise BenchError(f"push {name}: answered {answer!r}")

    await asyncio.gather(*(push(s) for s in range(n)))


async def _until_connected(
    world: World, n: int, started: float, within: float, gave_up: Any = None
) -> float | None:
    """Seconds until every tunnel is Connected; None after ``within`` or once ``gave_up()``
    (the peer's script finished with some updates failed)."""
    while time.perf_counter() - started < within:
        if connected(world) == n:
            return time.perf_counter() - started
        if gave_up is not None and gave_up():
            return time.perf_counter() - started if connected(world) == n else None
        await asyncio.sleep(0.05)
    return None


async def _storm(redis_url: str, n: int, within: float) -> dict[str, Any]:
    world = scale_world(n)
    sim, port = await _start_sim(world)
    bot = BotProcess(
        redis_url,
        port,
        n,
        "storm",
        [
            "[worker]",
            "concurrency = 64",
            "[watcher]",
            "enabled = false",
            "[scheduler]",
            "tick = 0.1",
            f"resync_interval = {max(3600, 4 * within):.0f}",
        ],
    )
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    try:
        await bot.start(http)
        world.counters.reset()
        world.limiter.reset()
        for s in range(n):
            world.set_device(f"router-{site_name(s)}", public_ip=new_ip(s))
        started = time.perf_counter()
        await _push_all(http, f"http://127.0.0.1:{bot.http_port}", n)
        completion = await _until_connected(world, n, started, within)
        calls = arm_calls(world)
        client = Redis.from_url(redis_url)
        try:
            raw = await client.hgetall("storm:budget:stats")
        finally:
            await client.aclose()
        stats = {k.decode(): int(v) for k, v in raw.items()}
    finally:
        await http.close()
        await bot.stop()
        await sim.cleanup()
    total = calls["reads"] + calls["writes"] + calls["polls"]
    return {
        "sites": n,
        "floor_s": floor_s(n),
        "completion_s": completion,
        "vs_floor": (completion / floor_s(n)) if completion and floor_s(n) else None,
        "throttled": throttled(world),
        "connected": connected(world),
        "calls": calls,
        "calls_per_site": total / n,
        "reads_per_site": (calls["reads"] + calls["polls"]) / n,
        "deferred": sum(v for k, v in stats.items() if k.startswith("deferred.")),
    }


async def _peer(n: int, within: float) -> dict[str, Any]:
    """The user's script: all LNG PUTs at once, azure-core's default retries."""
    from azure.core.exceptions import HttpResponseError

    from bot.sim.client import sim_network_client

    world = scale_world(n)
    sim, port = await _start_sim(world)
    client = sim_network_client(f"http://127.0.0.1:{port}", SUB, polling_interval=30.0)
    failures = 0
    try:
        for s in range(n):
            world.set_device(f"router-{site_name(s)}", public_ip=new_ip(s))
        world.counters.reset()
        world.limiter.reset()
        started = time.perf_counter()

        async def update(s: int) -> None:
            nonlocal failures
            name = site_name(s)
            body = {
                "location": "westeurope",
                "properties": {
                    "gatewayIpAddress": new_ip(s),
                    "localNetworkAddressSpace": {
                        "addressPrefixes": [f"10.{s // 250}.{s % 250}.0/24"]
                    },
                },
            }
            try:
                poller = await client.local_network_gateways.begin_create_or_update(
                    RG,
                    f"lng-{name}",
                    body,  # type: ignore[arg-type]
                )
                await poller.result()
            except HttpResponseError:
                failures += 1

        async def script() -> None:
            await asyncio.gather(*(update(s) for s in range(n)))

        task = asyncio.create_task(script())
        completion = await _until_connected(world, n, started, within, task.done)
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, max(1.0, within - (time.perf_counter() - started)))
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        calls = arm_calls(world)
    finally:
        await client.close()
        await sim.cleanup()
    return {
        "sites": n,
        "completion_s": completion,
        "throttled": throttled(world),
        "connected": connected(world),
        "calls": calls["reads"] + calls["writes"] + calls["polls"],
        "calls_detail": calls,
        "gave_up": failures,
    }


async def _detection(redis_url: str, n: int, drops: int, healthy_s: float) -> dict[str, Any]:
    """The watcher alone: drop ``drops`` connections, time to ``tunnel.down`` in the state."""
    world = scale_world(n)
    sim, port = await _start_sim(world)
    # A sweep of n at 10 % of 25 reads/s takes n / 2.5 s; the interval asks for no faster.
    bot = BotProcess(
        redis_url,
        port,
        n,
        "detect",
        [
            "[watcher]",
            "interval = 1",
            "read_share = 0.10",
            "debounce = 0",
            "[scheduler]",
            "resync_interval = 86400",
        ],
    )
    http = aiohttp.ClientSession()
    client = Redis.from_url(redis_url)
    state = StateStore(client, Keys("detect"))
    result: dict[str, Any] = {"connections": n, "dropped": drops}
    try:
        await bot.start(http)
        await asyncio.sleep(3.0)  # start-up done: the watcher's steady state
        idle_rss = bot.rss_mb()
        world.counters.reset()
        cpu0, t0 = bot.cpu_s(), time.perf_counter()
        await asyncio.sleep(healthy_s)
        reads = world.counters.totals().reads
        cpu1, t1 = bot.cpu_s(), time.perf_counter()
        result["arm_reads_per_s"] = reads / (t1 - t0)
        result["idle_rss_mb"] = idle_rss
        if cpu0 is not None and cpu1 is not None:
            result["cpu_s_per_s"] = (cpu1 - cpu0) / (t1 - t0)
        victims = random.Random(14).sample(range(n), drops)
        dropped_at = time.perf_counter()
        for s in victims:
            world.drop_tunnel(f"conn-{site_name(s)}")
        seen: dict[int, float] = {}
        sweep = n / (0.10 * 25.0)
        deadline = dropped_at + 2.5 * sweep + 30
        while len(seen) < drops and time.perf_counter() < deadline:
            for s in victims:
                if s in seen:
                    continue
                st = await state.site_state(site_name(s))
                if st.get("tunnel.reported") == "down":
                    seen[s] = time.perf_counter() - dropped_at
            await asyncio.sleep(0.2)
        times = list(seen.values())
        result["detected"] = len(times)
        result["watcher_p99_s"] = percentile(times, 99) if len(times) == drops else None
        result["watcher_max_s"] = max(times) if times else None
        result["sweep_s"] = sweep
        result["probe_p99_s"] = None
    finally:
        await client.aclose()
        await http.close()
        await bot.stop()
        await sim.cleanup()
    return result


def storm(redis_url: str, n: int) -> dict[str, Any]:
    return asyncio.run(_storm(redis_url, n, within=max(60.0, 4 * floor_s(n) + 60)))


def storm_peer(n: int) -> dict[str, Any]:
    return asyncio.run(_peer(n, within=max(60.0, 4 * floor_s(n) + 60)))


def detection(redis_url: str, n: int, drops: int = 10, healthy_s: float = 10.0) -> dict[str, Any]:
    return asyncio.run(_detection(redis_url, n, drops, healthy_s))


if __name__ == "__main__":  # a quick look by hand: python -m bench.scale N
    import json

    from bench.common import private_redis

    sites = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with private_redis() as server:
        print(json.dumps({"storm": storm(server.url, sites)}, indent=1))
    print(json.dumps({"storm_peer": storm_peer(sites)}, indent=1))

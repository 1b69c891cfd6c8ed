"""The ARM budget all replicas share (bot.budget): real Redis, the real SDK, the simulator with
throttling on.

- two `tunnelwarden worker` processes reconcile a storm of 60 sites through one bucket: the
  simulator counts the requests it admitted per window, and they stay within *our* bucket
  (not merely ARM's); no 429; reconciles the budget deferred come back via the scheduler and
  every tunnel is Connected;
- ARM's ``x-ms-ratelimit-remaining-*`` header lowers our tokens when ARM says less is left;
- a restore write and a reconcile's reads are served while sweeps find the bucket closed.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.network.aio import NetworkManagementClient
from redis.asyncio import Redis

from bot.azure import AzureClients
from bot.budget import Budget, BudgetDeferred, Priority, priority
from bot.config import AzureConfig, BudgetConfig
from bot.metrics import Metrics
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.metering import OpClass
from bot.sim.world import World
from bot.sources.report import IpReporter
from tests.conftest import make_settings, start_worker
from tests.helpers import eventually

SUB = "00000000-0000-0000-0000-0000000b0d9e"
RG = "rg-budget"
KEY = "budget-psk"
SITES = 60
# The simulator's buckets, scaled down so that 60 sites make a storm: (size, refill per s).
SIM_LIMITS = {
    OpClass.READ: (50.0, 50.0),
    OpClass.WRITE: (20.0, 10.0),
    OpClass.DELETE: (20.0, 10.0),
}
OLD = [f"198.51.100.{i + 1}" for i in range(SITES)]
NEW = [f"203.0.113.{i + 1}" for i in range(SITES)]


def site(i: int) -> str:
    return f"s{i:02d}"


def storm_world(sites: int = SITES) -> World:
    seed: dict[str, Any] = {
        "subscription": SUB,
        "settings": {"tunnel_delay": 0.0, "retry_after": 0, "lro_polls": 1, "throttling": True},
        "resource_groups": [{"name": RG}],
        "virtual_network_gateways": [{"resource_group": RG, "name": "vpngw"}],
        "local_network_gateways": [],
        "connections": [],
        "devices": [],
    }
    for i in range(sites):
        name = site(i)
        seed["local_network_gateways"].append(
            {
                "resource_group": RG,
                "name": f"lng-{name}",
                "gateway_ip_address": OLD[i],
                "address_prefixes": [f"10.{i}.0.0/16"],
            }
        )
        seed["connections"].append(
            {
                "resource_group": RG,
                "name": f"conn-{name}",
                "virtual_network_gateway": "vpngw",
                "local_network_gateway": f"lng-{name}",
                "shared_key": KEY,
            }
        )
        seed["devices"].append(
            {"name": f"router-{name}", "public_ip": OLD[i], "shared_key": KEY, "lng": f"lng-{name}"}
        )
    world = World.from_seed(seed)
    world.limiter.configure(SIM_LIMITS)
    return world


def budget_section() -> dict[str, Any]:
    """Our budget: the simulator's limits (we learn the documented ones the same way)."""
    return {
        "reads": list(SIM_LIMITS[OpClass.READ]),
        "writes": list(SIM_LIMITS[OpClass.WRITE]),
        "deletes": list(SIM_LIMITS[OpClass.DELETE]),
        "max_wait": 1.0,
    }


def connected(world: World) -> int:
    return sum(
        1
        for r in world.dump()["resources"]
        if r["type"].lower().endswith("/connections")
        and (r.get("properties") or {}).get("connectionStatus") == "Connected"
    )


@pytest.fixture
async def sim() -> AsyncIterator[tuple[World, int]]:
    world = storm_world()
    runner, port = await start_arm_sim(world)
    try:
        yield world, port
    finally:
        await runner.cleanup()


def write_config(path: Path, prefix: str, port: int) -> Path:
    lines = [
        "[redis]",
        f'prefix = "{prefix}"',
        f'state_dir = "{path.parent / "state"}"',
        "[policies]",
        "max_changes_per_hour = 0",
        "tunnel_timeout = 5",
        "tunnel_poll = 0.1",
        "retry_base_delay = 0.2",
        "retry_max_delay = 1",
        "[scheduler]",
        "tick = 0.1",
        "[watcher]",
        "enabled = false",
        "[azure]",
        'cloud = "sim"',
        f'endpoint = "http://127.0.0.1:{port}"',
        f'subscription_id = "{SUB}"',
        "polling_interval = 0",
        "retry_backoff_factor = 0.05",
        "[azure.budget]",
        f"reads = {list(SIM_LIMITS[OpClass.READ])}",
        f"writes = {list(SIM_LIMITS[OpClass.WRITE])}",
        f"deletes = {list(SIM_LIMITS[OpClass.DELETE])}",
        "max_wait = 0.2",
        "[worker]",
        "concurrency = 30",
    ]
    for i in range(SITES):
        name = site(i)
        lines += [
            f"[sites.{name}]",
            f'resource_group = "{RG}"',
            f'local_network_gateway = "lng-{name}"',
            f'connection = "conn-{name}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_two_workers_share_one_bucket_and_a_storm_meets_no_429(
    sim: tuple[World, int],
    prefix: str,
    tmp_path: Path,
    redis_url: str,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    world, port = sim
    config = write_config(tmp_path / "tw.toml", prefix, port)
    for name in ("w1", "w2"):
        start_worker(procs, config, redis_url, prefix, name)
    settings = make_settings(
        prefix,
        tmp_path,
        azure={"cloud": "sim", "endpoint": f"http://127.0.0.1:{port}", "subscription_id": SUB},
        sites={site(i): {"resource_group": RG} for i in range(SITES)},
    )
    client = Redis.from_url(redis_url)
    try:
        services = Services.build(settings, client)
        reporter = IpReporter(services, allow_documentation=True)
        for i in range(SITES):  # every router renumbered at the same moment
            world.set_device(f"router-{site(i)}", public_ip=NEW[i])
        for i in range(SITES):
            await reporter.observe(site(i), NEW[i], "v4", source="test")

        async def all_connected() -> bool:
            return connected(world) == SITES

        await eventually(all_connected, within=120, every=0.2)

        async def all_converged() -> bool:
            for i in range(SITES):
                state = await services.state.site_state(site(i))
                if state.get("reconcile.status") != "converged":
                    return False
            return True

        # Each run's record follows its tunnel's Connected (the verification read comes last).
        await eventually(all_converged, within=60, every=0.2)
        stats = {
            k.decode(): int(v) for k, v in (await client.hgetall(f"{prefix}:budget:stats")).items()
        }
    finally:
        await client.aclose()
    lngs = {
        r["name"]: r["properties"]["gatewayIpAddress"]
        for r in world.dump()["resources"]
        if r["type"].lower().endswith("/localnetworkgateways")
    }
    assert lngs == {f"lng-{site(i)}": NEW[i] for i in range(SITES)}
    # Not one refusal: the sites waited their turn in the budget and the scheduler.
    assert world.limiter.throttled == {op: 0 for op in OpClass}
    assert world.counters.totals().faults == 0
    # The two processes together stayed within ONE bucket of ours (80 % of the simulator's):
    # within any window w, at most size + rate·w admitted (+2 for clock granularity). Two
    # separate buckets would have let through up to twice that (ARM's bound is 50 + 50·w).
    for op in (OpClass.READ, OpClass.WRITE):
        size, rate = (x * 0.8 for x in SIM_LIMITS[op])
        for window in (1.0, 3.0):
            busiest = world.limiter.busiest(op, window)
            assert busiest <= size + rate * window + 2, (op, window, busiest)
    assert len(world.limiter.admitted[OpClass.WRITE]) >= SITES
    # 60 sites against a bucket of 16 writes: some reconciles were deferred to the scheduler,
    # came back at the time the budget gave, and converged (every tunnel Connected above).
    assert stats.get("deferred.reads", 0) + stats.get("deferred.writes", 0) > 0
    assert world.counters.totals().writes >= SITES


@pytest.fixture
async def clients(
    sim: tuple[World, int], prefix: str, redis_url: str
) -> AsyncIterator[tuple[AzureClients, Budget, NetworkManagementClient, Redis]]:
    _, port = sim
    cfg = AzureConfig.model_validate(
        {
            "cloud": "sim",
            "endpoint": f"http://127.0.0.1:{port}",
            "subscription_id": SUB,
            "polling_interval": 0,
            "retry_total": 0,
            "budget": {**budget_section(), "max_wait": 0.0, "sweep_max_wait": 0.0},
        }
    )
    redis = Redis.from_url(redis_url)
    azure = AzureClients(cfg)
    budget = Budget(redis, prefix, cfg.budget, Metrics(), SUB)
    azure.budget = budget
    try:
        yield azure, budget, await azure.network(), redis
    finally:
        await azure.close()
        await redis.aclose()


async def test_the_bucket_follows_arm_when_less_is_left_than_we_think(
    sim: tuple[World, int],
    clients: tuple[AzureClients, Budget, NetworkManagementClient, Redis],
) -> None:
    world, _ = sim
    _, budget, net, _ = clients
    await net.local_network_gateways.get(RG, f"lng-{site(0)}")
    before = (await budget.snapshot())["tokens"]["reads"]
    assert before >= 35  # ours: 40, one taken
    # Another tool of the subscription spends ARM's reads: 45 of the 50 are gone.
    for _ in range(45):
        assert world.limiter.acquire(SUB, OpClass.READ)[0]
    await net.local_network_gateways.get(RG, f"lng-{site(1)}")  # ARM: 4 left
    after = (await budget.snapshot())["tokens"]["reads"]
    # ARM leaves us 4 - 10 (its 20 % headroom) = nothing: we stop instead of meeting a 429.
    assert after < 5, after
    with pytest.raises(BudgetDeferred):
        await net.local_network_gateways.get(RG, f"lng-{site(2)}")
    assert world.limiter.throttled[OpClass.READ] == 0
    rendered = budget.metrics.render().decode() if budget.metrics else ""
    assert 'tunnelwarden_arm_calls_deferred_total{op="reads",priority="verify"} 1.0' in rendered
    assert "tunnelwarden_arm_budget_tokens" in rendered


async def test_a_restore_write_is_not_starved_by_sweep_reads(
    sim: tuple[World, int],
    clients: tuple[AzureClients, Budget, NetworkManagementClient, Redis],
) -> None:
    world, _ = sim
    _, _, net, _ = clients
    sweeps = 0
    token = priority.set(Priority.SWEEP)
    try:
        with pytest.raises(BudgetDeferred):
            for i in range(200):  # the watcher's sweep, as fast as it is let
                await net.virtual_network_gateway_connections.get(RG, f"conn-{site(i % 60)}")
                sweeps += 1
    finally:
        priority.reset(token)
    # Sweeps stopped above the reserve (30 % of 40 reads): the rest is the reconciles'.
    assert sweeps >= 27, sweeps
    # A reconcile restoring a tunnel: its plan read, its write and the write's poll all go.
    token = priority.set(Priority.VERIFY)
    try:
        lng = await net.local_network_gateways.get(RG, f"lng-{site(0)}")
        lng.gateway_ip_address = NEW[0]
        poller = await net.local_network_gateways.begin_create_or_update(RG, f"lng-{site(0)}", lng)
        await poller.result()
        assert priority.get() == Priority.RESTORE  # after its write, the run's reads follow
    finally:
        priority.reset(token)
    lng_now = next(r for r in world.dump()["resources"] if r["name"] == f"lng-{site(0)}")
    assert lng_now["properties"]["gatewayIpAddress"] == NEW[0]
    assert world.limiter.throttled == {op: 0 for op in OpClass}


async def test_budget_config_defaults_are_the_documented_limits_with_headroom(
    redis_url: str, prefix: str
) -> None:
    cfg = BudgetConfig()
    redis = Redis.from_url(redis_url)
    try:
        budget = Budget(redis, prefix, cfg, None, SUB)
        snap = await budget.snapshot()
    finally:
        await redis.aclose()
    assert snap["size"] == {"reads": 200.0, "writes": 160.0, "deletes": 160.0}
    assert snap["tokens"] == {"reads": 200.0, "writes": 160.0, "deletes": 160.0}
    assert budget.limits["reads"].rate == 20.0
    assert budget.limits["writes"].rate == 8.0


async def test_the_watcher_yields_to_the_budget_and_paces_itself(
    sim: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> None:
    from bot.app import attach_budget
    from bot.sources.watcher import TunnelWatcher

    world, port = sim
    settings = make_settings(
        prefix,
        tmp_path,
        azure={
            "cloud": "sim",
            "endpoint": f"http://127.0.0.1:{port}",
            "subscription_id": SUB,
            "polling_interval": 0,
            # Our read refill slow (4/s), so the sweep outruns it within the test.
            "budget": {**budget_section(), "reads": [50.0, 5.0], "sweep_max_wait": 0.0},
        },
        sites={
            site(i): {
                "resource_group": RG,
                "local_network_gateway": f"lng-{site(i)}",
                "connection": f"conn-{site(i)}",
            }
            for i in range(SITES)
        },
        watcher={"interval": 1.0},
    )
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    attach_budget(services)
    watcher = TunnelWatcher(services, settings.watcher)
    try:
        calm = watcher.interval
        checked = [await watcher.poll() for _ in range(60)]
        snapshot = await services.azure.budget.snapshot() if services.azure.budget else {}
    finally:
        await services.azure.close()
        await client.aclose()
    # Reads for sweeps ran out above the reserve: the watcher skipped turns (no exception,
    # no 429) and slowed down, leaving the rest of the bucket to reconciles.
    assert watcher.reads < 60
    assert all(event is None for event in checked)  # healthy tunnels: nothing to tell
    assert watcher.interval > calm
    assert snapshot["tokens"]["reads"] >= 0.3 * 40 - 1
    assert world.limiter.throttled[OpClass.READ] == 0


async def test_status_shows_the_budget(
    clients: tuple[AzureClients, Budget, NetworkManagementClient, Redis],
    prefix: str,
    tmp_path: Path,
    redis_url: str,
) -> None:
    import json

    from tests.conftest import cli_env, tunnelwarden

    _, budget, net, _ = clients
    await net.local_network_gateways.get(RG, f"lng-{site(0)}")
    await budget.throttled(SUB, "writes")  # as the policy counts a 429
    config = tmp_path / "tw.toml"
    config.write_text(
        f'[azure]\nsubscription_id = "{SUB}"\n[azure.budget]\n'
        # writes refill slowly here, so what status shows is what the 429 left
        f"reads = {list(SIM_LIMITS[OpClass.READ])}\nwrites = [20.0, 0.01]\n"
    )
    env = {**cli_env(redis_url, prefix), "TUNNELWARDEN_CONFIG": str(config)}
    done = await asyncio.to_thread(
        subprocess.run,
        [*tunnelwarden(), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["budget"]
    assert shown["throttled"]["writes"] == 1
    assert shown["size"]["reads"] == 40.0
    assert shown["tokens"]["writes"] < 0  # emptied by the 429 (ARM said 0 left)
    text = await asyncio.to_thread(
        subprocess.run,
        [*tunnelwarden(), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ARM budget: reads" in text.stdout and "429s received 1" in text.stdout, text.stdout

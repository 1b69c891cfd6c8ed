"""The failover reconciler under the real runner and scheduler, in real worker processes.

The damping's timers are entries of the scheduler's due-time set (never key expiry), the pair
has its periodic resync entry, and ``damping.*`` lives in Redis: a worker killed mid-probation
and replaced by another decides exactly as if nothing had happened.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.damping import DampingConfig, DampingState, PathSamples, next_wakeup
from bot.scheduler import FAILOVER, RECONCILE
from bot.services import Services
from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim
from bot.sim.sites import SitesSim, start_sites_sim
from bot.sources.paths import PathPoller
from handlers.failover import load
from tests.conftest import start_worker
from tests.helpers import eventually

PASSWORD = "Sw-runner-Pa55-41c9!"
STABLE_S = 4.0

CONFIG = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
max_deliveries = 5
block_ms = 100
grace_period = 5

[policies]
lock_ttl = 1.5
lock_wait = 30

[scheduler]
tick = 0.1
resync_interval = 600

[[sites.home.probes]]
name = "ike-a"
kind = "tcp"
target = "127.0.0.1:{a}"
interval = 1
timeout = 0.5

[[sites.home.probes]]
name = "ike-b"
kind = "tcp"
target = "127.0.0.1:{b}"
interval = 1
timeout = 0.5

[[sites.home.devices]]
name = "fw"
kind = "sonicwall"
url = "{device}"
username = "admin"
password_env = "TW_TEST_SW_PASSWORD"
policy = "Azure"

[sites.home.failover]
actor = "sonicwall"
primary = "203.0.113.10"
secondary = "198.51.100.20"
primary_probes = ["ike-a", "ike-b"]
preempt_interval = 1

[sites.home.failover.damping]
fail_after = 1
success_after = 1
stable_s = {stable}
half_life_s = 1
min_failback_interval_s = 0
verify_window_s = 1
"""


class Device:
    def __init__(self) -> None:
        self.sonicos = SonicOSDevice(password=PASSWORD)
        self.url = ""
        self.runner: web.AppRunner | None = None


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    d = Device()
    d.runner, port = await start_sonicos_sim(d.sonicos)
    d.url = f"http://127.0.0.1:{port}"
    try:
        yield d
    finally:
        await d.runner.cleanup()


@pytest.fixture
async def sites() -> AsyncIterator[SitesSim]:
    responders = [{"name": n, "kind": "tcp"} for n in ("ike-a", "ike-b")]
    sim = await start_sites_sim({"sites": [{"name": "gw", "responders": responders}]})
    try:
        yield sim
    finally:
        await sim.close()


async def recorded(services: Services, reason: str) -> list[str]:
    """Workers that recorded a failover run whose reason starts with ``reason``."""
    return [
        r.worker
        for r in await services.state.history("home", 50)
        if r.event_type in (FAILOVER, "path.failed", "failback.needed")
        and r.reason.startswith(reason)
    ]


async def test_damping_timers_live_in_the_scheduler_and_state_survives_a_worker_restart(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    device: Device,
    sites: SitesSim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.config import load_config

    config = tmp_path / "tw.toml"
    config.write_text(
        CONFIG.format(
            a=sites.port("gw", "ike-a"),
            b=sites.port("gw", "ike-b"),
            device=device.url,
            stable=STABLE_S,
        )
    )
    env = {"TW_TEST_SW_PASSWORD": PASSWORD}
    monkeypatch.setenv("TW_TEST_SW_PASSWORD", PASSWORD)
    settings = load_config(config, overrides={"redis": {"prefix": prefix}})
    site = settings.sites["home"]
    assert site.failover is not None
    cfg: DampingConfig = site.failover.damping
    paths = PathPoller(Services.build(settings, services.redis), "home", site)
    scheduler = services.scheduler

    first = start_worker(procs, config, redis_url, prefix, "first", False, **env)

    async def resync_entries() -> bool:
        members = {m for m, _ in await scheduler.entries()}
        return {f"{FAILOVER}|home", f"{RECONCILE}|home"} <= members

    await eventually(resync_entries)  # every reconciler of the site has its resync

    # The primary fails: the sampler's edge, the reconciler's failover (preempt kept off).
    for name in ("ike-a", "ike-b"):
        await sites.set_state("gw", name, up=False)
    assert await paths.poll() == "path.failed"
    await eventually(lambda: recorded(services, "primary failed 1 checks in a row"))
    state = await services.state.site_state("home")
    assert state["damping.active"] == "secondary" and state["damping.seen_downs"] == "1"
    resync_at = await scheduler.due_at(FAILOVER, "home")
    assert resync_at is not None and resync_at > time.time() + 60  # nothing for time to do

    # Back: failback.needed, too early to fail back; the stability window is a timer.
    for name in ("ike-a", "ike-b"):
        await sites.set_state("gw", name, up=True)
    assert await paths.poll() == "failback.needed"

    async def judged() -> bool:
        s = await services.state.site_state("home")
        return s.get("failover.run", "") != state.get("failover.run", "")

    await eventually(judged)
    state = await services.state.site_state("home")
    damping = load(DampingState, state, "damping.")
    obs = load(PathSamples, state, "path.primary.")
    wake = next_wakeup(damping, obs, cfg, float(state["failover.at"]))
    assert wake is not None and obs.up_since is not None
    assert wake == obs.up_since + STABLE_S  # the penalty (half-life 1 s) is at reuse before
    due = await scheduler.due_at(FAILOVER, "home")
    assert due is not None and abs(due - wake) < 1e-3  # the timer, not the resync
    assert damping.active == "secondary" and await recorded(services, "failing back") == []

    # The worker dies mid-probation; another takes over from what Redis holds.
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    before = await services.state.site_state("home")
    assert load(DampingState, before, "damping.") == damping  # all of it in Redis
    second = start_worker(procs, config, redis_url, prefix, "second", capture_logs=True, **env)

    workers = await eventually(lambda: recorded(services, "failing back to primary"), within=20)
    assert workers == ["second"]  # the timer fired after the restart, in the new worker

    async def verified() -> DampingState | None:
        s = load(DampingState, await services.state.site_state("home"), "damping.")
        return s if s.last_failback_at and s.verify_until is None else None

    after = await eventually(verified, within=20)  # the verify window's timer, and stable
    assert after.episode_flaps == 0 and after.episode_started_at is None
    # Not reset by the restart: the flap was counted once, and the penalty kept decaying.
    assert after.seen_downs == 1 and after.active == "primary" and after.penalty == 1000.0
    assert after.last_failback_at is not None and after.last_failback_at >= wake
    assert await recorded(services, "primary failed") == ["first"]  # no second failover
    policy = device.sonicos.committed["Azure"]
    assert policy["preempt_secondary_gateway"] is None  # on to fail back, off again after

    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    logs = (second.stderr.read() if second.stderr else b"").decode()
    assert "failover" in logs and PASSWORD not in logs
    history = await services.state.history("home", 50)
    assert all(PASSWORD not in r.model_dump_json() for r in history)

"""Failback end to end: a flapping primary, the damping, a SonicWall and Azure, all real.

Real Redis; the bot as ``tunnelwarden run`` assembles it (worker, scheduler, sources with the
path sampler); the ARM simulator serving the real SDK; the SonicOS simulator wired into the
ARM world (``bot.sim.devices.link``: the gateway the appliance uses is the Azure tunnel that
is Connected; dead peer detection fails over by itself); IKEv2 responders (``bot.sim.sites``)
that answer for the primary gateway only while the appliance can reach it; a local chat
receiver. The SonicWall's gateways are the two instances of an active-active Azure gateway.
Damping timings are seconds, not minutes; nothing is timed, everything waits for a state.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bot.app import run_process
from bot.damping import DampingState
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.devices.link import SonicOSLink, WorldPort
from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim
from bot.sim.sites import SitesSim, start_sites_sim
from bot.sim.world import World
from handlers.failover import load
from tests.azure_world import azure_settings
from tests.chat.chat_receiver import Receiver
from tests.failback_world import CONNECTION, legs, sonicwall, world
from tests.helpers import eventually

PASSWORD = "Sw-e2e-Pa55-7f02!"
STABLE_S = 3.0
DAMPING = {
    "fail_after": 2,
    "success_after": 2,
    "stable_s": STABLE_S,
    "half_life_s": 3.0,
    "max_suppress_s": 60.0,
    "min_failback_interval_s": 0.0,
    "verify_window_s": 1.0,
}
SUPPRESSED = re.compile(r"primary flapping, failback suppressed until ~\d\d:\d\d UTC")


@dataclass
class Scene:
    world: World
    device: SonicOSDevice
    primary: str
    secondary: str
    services: Services
    chat: Receiver

    async def state(self) -> dict[str, str]:
        return await self.services.state.site_state("home")

    async def damping(self) -> DampingState:
        return load(DampingState, await self.state(), "damping.")

    def on(self) -> str | None:
        """The gateway role the appliance's tunnel uses."""
        return self.device.tunnels["Azure"].active

    def titles(self) -> list[str]:
        return [str(r.json().get("title", "")) for r in self.chat.at("/hook")]

    def failbacks(self) -> list[float]:
        """When the appliance moved its tunnel back to the primary gateway."""
        return [float(e["at"]) for e in self.device.events if e["event"] == "failback"]

    async def primary_reachable(self, up: bool) -> None:
        """The appliance reaches the primary gateway (or not); its IKE responders follow."""
        self.device.set_reachable(self.primary, up)

    async def flap(self, n: int) -> float:
        """Take the primary down until the sampler has judged it down for the ``n``-th time,
        then bring it back until it is judged up; returns when it came back."""
        await self.primary_reachable(False)

        async def judged_down() -> bool:
            return (await self.state()).get("path.primary.downs") == str(n)

        await eventually(judged_down)
        back = time.monotonic()
        await self.primary_reachable(True)

        async def judged_up() -> bool:
            return (await self.state()).get("path.primary.judged_up") == "1"

        await eventually(judged_up)
        return back


@contextlib.asynccontextmanager
async def scene(tmp_path: Path, prefix: str, redis_url: str) -> AsyncIterator[Scene]:
    w, primary, secondary = world()
    device = sonicwall(primary, secondary, password=PASSWORD)
    arm, arm_port = await start_arm_sim(w)
    sonic, sonic_port = await start_sonicos_sim(device)
    link = SonicOSLink(device, WorldPort(w), tick=0.05)
    await link.start()
    ike = {"kind": "ikev2", "behind_tunnel": True}
    sites: SitesSim = await start_sites_sim(
        {
            "sites": [
                {"name": "primary-gw", "responders": [{"name": n, **ike} for n in ("a", "b")]},
                {"name": "secondary-gw", "responders": [{"name": "s", "kind": "ikev2"}]},
            ]
        },
        tunnels={"primary-gw": lambda: device.is_reachable(primary)},
    )
    chat = Receiver()
    await chat.start()

    def probe(name: str, site: str, responder: str) -> dict[str, Any]:
        target = f"127.0.0.1:{sites.port(site, responder)}"
        return {"name": name, "kind": "ikev2", "target": target, "interval": 0.2, "timeout": 0.15}

    settings = azure_settings(
        prefix,
        tmp_path,
        arm_port,
        notify=[{"kind": "webhook", "url": chat.url("/hook"), "name": "ops"}],
        policies={"tunnel_timeout": 1.0, "tunnel_poll": 0.05},
        scheduler={"tick": 0.05},
        watcher={"enabled": False},
        sites={
            "home": {
                "probes": [
                    probe("ike-a", "primary-gw", "a"),
                    probe("ike-b", "primary-gw", "b"),
                    probe("ike-s", "secondary-gw", "s"),
                ],
                "devices": [
                    {
                        "name": "fw",
                        "kind": "sonicwall",
                        "url": f"http://127.0.0.1:{sonic_port}",
                        "username": "admin",
                        "password": PASSWORD,
                        "policy": "Azure",
                    }
                ],
                "failover": {
                    "actor": "sonicwall",
                    "primary": primary,
                    "secondary": secondary,
                    "primary_probes": ["ike-a", "ike-b"],
                    "secondary_probes": ["ike-s"],
                    "preempt_interval": 1,
                    "verify_timeout": 1.5,
                    "damping": DAMPING,
                },
            }
        },
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_process(
            settings,
            redis_url=redis_url,
            worker=True,
            http=False,
            sources=True,
            stop=stop,
            handle_signals=False,
        )
    )
    client = Redis.from_url(redis_url)
    s = Scene(w, device, primary, secondary, Services.build(settings, client), chat)
    try:

        async def sampling() -> bool:
            return "path.primary.up_streak" in await s.state()

        await eventually(sampling)
        yield s
    finally:
        stop.set()
        code = await task
        await client.aclose()
        await chat.close()
        await sites.close()
        await link.aclose()
        await sonic.cleanup()
        await arm.cleanup()
    assert code == 0
    texts = [r.body.decode() for r in chat.requests]
    assert all(PASSWORD not in t for t in texts), "a device credential reached chat"


async def test_a_flapping_primary_gets_traffic_back_once_and_only_after_the_window(
    tmp_path: Path, prefix: str, redis_url: str
) -> None:
    async with scene(tmp_path, prefix, redis_url) as s:
        assert s.on() == "primary" and legs(s.world) == ["Connected", "NotConnected"]
        flaps = 0
        back = 0.0
        while not (await s.damping()).suppressed:
            flaps += 1
            assert flaps <= 8, "eight flaps in quick succession and still not suppressed"
            back = await s.flap(flaps)
            # The appliance failed over by itself (DPD) and, with preempt kept off, stays.
            assert s.on() == "secondary" and legs(s.world) == ["NotConnected", "Connected"]
            assert s.failbacks() == []
        assert flaps >= 2

        async def on_primary() -> bool:
            return s.on() == "primary" and legs(s.world) == ["Connected", "NotConnected"]

        await eventually(on_primary, within=60)
        (failback,) = s.failbacks()
        assert failback >= back + STABLE_S  # not before the primary was up for the window

        async def stable() -> bool:
            return any(t.startswith("home: primary stable") for t in s.titles())

        await eventually(stable, within=30)
        titles = s.titles()
        assert len([t for t in titles if SUPPRESSED.search(t)]) == 1, titles
        assert len([t for t in titles if "failing back to primary" in t]) == 1, titles
        assert len([t for t in titles if "traffic on secondary" in t]) == 1, titles  # the first
        assert not any("rolled back" in t for t in titles)
        after = await s.damping()
        assert after.active == "primary" and after.episode_flaps == 0
        assert s.device.committed["Azure"]["preempt_secondary_gateway"] is None  # off again
        runs = await s.services.state.history("home", 200)
        assert len([r for r in runs if r.reason.startswith("failing back")]) == 1
        assert all(PASSWORD not in r.model_dump_json() for r in runs)
        assert s.world.connection_status(CONNECTION) == "Connected"


async def test_a_failback_whose_verify_fails_is_rolled_back(
    tmp_path: Path, prefix: str, redis_url: str
) -> None:
    async with scene(tmp_path, prefix, redis_url) as s:
        await s.flap(1)
        assert s.on() == "secondary"
        # Half-up primary: its IKE answers (the probes are happy) but nothing passes through
        # its tunnel; dead peer detection gives up on it whenever the appliance tries it.
        s.world.drop_tunnel(CONNECTION, ["reset_gateway"], instance=0)

        async def rolled_back() -> bool:
            return any("rolled back to secondary" in t for t in s.titles())

        await eventually(rolled_back, within=60)
        titles = s.titles()
        (note,) = [t for t in titles if "rolled back" in t]
        assert note.startswith("home: failback to primary failed (verify failed)")
        state = await s.damping()
        assert state.active == "secondary" and state.verify_until is None
        assert state.episode_flaps == 2  # the outage, and the failed failback

        async def settled() -> bool:
            policy = s.device.committed["Azure"]
            return policy["preempt_secondary_gateway"] is None and s.on() == "secondary"

        await eventually(settled)  # preempt off again: the appliance stays on the secondary
        assert legs(s.world) == ["NotConnected", "Connected"]
        assert s.device.counters["dpd_timeouts"] >= 1
        assert s.world.connection_status(CONNECTION) == "Connected"

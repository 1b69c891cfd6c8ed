"""Simulated on-premises devices: SonicOS, Barracuda CloudGen Firewall, KEMP LoadMaster.

Each simulator speaks the device's own HTTP API (as far as its documentation shows; see the
module docstrings for what could not be verified) plus a ``/_sim/`` control API, and binds
only to 127.0.0.1 or ::1.

- :mod:`bot.sim.devices.sonicos` - SonicOS 7 REST API (single session, pending config,
  site-to-site policy with primary/secondary gateway and preempt)
- :mod:`bot.sim.devices.barracuda` - CloudGen Firewall ``/rest/control/v1`` (+ config
  transactions), VPN service restarts that drop every tunnel
- :mod:`bot.sim.devices.kemp` - LoadMaster ``/access/*`` and ``/accessv2`` real servers
- :mod:`bot.sim.devices.common` - loopback serving, fault injection, counters

- :mod:`bot.sim.devices.link` - the SonicOS appliance wired into the ARM world (the gateway
  it uses is the Azure tunnel that is Connected)

``start_devices_sim`` starts all three (each on its own port) and returns a handle with
their URLs and worlds; ``main`` runs them until cancelled (with ``arm_url``, the SonicOS
appliance drives that ARM simulator's tunnels).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from bot.sim.devices.barracuda import BarracudaDevice, start_barracuda_sim
from bot.sim.devices.common import require_loopback, url_for
from bot.sim.devices.kemp import KempDevice, start_kemp_sim
from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim

__all__ = [
    "BarracudaDevice",
    "DevicesSim",
    "KempDevice",
    "SonicOSDevice",
    "main",
    "start_devices_sim",
]


@dataclass
class DevicesSim:
    """Running device simulators: their worlds, base URLs, and ``aclose()``."""

    host: str
    sonicos: SonicOSDevice
    barracuda: BarracudaDevice
    kemp: KempDevice
    ports: dict[str, int]
    runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    @property
    def urls(self) -> dict[str, str]:
        """``{"sonicos": "http://127.0.0.1:PORT", "barracuda": ..., "kemp": ...}``."""
        return {kind: url_for(self.host, port) for kind, port in self.ports.items()}

    async def aclose(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()

    async def __aenter__(self) -> DevicesSim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def start_devices_sim(
    host: str = "127.0.0.1",
    *,
    sonicos: SonicOSDevice | None = None,
    barracuda: BarracudaDevice | None = None,
    kemp: KempDevice | None = None,
    sonicos_port: int = 0,
    barracuda_port: int = 0,
    kemp_port: int = 0,
) -> DevicesSim:
    """Start the three simulators on ``host`` (loopback only); port 0 picks free ports."""
    require_loopback(host)
    sim = DevicesSim(
        host,
        sonicos or SonicOSDevice(),
        barracuda or BarracudaDevice(),
        kemp or KempDevice(),
        ports={},
    )
    try:
        runner, sim.ports["sonicos"] = await start_sonicos_sim(sim.sonicos, host, sonicos_port)
        sim.runners.append(runner)
        runner, sim.ports["barracuda"] = await start_barracuda_sim(
            sim.barracuda, host, barracuda_port
        )
        sim.runners.append(runner)
        runner, sim.ports["kemp"] = await start_kemp_sim(sim.kemp, host, kemp_port)
        sim.runners.append(runner)
    except BaseException:
        await sim.aclose()
        raise
    return sim


async def main(
    host: str = "127.0.0.1",
    *,
    sonicos_port: int = 0,
    barracuda_port: int = 0,
    kemp_port: int = 0,
    arm_url: str | None = None,
) -> None:
    """Run all device simulators until cancelled (entry point for ``tunnelwarden sim devices``);
    with ``arm_url`` the SonicOS appliance's gateway choice drives that ARM simulator's
    tunnels."""
    import aiohttp

    from bot.sim.devices.link import HttpWorldPort, SonicOSLink

    sim = await start_devices_sim(
        host, sonicos_port=sonicos_port, barracuda_port=barracuda_port, kemp_port=kemp_port
    )
    for kind, url in sim.urls.items():
        print(f"{kind} simulator on {url} (control: {url}/_sim/state)", flush=True)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    link: SonicOSLink | None = None
    try:
        if arm_url:
            link = SonicOSLink(sim.sonicos, HttpWorldPort(arm_url, http), tick=1.0)
            link.spawn()
            print(f"sonicos gateways drive the tunnels of the ARM simulator at {arm_url}")
        await asyncio.Event().wait()
    finally:
        if link is not None:
            await link.aclose()
        await http.close()
        await sim.aclose()

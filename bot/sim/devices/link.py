"""The SonicOS simulator wired into the ARM simulator's world.

A SonicWall site-to-site policy to Azure names a primary and a secondary gateway: public IPs
of Azure VPN gateway instances (the two instances of an active-active gateway, or two
gateways). :class:`SonicOSLink` keeps the world's tunnels following the appliance:

- **The gateway in use is the tunnel that is up.** Of every connection with a tunnel whose
  gateway instance IP is one of the policy's gateways, only the tunnel to the gateway the
  appliance uses is dialed (``World.set_peer_legs``); the others are NotConnected. A policy
  that is disabled, idled out or being re-initiated dials none, so a re-initiate takes the
  Azure side through NotConnected and Connecting back to Connected.
- **Dead peer detection.** When the tunnel the appliance uses is dropped in the world (a
  half-up gateway: IKE answers, nothing passes), the appliance fails over by itself to its
  other gateway, if that one is reachable and its tunnel is not dropped too
  (``SonicOSDevice.peer_dead``). With "Preempt Secondary Gateway" it goes back to the
  primary after the preempt interval when the primary answers, and fails over again if the
  primary is still half-up: the renegotiation loop the vendor's long interval damps.
- **Time.** The appliance is evaluated every ``tick`` seconds (preempt intervals, idle
  sessions), and at once after each of its tunnel moves.

The world is reached in process (:class:`WorldPort`: tests, ``tunnelwarden demo``) or over
the ARM simulator's ``/_sim/`` control API (:class:`HttpWorldPort`: ``tunnelwarden sim
devices --arm URL``); only ``/_sim/tunnels/detail`` and ``PUT /_sim/tunnels/peer`` are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any, Protocol

import aiohttp
from yarl import URL

from bot.sim.devices.sonicos import SonicOSDevice
from bot.sim.resources import Kind
from bot.sim.world import World

log = logging.getLogger(__name__)

__all__ = ["HttpWorldPort", "Port", "SonicOSLink", "WorldPort"]


class Port(Protocol):
    """What the link needs of the ARM world."""

    async def tunnels(self) -> list[dict[str, Any]]:
        """``World.tunnel_info`` of every connection."""
        ...

    async def dial(self, connection: str, instances: list[int] | None) -> None:
        """``World.set_peer_legs``."""
        ...


class WorldPort:
    """The world in this process."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def tunnels(self) -> list[dict[str, Any]]:
        conns = sorted(
            (r for r in self.world.resources.values() if r.kind is Kind.CONNECTION),
            key=lambda r: r.key,
        )
        return [self.world.tunnel_info(r) for r in conns]

    async def dial(self, connection: str, instances: list[int] | None) -> None:
        self.world.set_peer_legs(connection, instances)


class HttpWorldPort:
    """The world of an ARM simulator at ``url``, through its ``/_sim/`` control API."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        host = URL(url).host or ""
        if host != "localhost" and not _loopback(host):
            raise ValueError(f"the ARM simulator must be on loopback, not {host!r}")
        self.url = url.rstrip("/")
        self.http = http

    async def tunnels(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/_sim/tunnels/detail") as resp:
            resp.raise_for_status()
            rows = await resp.json()
        return [r for r in rows if isinstance(r, dict)]

    async def dial(self, connection: str, instances: list[int] | None) -> None:
        body = {"connection": connection, "instances": instances}
        async with self.http.put(f"{self.url}/_sim/tunnels/peer", json=body) as resp:
            resp.raise_for_status()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _dropped(row: dict[str, Any], leg: dict[str, Any]) -> bool:
    return bool(row.get("dropped")) or bool(leg.get("dropped"))


class SonicOSLink:
    """Keeps ``port``'s tunnels following ``device`` (see the module docstring)."""

    def __init__(self, device: SonicOSDevice, port: Port, *, tick: float = 0.5) -> None:
        self.device = device
        self.port = port
        self.tick = tick
        self.syncs = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        device.subscribe(lambda *_: self._wake.set())

    async def sync(self) -> None:
        """Evaluate the appliance, apply dead peer detection, and dial what it uses."""
        device = self.device
        device.evaluate()
        rows = await self.port.tunnels()
        # Dead peer detection: the gateway in use carries nothing (its tunnel is dropped).
        for name in list(device.committed):
            active = device.tunnels[name].active
            if active is None:
                continue
            other = "secondary" if active == "primary" else "primary"
            if self._dead(rows, device.gateway(name, active)) and not self._dead(
                rows, device.gateway(name, other)
            ):
                device.peer_dead(name)
        used: set[str] = set()
        known: set[str] = set()
        for name, tunnel in device.tunnels.items():
            if name not in device.committed:
                continue
            for role in ("primary", "secondary"):
                address = device.gateway(name, role)
                if address is not None:
                    known.add(address)
            address = device.gateway(name, tunnel.active)
            if address is not None:
                used.add(address)
        for row in rows:
            legs = [leg for leg in row.get("tunnels", []) if isinstance(leg, dict)]
            if not any(leg.get("vip") in known for leg in legs):
                continue  # not a tunnel of this appliance's
            want = sorted(int(leg["instance"]) for leg in legs if leg.get("vip") in used)
            have = sorted(int(leg["instance"]) for leg in legs if leg.get("dialed", True))
            if want != have:
                await self.port.dial(str(row["id"]), want)
        self.syncs += 1

    @staticmethod
    def _dead(rows: list[dict[str, Any]], address: str | None) -> bool:
        if address is None:
            return False
        for row in rows:
            for leg in row.get("tunnels", []):
                if isinstance(leg, dict) and leg.get("vip") == address and _dropped(row, leg):
                    return True
        return False

    async def run(self) -> None:
        """Sync at every tunnel move of the appliance and every ``tick``, until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.sync()
            except Exception as exc:  # the ARM simulator away: try again next tick
                log.warning("sonicos link: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick)

    def spawn(self) -> None:
        """Keep syncing in the background (the first sync at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="sonicos-link")

    async def start(self) -> SonicOSLink:
        """First sync now (its errors raised), then keep syncing in the background."""
        await self.sync()
        self.spawn()
        return self

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> SonicOSLink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

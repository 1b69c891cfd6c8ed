"""Fixtures: a simulator on 127.0.0.1 (port 0) driven by the real aio SDK client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.mgmt.network.aio import NetworkManagementClient

from bot.sim.arm import start_arm_sim
from bot.sim.client import sim_network_client
from bot.sim.world import World

SUB = "11111111-2222-3333-4444-555555555555"
RG = "rg-vpn"
LOCATION = "westeurope"
SITE_IP = "198.51.100.10"
SITE_KEY = "psk-site-1"


class FakeClock:
    """World clock the tests advance by hand (tunnel delays without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    world: World
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.endpoint + path


StartSim = Callable[[World], Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    runners: list[web.AppRunner] = []

    async def start(world: World) -> Sim:
        runner, port = await start_arm_sim(world, "127.0.0.1", 0)
        runners.append(runner)
        return Sim(world, port)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(clock: FakeClock) -> World:
    w = World.empty(clock=clock, retry_after=0, tunnel_delay=0)
    w.add_resource_group(SUB, RG, LOCATION)
    return w


@pytest.fixture
async def sim(world: World, start_sim: StartSim) -> Sim:
    return await start_sim(world)


@pytest.fixture
async def client(sim: Sim) -> AsyncIterator[NetworkManagementClient]:
    async with sim_network_client(sim.endpoint, SUB, polling_interval=0) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


AUTH = {"Authorization": "Bearer test-token"}


def rid(kind: str, name: str, sub: str = SUB, rg: str = RG) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/{kind}/{name}"


@dataclass
class Site:
    gateway_id: str
    lng_id: str
    connection_id: str


async def build_site(
    client: NetworkManagementClient,
    world: World,
    *,
    lng_ip: str = SITE_IP,
    conn_key: str = SITE_KEY,
    device_ip: str = SITE_IP,
    device_key: str = SITE_KEY,
    lng_props: dict[str, Any] | None = None,
) -> Site:
    """VPN gateway + LNG + IPsec connection via the SDK, and the device behind the LNG."""
    gw_body: Any = {"location": LOCATION, "properties": {"gatewayType": "Vpn"}}
    gw = await (
        await client.virtual_network_gateways.begin_create_or_update(RG, "vpngw", gw_body)
    ).result()
    props = lng_props or {
        "gatewayIpAddress": lng_ip,
        "localNetworkAddressSpace": {"addressPrefixes": ["192.168.178.0/24"]},
    }
    lng_body: Any = {"location": LOCATION, "properties": props}
    lng = await (
        await client.local_network_gateways.begin_create_or_update(RG, "lng-home", lng_body)
    ).result()
    world.set_device("fritzbox", public_ip=device_ip, shared_key=device_key, lng="lng-home")
    conn_body: Any = {
        "location": LOCATION,
        "properties": {
            "connectionType": "IPsec",
            "virtualNetworkGateway1": {"id": gw.id},
            "localNetworkGateway2": {"id": lng.id},
            "sharedKey": conn_key,
        },
    }
    conn = await (
        await client.virtual_network_gateway_connections.begin_create_or_update(
            RG, "conn-home", conn_body
        )
    ).result()
    assert gw.id and lng.id and conn.id
    return Site(gw.id, lng.id, conn.id)

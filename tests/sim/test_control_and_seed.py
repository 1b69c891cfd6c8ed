"""The /_sim/ control API over HTTP, seed files (TOML/JSON) and the CLI entry coroutine."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from azure.mgmt.network.aio import NetworkManagementClient

from bot.sim.arm import main
from bot.sim.client import sim_network_client
from bot.sim.world import World

from .conftest import RG, SITE_IP, SITE_KEY, Sim, StartSim, build_site

SEED_TOML = """
subscription = "22222222-0000-0000-0000-000000000000"

[settings]
tunnel_delay = 0
retry_after = 0

[[resource_groups]]
name = "rg-vpn"
location = "West Europe"

[[virtual_network_gateways]]
resource_group = "rg-vpn"
name = "vpngw"

[[local_network_gateways]]
resource_group = "rg-vpn"
name = "lng-home"
gateway_ip_address = "198.51.100.10"
address_prefixes = ["192.168.178.0/24"]

[[local_network_gateways]]
resource_group = "rg-vpn"
name = "lng-office"
fqdn = "office.example.net"
address_prefixes = ["192.168.10.0/24"]

[[connections]]
resource_group = "rg-vpn"
name = "conn-home"
virtual_network_gateway = "vpngw"
local_network_gateway = "lng-home"
shared_key = "home-key"

[[connections]]
resource_group = "rg-vpn"
name = "conn-office"
virtual_network_gateway = "vpngw"
local_network_gateway = "lng-office"
shared_key = "office-key"

[[devices]]
name = "fritzbox-home"
public_ip = "198.51.100.10"
shared_key = "home-key"
lng = "lng-home"

[[devices]]
name = "fritzbox-office"
public_ip = "203.0.113.20"
shared_key = "office-key"
lng = "lng-office"
fqdn = "office.example.net"
"""
SEED_SUB = "22222222-0000-0000-0000-000000000000"


async def statuses(client: NetworkManagementClient) -> dict[str, str]:
    """Status of every connection: a LIST has none (as in ARM), so GET each by name."""
    ops = client.virtual_network_gateway_connections
    names = [c.name or "" async for c in ops.list("rg-vpn")]
    out: dict[str, str] = {}
    for name in names:
        conn = await ops.get("rg-vpn", name)
        out[name] = str(getattr(conn.connection_status, "value", conn.connection_status))
    return out


async def test_toml_seed_world(tmp_path: Path, start_sim: StartSim) -> None:
    seed = tmp_path / "world.toml"
    seed.write_text(SEED_TOML)
    world = World.from_file(seed)
    assert world.settings.retry_after == 0
    sim = await start_sim(world)
    async with sim_network_client(sim.endpoint, SEED_SUB, polling_interval=0) as client:
        assert await statuses(client) == {"conn-home": "Connected", "conn-office": "Connected"}
        lng = await client.local_network_gateways.get("rg-vpn", "lng-home")
        assert lng.location == "westeurope"
        assert lng.provisioning_state == "Succeeded"
        world.set_device("fritzbox-home", public_ip="198.51.100.99")
        assert (await statuses(client))["conn-home"] == "NotConnected"


async def test_json_seed_is_equivalent(tmp_path: Path) -> None:
    import tomllib

    seed = tmp_path / "world.json"
    seed.write_text(json.dumps(tomllib.loads(SEED_TOML)))
    world = World.from_file(seed)
    assert world.dump()["tunnels"] == {
        f"/subscriptions/{SEED_SUB}/resourceGroups/rg-vpn/providers/Microsoft.Network/"
        "connections/conn-home": "Connected",
        f"/subscriptions/{SEED_SUB}/resourceGroups/rg-vpn/providers/Microsoft.Network/"
        "connections/conn-office": "Connected",
    }


def test_seed_with_dangling_reference_is_rejected() -> None:
    bad = {
        "resource_groups": [{"name": "rg"}],
        "virtual_network_gateways": [{"resource_group": "rg", "name": "gw"}],
        "connections": [
            {
                "resource_group": "rg",
                "name": "c",
                "virtual_network_gateway": "gw",
                "local_network_gateway": "missing",
            }
        ],
    }
    with pytest.raises(ValueError, match="InvalidResourceReference"):
        World.from_seed(bad)


async def test_control_api_round_trip(
    sim: Sim, world: World, client: NetworkManagementClient, http: aiohttp.ClientSession
) -> None:
    await build_site(client, world)

    async def status() -> str:
        conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
        return str(getattr(conn.connection_status, "value", conn.connection_status))

    assert await status() == "Connected"
    async with http.put(sim.url("/_sim/devices/fritzbox"), json={"public_ip": "203.0.113.5"}) as r:
        assert r.status == 200
        assert (await r.json())["public_ip"] == "203.0.113.5"
    assert await status() == "NotConnected"
    async with http.put(sim.url("/_sim/devices/fritzbox"), json={"public_ip": SITE_IP}) as r:
        assert r.status == 200
    assert await status() == "Connected"

    async with http.post(sim.url("/_sim/tunnels/drop"), json={"connection": "conn-home"}) as r:
        assert (await r.json())["connectionStatus"] == "NotConnected"
    async with http.get(sim.url("/_sim/tunnels")) as r:
        assert list((await r.json()).values()) == ["NotConnected"]

    async with http.patch(sim.url("/_sim/config"), json={"tunnel_delay": 7}) as r:
        assert (await r.json())["tunnel_delay"] == 7
    async with http.patch(sim.url("/_sim/config"), json={"tunnel_delay": -1}) as r:
        assert r.status == 400

    fault = {"kind": "error", "method": "GET", "path": "lng-home$", "status": 500, "count": 5}
    async with http.post(sim.url("/_sim/faults"), json=fault) as r:
        assert r.status == 201
        rule = await r.json()
    assert rule["remaining"] == 5
    async with http.post(sim.url("/_sim/faults"), json={"kind": "nope"}) as r:
        assert r.status == 400
    async with http.get(sim.url("/_sim/faults")) as r:
        assert [f["id"] for f in await r.json()] == [rule["id"]]
    async with http.delete(sim.url(f"/_sim/faults/{rule['id']}")) as r:
        assert await r.json() == []

    async with http.get(sim.url("/_sim/state")) as r:
        state = await r.json()
    conn = next(x for x in state["resources"] if x["name"] == "conn-home")
    assert conn["sim"]["sharedKey"] == SITE_KEY
    assert state["devices"][0]["name"] == "fritzbox"

    async with http.post(
        sim.url("/_sim/resource-groups"), json={"subscription": "s2", "name": "rg2"}
    ) as r:
        assert r.status == 201
    assert ("s2", "rg2") in world.resource_groups
    async with http.put(sim.url("/_sim/dns/home.example.net"), json={"ip": "192.0.2.1"}) as r:
        assert (await r.json()) == {"home.example.net": "192.0.2.1"}


async def test_main_serves_until_cancelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = tmp_path / "world.toml"
    seed.write_text(SEED_TOML)
    task = asyncio.create_task(main("127.0.0.1", 0, seed, retry_after=1))
    port = None
    for _ in range(100):
        await asyncio.sleep(0.01)
        found = re.search(r"http://127\.0\.0\.1:(\d+)", capsys.readouterr().out)
        if found:
            port = int(found.group(1))
            break
    assert port is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/_sim/config") as resp,
    ):
        assert (await resp.json())["retry_after"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

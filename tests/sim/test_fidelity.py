"""ARM fidelity seen through the real aio SDK: list vs get, byte counters, active-active
tunnels, BGP peer status, resource groups the ARM way, validation and api-versions."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network.aio import NetworkManagementClient

from bot.sim.client import sim_network_client
from bot.sim.resources import Kind, collection_id
from bot.sim.world import World

from .conftest import AUTH, LOCATION, RG, SITE_IP, SITE_KEY, SUB, FakeClock, Sim, build_site, rid

RATE_IN, RATE_OUT = 1000.0, 400.0
DETAIL_RE = r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d"
RG_API = {"api-version": "2021-04-01"}


def lng_body(ip: str = SITE_IP, location: str = LOCATION) -> Any:
    return {"location": location, "properties": {"gatewayIpAddress": ip}}


def text(value: Any) -> str:
    return str(getattr(value, "value", value))


async def get_conn(client: NetworkManagementClient, name: str = "conn-home") -> Any:
    return await client.virtual_network_gateway_connections.get(RG, name)


async def make_active_active(client: NetworkManagementClient) -> None:
    gw = await client.virtual_network_gateways.get(RG, "vpngw")
    # azure-mgmt-network 31+ calls it active_active; older model generations call it active
    setattr(gw, "active_active" if hasattr(gw, "active_active") else "active", True)
    await (await client.virtual_network_gateways.begin_create_or_update(RG, "vpngw", gw)).result()


# ---------------------------------------------------------------- list vs get, counters
async def test_list_omits_status_and_get_has_it(
    client: NetworkManagementClient, world: World
) -> None:
    site = await build_site(client, world)
    world.counters.reset()
    listed = [c async for c in client.virtual_network_gateway_connections.list(RG)]
    assert [c.name for c in listed] == ["conn-home"]
    assert listed[0].connection_status is None
    assert listed[0].tunnel_connection_status is None
    assert listed[0].ingress_bytes_transferred == 0  # azure-cli#2061 shows 0 on a list
    by_gateway = [c async for c in client.virtual_network_gateways.list_connections(RG, "vpngw")]
    assert by_gateway[0].connection_status is None

    conn = await get_conn(client)
    assert text(conn.connection_status) == "Connected"
    assert conn.tunnel_connection_status and len(conn.tunnel_connection_status) == 1

    collection = collection_id(SUB, RG, Kind.CONNECTION)
    assert world.counters.reads(collection) == 1  # one LIST page = one read of the collection
    assert world.counters.reads(site.connection_id) == 1  # one GET = one read of the connection
    assert world.counters.reads(site.gateway_id) == 1  # list_connections reads the gateway


async def test_list_pages_count_one_read_each(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    world.configure(page_size=1)
    body: Any = {
        "location": LOCATION,
        "properties": {
            "connectionType": "IPsec",
            "virtualNetworkGateway1": {"id": rid("virtualNetworkGateways", "vpngw")},
            "localNetworkGateway2": {"id": rid("localNetworkGateways", "lng-home")},
            "sharedKey": SITE_KEY,
        },
    }
    ops = client.virtual_network_gateway_connections
    await (await ops.begin_create_or_update(RG, "conn-second", body)).result()
    world.counters.reset()
    assert len([c async for c in ops.list(RG)]) == 2
    assert world.counters.reads(collection_id(SUB, RG, Kind.CONNECTION)) == 2


async def test_byte_counters_grow_only_while_connected_and_not_idle(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.configure(
        tunnel_delay=10, ingress_bytes_per_second=RATE_IN, egress_bytes_per_second=RATE_OUT
    )
    await build_site(client, world)
    clock.advance(5)
    conn = await get_conn(client)
    assert text(conn.connection_status) == "Connecting"
    assert conn.ingress_bytes_transferred == 0 and conn.egress_bytes_transferred == 0

    clock.advance(5 + 20)  # Connected for 20 s
    conn = await get_conn(client)
    assert text(conn.connection_status) == "Connected"
    assert conn.ingress_bytes_transferred == 20 * RATE_IN
    assert conn.egress_bytes_transferred == 20 * RATE_OUT
    tunnel = conn.tunnel_connection_status[0]
    assert tunnel.ingress_bytes_transferred == conn.ingress_bytes_transferred
    assert re.fullmatch(DETAIL_RE, tunnel.last_connection_established_utc_time or "")

    world.set_idle("conn-home")  # Connected, but nothing moves
    clock.advance(100)
    conn = await get_conn(client)
    assert text(conn.connection_status) == "Connected"
    assert conn.ingress_bytes_transferred == 20 * RATE_IN

    world.set_idle("conn-home", False)
    clock.advance(10)
    assert (await get_conn(client)).ingress_bytes_transferred == 30 * RATE_IN

    world.set_device("fritzbox", public_ip="203.0.113.99")  # the tunnel drops
    clock.advance(50)
    conn = await get_conn(client)
    assert text(conn.connection_status) == "NotConnected"
    assert conn.ingress_bytes_transferred == 30 * RATE_IN  # kept, not growing
    assert conn.egress_bytes_transferred == 30 * RATE_OUT


async def test_rate_change_applies_from_then_on(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.configure(ingress_bytes_per_second=100, egress_bytes_per_second=0)
    await build_site(client, world)
    clock.advance(10)
    world.configure(ingress_bytes_per_second=0)
    clock.advance(10)
    conn = await get_conn(client)
    assert conn.ingress_bytes_transferred == 1000
    assert conn.egress_bytes_transferred == 0


async def test_idle_over_the_control_api(
    sim: Sim, client: NetworkManagementClient, world: World, http: aiohttp.ClientSession
) -> None:
    await build_site(client, world)
    async with http.post(sim.url("/_sim/tunnels/idle"), json={"connection": "conn-home"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["connectionStatus"] == "Connected"
    assert body["tunnels"][0]["idle"] is True
    async with http.post(
        sim.url("/_sim/tunnels/idle"), json={"connection": "conn-home", "idle": "yes"}
    ) as resp:
        assert resp.status == 400


# ---------------------------------------------------------------- active-active
async def test_active_active_has_two_tunnels_and_one_can_drop(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.configure(ingress_bytes_per_second=RATE_IN, egress_bytes_per_second=RATE_OUT)
    await build_site(client, world)
    await make_active_active(client)
    gw = await client.virtual_network_gateways.get(RG, "vpngw")
    assert getattr(gw, "active_active", getattr(gw, "active", None)) is True
    vips = world.gateway_vips("vpngw")
    assert len(vips) == 2 and len(set(vips)) == 2
    peering = gw.bgp_settings.bgp_peering_addresses
    assert [p.tunnel_ip_addresses[0] for p in peering] == vips

    clock.advance(10)
    conn = await get_conn(client)
    tunnels = conn.tunnel_connection_status
    assert [t.tunnel for t in tunnels] == [f"conn-home_{vip}" for vip in vips]
    assert [text(t.connection_status) for t in tunnels] == ["Connected", "Connected"]
    assert conn.ingress_bytes_transferred == sum(t.ingress_bytes_transferred for t in tunnels)

    world.drop_tunnel("conn-home", cleared_by=["reset_gateway"], instance=1)
    clock.advance(10)
    conn = await get_conn(client)
    tunnels = conn.tunnel_connection_status
    assert text(conn.connection_status) == "Connected"  # the other tunnel carries on
    assert [text(t.connection_status) for t in tunnels] == ["Connected", "NotConnected"]
    assert tunnels[0].ingress_bytes_transferred == 20 * RATE_IN
    assert tunnels[1].ingress_bytes_transferred == 10 * RATE_IN

    # a reset without gatewayVip reboots the primary instance: the second tunnel stays down
    await (await client.virtual_network_gateways.begin_reset(RG, "vpngw")).result()
    conn = await get_conn(client)
    assert text(conn.tunnel_connection_status[1].connection_status) == "NotConnected"
    await (
        await client.virtual_network_gateways.begin_reset(RG, "vpngw", gateway_vip=vips[1])
    ).result()
    conn = await get_conn(client)
    assert [text(t.connection_status) for t in conn.tunnel_connection_status] == [
        "Connected",
        "Connected",
    ]

    with pytest.raises(HttpResponseError) as err:
        await client.virtual_network_gateways.begin_reset(RG, "vpngw", gateway_vip="192.0.2.1")
    assert err.value.status_code == 400


async def test_dropping_both_tunnels_takes_the_connection_down(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    await make_active_active(client)
    vips = world.gateway_vips("vpngw")
    world.drop_tunnel("conn-home", instance=f"conn-home_{vips[0]}")
    assert world.connection_status("conn-home") == "Connected"
    world.drop_tunnel("conn-home", instance=vips[1])
    assert world.connection_status("conn-home") == "NotConnected"
    await (
        await client.virtual_network_gateway_connections.begin_reset_connection(RG, "conn-home")
    ).result()
    assert world.connection_status("conn-home") == "Connected"
    with pytest.raises(ValueError):
        world.drop_tunnel("conn-home", instance=2)


async def test_active_standby_has_one_instance(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    with pytest.raises(ValueError):
        world.drop_tunnel("conn-home", instance=1)
    world.drop_tunnel("conn-home", instance=0)
    assert world.connection_status("conn-home") == "NotConnected"


async def test_drop_one_tunnel_over_the_control_api(
    sim: Sim, client: NetworkManagementClient, world: World, http: aiohttp.ClientSession
) -> None:
    await build_site(client, world)
    await make_active_active(client)
    async with http.post(
        sim.url("/_sim/tunnels/drop"), json={"connection": "conn-home", "instance": 1}
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["connectionStatus"] == "Connected"
    assert [t["connectionStatus"] for t in body["tunnels"]] == ["Connected", "NotConnected"]
    async with http.get(sim.url("/_sim/tunnels/detail")) as resp:
        detail = await resp.json()
    assert detail[0]["tunnels"][1]["dropped"] == sorted(
        ["reset_connection", "put_connection", "set_shared_key", "put_lng", "reset_gateway"]
    )


# ---------------------------------------------------------------- BGP peer status
async def build_bgp_site(client: NetworkManagementClient, world: World) -> None:
    await build_site(
        client,
        world,
        lng_props={
            "gatewayIpAddress": SITE_IP,
            "localNetworkAddressSpace": {"addressPrefixes": ["192.168.178.0/24", "10.9.0.0/16"]},
            "bgpSettings": {"asn": 65010, "bgpPeeringAddress": "192.168.178.1"},
        },
    )
    conn = await get_conn(client)
    conn.enable_bgp = True
    await (
        await client.virtual_network_gateway_connections.begin_create_or_update(
            RG, "conn-home", conn
        )
    ).result()


async def test_bgp_peer_status_lro_follows_the_tunnel(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    await build_bgp_site(client, world)
    clock.advance(3725)
    poller = await client.virtual_network_gateways.begin_get_bgp_peer_status(RG, "vpngw")
    result = await poller.result()
    assert result.value is not None and len(result.value) == 1
    peer = result.value[0]
    assert peer.neighbor == "192.168.178.1"
    assert peer.asn == 65010
    assert text(peer.state) == "Connected"
    assert peer.connected_duration == "01:02:05"
    assert peer.routes_received == 2
    assert peer.messages_sent and peer.messages_sent > 0
    gw = await client.virtual_network_gateways.get(RG, "vpngw")
    assert peer.local_address == gw.bgp_settings.bgp_peering_address

    await make_active_active(client)
    world.drop_tunnel("conn-home", instance=1)
    result = await (
        await client.virtual_network_gateways.begin_get_bgp_peer_status(
            RG, "vpngw", peer="192.168.178.1"
        )
    ).result()
    assert result.value is not None
    assert [text(p.state) for p in result.value] == ["Connected", "Idle"]
    assert len({p.local_address for p in result.value}) == 2

    world.configure(tunnel_delay=30)
    world.set_device("fritzbox", public_ip="203.0.113.5")
    world.set_device("fritzbox", public_ip=SITE_IP)  # re-dials: Connecting for 30 s
    result = await (
        await client.virtual_network_gateways.begin_get_bgp_peer_status(RG, "vpngw")
    ).result()
    assert result.value is not None
    assert text(result.value[0].state) == "Connecting"

    none = await (
        await client.virtual_network_gateways.begin_get_bgp_peer_status(
            RG, "vpngw", peer="10.255.255.1"
        )
    ).result()
    assert none.value == []


async def test_bgp_peer_status_is_a_location_lro(
    sim: Sim, client: NetworkManagementClient, world: World, http: aiohttp.ClientSession
) -> None:
    await build_bgp_site(client, world)
    url = sim.url(rid("virtualNetworkGateways", "vpngw") + "/getBgpPeerStatus")
    async with http.post(url, params={"api-version": "2024-07-01"}, headers=AUTH) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        assert "/operationResults/" in location
    world.ops.finish_all()
    async with http.get(location, headers=AUTH) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"value"}
    assert set(body["value"][0]) == {
        "localAddress",
        "neighbor",
        "asn",
        "state",
        "connectedDuration",
        "routesReceived",
        "messagesSent",
        "messagesReceived",
    }


# ---------------------------------------------------------------- resource groups
async def test_resource_group_the_arm_way(sim: Sim, http: aiohttp.ClientSession) -> None:
    sub = "33333333-0000-0000-0000-000000000000"  # unknown to the world so far
    url = sim.url(f"/subscriptions/{sub}/resourcegroups/rg-new")
    async with http.put(url, params=RG_API, json={"location": "North Europe"}, headers=AUTH) as r:
        assert r.status == 201
        body = await r.json()
    assert body == {
        "id": f"/subscriptions/{sub}/resourceGroups/rg-new",
        "name": "rg-new",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "northeurope",
        "properties": {"provisioningState": "Succeeded"},
    }
    put = {"location": "northeurope", "tags": {"env": "sim"}}
    async with http.put(url, params=RG_API, json=put, headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json())["tags"] == {"env": "sim"}
    async with http.get(url, params=RG_API, headers=AUTH) as r:
        assert r.status == 200
    async with http.head(url, params=RG_API, headers=AUTH) as r:
        assert r.status == 204

    async with sim_network_client(sim.endpoint, sub, polling_interval=0) as client:
        lng = await (
            await client.local_network_gateways.begin_create_or_update(
                "rg-new", "lng-a", lng_body(location="northeurope")
            )
        ).result()
        assert lng.id == f"/subscriptions/{sub}/resourceGroups/rg-new/providers/" + (
            "Microsoft.Network/localNetworkGateways/lng-a"
        )

    async with http.put(url, params=RG_API, json={"location": "westus"}, headers=AUTH) as r:
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "InvalidResourceGroupLocation"

    async with http.delete(url, params=RG_API, headers=AUTH) as r:
        assert r.status == 202
        location = r.headers["Location"]
        assert "Azure-AsyncOperation" not in r.headers
    assert re.fullmatch(
        rf"{sim.endpoint}/subscriptions/{sub}/operationresults/[0-9a-f-]+\?api-version=2021-04-01",
        location,
    )
    sim.world.ops.finish_all()
    async with http.get(location, headers=AUTH) as r:
        assert r.status in (200, 204)
    async with http.get(url, params=RG_API, headers=AUTH) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "ResourceGroupNotFound"
    assert not [k for k in sim.world.resources if sub in k]


async def test_resource_group_errors(sim: Sim, http: aiohttp.ClientSession) -> None:
    base = f"/subscriptions/{SUB}/resourcegroups"
    async with http.put(
        sim.url(base + "/rg-x"),
        params={"api-version": "2099-01-01"},
        json={"location": "x"},
        headers=AUTH,
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "InvalidApiVersionParameter"
    async with http.put(sim.url(base + "/rg-x"), params=RG_API, json={}, headers=AUTH) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "LocationRequired"
    async with http.put(
        sim.url(base + "/bad%20name"), params=RG_API, json={"location": "westus"}, headers=AUTH
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "InvalidResourceGroup"
    async with http.get(sim.url(base), params=RG_API, headers=AUTH) as r:
        assert r.status == 200
        assert [g["name"] for g in (await r.json())["value"]] == [RG]
    async with http.delete(sim.url(base + "/nope"), params=RG_API, headers=AUTH) as r:
        assert r.status == 404


# ---------------------------------------------------------------- validation
def connection_body(**props: Any) -> Any:
    return {
        "location": LOCATION,
        "properties": {
            "connectionType": "IPsec",
            "virtualNetworkGateway1": {"id": rid("virtualNetworkGateways", "vpngw")},
            "localNetworkGateway2": {"id": rid("localNetworkGateways", "lng-home")},
            "sharedKey": SITE_KEY,
            **props,
        },
    }


async def put_error(client: NetworkManagementClient, name: str, body: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as err:
        await client.virtual_network_gateway_connections.begin_create_or_update(RG, name, body)
    return err.value


@pytest.mark.parametrize(
    ("props", "path"),
    [
        ({"connectionType": "IPSecurity"}, "properties.connectionType"),
        ({"connectionProtocol": "IKEv3"}, "properties.connectionProtocol"),
        ({"connectionMode": "ResponderFirst"}, "properties.connectionMode"),
        (
            {
                "ipsecPolicies": [
                    {
                        "saLifeTimeSeconds": 27000,
                        "saDataSizeKilobytes": 102400000,
                        "ipsecEncryption": "AES256",
                        "ipsecIntegrity": "SHA256",
                        "ikeEncryption": "AES256",
                        "ikeIntegrity": "SHA256",
                        "dhGroup": "DHGroup14",
                        "pfsGroup": "PFS3",
                    }
                ]
            },
            "properties.ipsecPolicies[0].pfsGroup",
        ),
    ],
)
async def test_invalid_connection_enum_is_a_parse_error(
    client: NetworkManagementClient, world: World, props: dict[str, Any], path: str
) -> None:
    await build_site(client, world)
    err = await put_error(client, "conn-bad", connection_body(**props))
    assert err.status_code == 400
    assert err.error is not None and err.error.code == "InvalidRequestFormat"
    assert err.error.message == "Cannot parse the request."
    detail = err.error.details[0]
    assert detail.code == "InvalidJson"
    assert (detail.message or "").startswith("Error converting value ")
    assert (detail.message or "").endswith(f"Path '{path}'.")


async def test_enum_values_are_case_insensitive_and_canonicalised(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    body = connection_body(connectionProtocol="ikev1", connectionMode="responderonly")
    body["properties"]["connectionType"] = "ipsec"
    conn = await (
        await client.virtual_network_gateway_connections.begin_create_or_update(RG, "conn-2", body)
    ).result()
    assert text(conn.connection_type) == "IPsec"
    assert text(conn.connection_protocol) == "IKEv1"
    assert text(conn.connection_mode) == "ResponderOnly"


@pytest.mark.parametrize(
    ("props", "path"),
    [
        ({"gatewayType": "VpnGateway"}, "properties.gatewayType"),
        ({"vpnType": "Routed"}, "properties.vpnType"),
        ({"sku": {"name": "VpnGw9", "tier": "VpnGw9"}}, "properties.sku.name"),
        ({"vpnGatewayGeneration": "Generation3"}, "properties.vpnGatewayGeneration"),
    ],
)
async def test_invalid_gateway_enum_is_a_parse_error(
    client: NetworkManagementClient, props: dict[str, Any], path: str
) -> None:
    body: Any = {"location": LOCATION, "properties": props}
    with pytest.raises(HttpResponseError) as err:
        await client.virtual_network_gateways.begin_create_or_update(RG, "gw-bad", body)
    assert err.value.error is not None and err.value.error.code == "InvalidRequestFormat"
    assert (err.value.error.details[0].message or "").endswith(f"Path '{path}'.")


@pytest.mark.parametrize("name", ["-lng", "lng.", "a" * 81, "has space", "lng!"])
async def test_invalid_names_are_refused(client: NetworkManagementClient, name: str) -> None:
    with pytest.raises(HttpResponseError) as err:
        await client.local_network_gateways.begin_create_or_update(RG, name, lng_body())
    assert err.value.status_code == 400
    assert err.value.error is not None and err.value.error.code == "InvalidResourceName"
    assert "can be up to 80 characters long" in (err.value.error.message or "")


async def test_valid_edge_names_are_accepted(client: NetworkManagementClient) -> None:
    for name in ("a", "lng_", "Lng.home-1_", "x" * 80):
        lng = await (
            await client.local_network_gateways.begin_create_or_update(RG, name, lng_body())
        ).result()
        assert lng.name == name


async def test_location_mismatch_with_gateways_is_refused(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    body = connection_body()
    body["location"] = "northeurope"
    err = await put_error(client, "conn-far", body)
    assert err.status_code == 400
    assert err.error is not None and err.error.code == "InvalidResourceReference"
    assert "same region" in (err.error.message or "")

    await (
        await client.local_network_gateways.begin_create_or_update(
            RG, "lng-far", lng_body(location="northeurope")
        )
    ).result()
    body = connection_body(localNetworkGateway2={"id": rid("localNetworkGateways", "lng-far")})
    err = await put_error(client, "conn-far", body)
    assert err.error is not None and err.error.code == "InvalidResourceReference"


# ---------------------------------------------------------------- api-versions
@pytest.mark.parametrize("version", ["2018-11-01", "2019-11-01", "2020-11-01", "2023-04-01"])
async def test_older_api_versions_are_accepted(
    client: NetworkManagementClient, world: World, version: str
) -> None:
    await build_site(client, world)
    ops = client.virtual_network_gateway_connections
    conn = await ops.get(RG, "conn-home", api_version=version)
    assert text(conn.connection_status) == "Connected"
    lng = await (
        await client.local_network_gateways.begin_create_or_update(
            RG, "lng-old", lng_body("192.0.2.44"), api_version=version
        )
    ).result()
    assert lng.gateway_ip_address == "192.0.2.44"


async def test_unknown_api_version_is_refused(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    with pytest.raises(HttpResponseError) as err:
        await client.virtual_network_gateway_connections.get(
            RG, "conn-home", api_version="2099-01-01"
        )
    assert err.value.status_code == 400
    assert err.value.error is not None and err.value.error.code == "NoRegisteredProviderFound"


# ---------------------------------------------------------------- Unknown without a device
async def test_unknown_without_a_device_not_connected_with_one(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    world.devices.clear()
    world.reevaluate()
    conn = await get_conn(client)
    assert text(conn.connection_status) == "Unknown"
    assert [text(t.connection_status) for t in conn.tunnel_connection_status] == ["Unknown"]

    world.set_device("fritzbox", public_ip=SITE_IP, shared_key="other-key", lng="lng-home")
    assert text((await get_conn(client)).connection_status) == "NotConnected"
    world.set_device("fritzbox", shared_key=SITE_KEY)
    assert text((await get_conn(client)).connection_status) == "Connected"


async def test_site_built_without_device_is_unknown(
    client: NetworkManagementClient, world: World
) -> None:
    gw_body: Any = {"location": LOCATION, "properties": {"gatewayType": "Vpn"}}
    gw = await (
        await client.virtual_network_gateways.begin_create_or_update(RG, "vpngw", gw_body)
    ).result()
    lng = await (
        await client.local_network_gateways.begin_create_or_update(RG, "lng-lonely", lng_body())
    ).result()
    body: Any = {
        "location": LOCATION,
        "properties": {
            "connectionType": "IPsec",
            "virtualNetworkGateway1": {"id": gw.id},
            "localNetworkGateway2": {"id": lng.id},
            "sharedKey": "k",
        },
    }
    ops = client.virtual_network_gateway_connections
    await (await ops.begin_create_or_update(RG, "conn-lonely", body)).result()
    assert text((await ops.get(RG, "conn-lonely")).connection_status) == "Unknown"
    assert world.dump()["tunnels"][rid("connections", "conn-lonely")] == "Unknown"

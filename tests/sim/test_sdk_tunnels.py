"""The real aio SDK against the simulator: resources, tunnel state, resets, shared keys."""

from __future__ import annotations

import json

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.network.aio import NetworkManagementClient

from bot.sim.world import World

from .conftest import LOCATION, RG, SITE_IP, SITE_KEY, FakeClock, build_site, rid

NEW_IP = "203.0.113.77"


async def status(client: NetworkManagementClient) -> str:
    conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
    return str(getattr(conn.connection_status, "value", conn.connection_status))


async def test_topology_connects_and_looks_like_arm(
    client: NetworkManagementClient, world: World
) -> None:
    site = await build_site(client, world)
    conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
    assert conn.id == rid("connections", "conn-home")
    assert conn.name == "conn-home"
    assert conn.type == "Microsoft.Network/connections"
    assert conn.location == LOCATION
    assert conn.provisioning_state == "Succeeded"
    assert conn.connection_status == "Connected"
    assert conn.etag and conn.etag.startswith('W/"')
    assert conn.shared_key is None  # write-only, as ARM since 2026-01-01
    assert conn.virtual_network_gateway1.id == site.gateway_id
    assert conn.local_network_gateway2 is not None
    assert conn.local_network_gateway2.id == site.lng_id
    listed = [c.name async for c in client.virtual_network_gateway_connections.list(RG)]
    assert listed == ["conn-home"]
    by_gateway = [
        c.name async for c in client.virtual_network_gateways.list_connections(RG, "vpngw")
    ]
    assert by_gateway == ["conn-home"]


async def test_ip_change_then_in_place_lng_update_reconnects(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.configure(tunnel_delay=30)
    await build_site(client, world)
    assert await status(client) == "Connecting"
    clock.advance(30)
    assert await status(client) == "Connected"

    world.set_device("fritzbox", public_ip=NEW_IP)  # the ISP hands out a new address
    assert await status(client) == "NotConnected"

    lng = await client.local_network_gateways.get(RG, "lng-home")
    old_etag, old_guid = lng.etag, lng.resource_guid
    lng.gateway_ip_address = NEW_IP
    updated = await (
        await client.local_network_gateways.begin_create_or_update(RG, "lng-home", lng)
    ).result()
    assert updated.gateway_ip_address == NEW_IP
    assert updated.provisioning_state == "Succeeded"
    assert updated.etag != old_etag
    assert updated.resource_guid == old_guid
    assert updated.local_network_address_space.address_prefixes == ["192.168.178.0/24"]
    assert await status(client) == "Connecting"
    clock.advance(29.9)
    assert await status(client) == "Connecting"
    clock.advance(0.2)
    assert await status(client) == "Connected"


async def test_shared_key_mismatch_and_set_shared_key(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world, conn_key="wrong-key")
    assert await status(client) == "NotConnected"
    key = await client.virtual_network_gateway_connections.get_shared_key(RG, "conn-home")
    assert key.value == "wrong-key"

    result = await (
        await client.virtual_network_gateway_connections.begin_set_shared_key(
            RG, "conn-home", {"value": SITE_KEY}
        )
    ).result()
    assert result.value == SITE_KEY
    assert await status(client) == "Connected"
    key = await client.virtual_network_gateway_connections.get_shared_key(RG, "conn-home")
    assert key.value == SITE_KEY


async def test_reset_shared_key_breaks_the_tunnel(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    result = await (
        await client.virtual_network_gateway_connections.begin_reset_shared_key(
            RG, "conn-home", {"keyLength": 32}
        )
    ).result()
    assert result.key_length == 32
    key = await client.virtual_network_gateway_connections.get_shared_key(RG, "conn-home")
    assert key.value and len(key.value) == 32 and key.value != SITE_KEY
    assert await status(client) == "NotConnected"


async def test_connection_reput_keeps_key_it_cannot_read(
    client: NetworkManagementClient, world: World
) -> None:
    """GET -> PUT round trip: sharedKey is absent from GET, NRP must keep the old one."""
    await build_site(client, world)
    conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
    conn.tags = {"owner": "tunnelwarden"}
    await (
        await client.virtual_network_gateway_connections.begin_create_or_update(
            RG, "conn-home", conn
        )
    ).result()
    key = await client.virtual_network_gateway_connections.get_shared_key(RG, "conn-home")
    assert key.value == SITE_KEY
    assert await status(client) == "Connected"


async def test_fqdn_mode_follows_dyndns(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.set_dns("home.example.net", SITE_IP)
    await build_site(
        client,
        world,
        lng_props={
            "fqdn": "home.example.net",
            "localNetworkAddressSpace": {"addressPrefixes": ["192.168.178.0/24"]},
        },
    )
    world.set_device("fritzbox", fqdn="home.example.net")
    assert await status(client) == "Connected"

    world.configure(tunnel_delay=5)
    world.set_device("fritzbox", public_ip=NEW_IP)  # DynDNS follows the new IP
    assert world.dns["home.example.net"] == NEW_IP
    assert await status(client) == "Connecting"  # router re-dials
    clock.advance(5)
    assert await status(client) == "Connected"

    world.set_dns("home.example.net", "192.0.2.99")  # stale/wrong DNS record
    assert await status(client) == "NotConnected"


async def test_drop_and_reset_connection(client: NetworkManagementClient, world: World) -> None:
    site = await build_site(client, world)
    world.drop_tunnel(site.connection_id)
    assert await status(client) == "NotConnected"
    await (
        await client.virtual_network_gateway_connections.begin_reset_connection(RG, "conn-home")
    ).result()
    assert await status(client) == "Connected"


async def test_drop_only_cleared_by_gateway_reset(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    world.drop_tunnel("conn-home", cleared_by=["reset_gateway"])
    await (
        await client.virtual_network_gateway_connections.begin_reset_connection(RG, "conn-home")
    ).result()
    assert await status(client) == "NotConnected"
    gw = await (await client.virtual_network_gateways.begin_reset(RG, "vpngw")).result()
    assert gw.name == "vpngw"
    assert gw.provisioning_state == "Succeeded"
    assert await status(client) == "Connected"


async def test_get_ike_sas_returns_a_json_string(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    sas = await (
        await client.virtual_network_gateway_connections.begin_get_ike_sas(RG, "conn-home")
    ).result()
    assert isinstance(sas, str)
    parsed = json.loads(sas)
    assert parsed and parsed[0]["remoteEndpoint"] == SITE_IP

    world.set_device("fritzbox", public_ip=NEW_IP)
    sas = await (
        await client.virtual_network_gateway_connections.begin_get_ike_sas(RG, "conn-home")
    ).result()
    assert json.loads(sas) == []


async def test_connection_referencing_missing_gateway_is_rejected(
    client: NetworkManagementClient, world: World
) -> None:
    gw = await (
        await client.virtual_network_gateways.begin_create_or_update(
            RG, "vpngw", {"location": LOCATION}
        )
    ).result()
    body = {
        "location": LOCATION,
        "properties": {
            "connectionType": "IPsec",
            "virtualNetworkGateway1": {"id": gw.id},
            "localNetworkGateway2": {"id": rid("localNetworkGateways", "nope")},
            "sharedKey": "k",
        },
    }
    with pytest.raises(HttpResponseError) as err:
        await client.virtual_network_gateway_connections.begin_create_or_update(RG, "c", body)
    assert err.value.status_code == 400
    assert err.value.error is not None and err.value.error.code == "InvalidResourceReference"
    with pytest.raises(ResourceNotFoundError) as missing:
        await client.virtual_network_gateway_connections.get(RG, "c")
    assert missing.value.error is not None and missing.value.error.code == "ResourceNotFound"


async def test_delete_lro_and_in_use_protection(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    with pytest.raises(HttpResponseError) as err:
        await client.local_network_gateways.begin_delete(RG, "lng-home")
    assert err.value.status_code == 400
    assert err.value.error is not None
    assert err.value.error.code == "InUseLocalNetworkGatewayCannotBeDeleted"

    await (await client.virtual_network_gateway_connections.begin_delete(RG, "conn-home")).result()
    with pytest.raises(ResourceNotFoundError):
        await client.virtual_network_gateway_connections.get(RG, "conn-home")
    await (await client.local_network_gateways.begin_delete(RG, "lng-home")).result()
    assert [x.name async for x in client.local_network_gateways.list(RG)] == []
    # deleting what is already gone is a no-op (204), like ARM
    await (await client.local_network_gateways.begin_delete(RG, "lng-home")).result()


async def test_lng_update_tags_is_synchronous(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    before = await client.local_network_gateways.get(RG, "lng-home")
    lng = await client.local_network_gateways.update_tags(RG, "lng-home", {"tags": {"a": "1"}})
    assert lng.tags == {"a": "1"}
    assert lng.etag != before.etag
    assert not world.ops.pending_for(before.id or "")


async def test_connection_update_tags_is_an_lro(
    client: NetworkManagementClient, world: World
) -> None:
    site = await build_site(client, world)
    poller = await client.virtual_network_gateway_connections.begin_update_tags(
        RG, "conn-home", {"tags": {"env": "sim"}}
    )
    assert world.ops.pending_for(site.connection_id) is not None
    conn = await poller.result()
    assert conn.tags == {"env": "sim"}
    assert conn.provisioning_state == "Succeeded"
    assert world.ops.pending_for(site.connection_id) is None
    assert world.counters.polls(site.connection_id) >= 2

"""Conformance against azure-rest-api-specs examples (copied into ./examples).

Each test sends the example's request body over plain HTTP and checks that our
response has every field of the example response, with equal values except
for server-generated ones (etag, resourceGuid) and ``x.x.x.x`` placeholders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.sim.world import World

from .conftest import FakeClock, StartSim

EXAMPLES = Path(__file__).parent / "examples"
SUB, RG = "subid", "rg1"
BASE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network"
AUTH = {"Authorization": "Bearer conformance"}
GENERATED = {"etag", "resourceGuid"}
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Gateway fields computed by real Azure from infrastructure the simulator does not model.
NOT_MODELLED = {
    "inboundDnsForwardingEndpoint",
    "bgpPeeringAddresses",
    "vpnGatewayGeneration",
    "capacity",
    "enablePrivateIpAddress",
}


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


def assert_conforms(actual: Any, expected: Any, path: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key in NOT_MODELLED:
                continue
            assert key in actual, f"{path}.{key} missing"
            if key == "etag":
                assert re.fullmatch(rf'W/"{GUID}"', actual[key]), f"{path}.etag"
            elif key == "resourceGuid":
                assert re.fullmatch(GUID, actual[key]), f"{path}.resourceGuid"
            else:
                assert_conforms(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_conforms(a, e, f"{path}[{index}]")
    elif expected != "x.x.x.x":
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.fixture
async def spec_sim(start_sim: StartSim, clock: FakeClock) -> tuple[World, str]:
    world = World.empty(clock=clock, retry_after=0, tunnel_delay=0)
    world.add_resource_group(SUB, RG, "centralus")
    sim = await start_sim(world)
    return world, sim.endpoint


async def call(
    http: aiohttp.ClientSession, method: str, url: str, doc: dict[str, Any], body: Any = None
) -> tuple[int, Any, Any]:
    params = {"api-version": doc["parameters"]["api-version"]}
    async with http.request(method, url, params=params, json=body, headers=AUTH) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None), resp.headers


async def put_example(
    http: aiohttp.ClientSession, endpoint: str, name: str, path: str
) -> tuple[int, Any, Any]:
    doc = example(name)
    return await call(http, "PUT", endpoint + path, doc, doc["parameters"]["parameters"])


async def test_local_network_gateway_create_and_get(
    spec_sim: tuple[World, str], http: aiohttp.ClientSession
) -> None:
    world, endpoint = spec_sim
    create = example("LocalNetworkGatewayCreate")
    status, body, headers = await put_example(
        http, endpoint, "LocalNetworkGatewayCreate", f"{BASE}/localNetworkGateways/localgw"
    )
    assert status == 201
    assert_conforms(body, create["responses"]["201"]["body"])
    assert body["location"] == "centralus"  # "Central US" normalised as ARM does
    assert re.fullmatch(
        rf"{endpoint}/subscriptions/subid/providers/Microsoft\.Network/locations/centralus/"
        rf"operations/{GUID}\?api-version=2026-01-01",
        headers["Azure-AsyncOperation"],
    )
    world.ops.finish_all()
    get = example("LocalNetworkGatewayGet")
    status, body, _ = await call(
        http, "GET", endpoint + f"{BASE}/localNetworkGateways/localgw", get
    )
    assert status == 200
    assert_conforms(body, get["responses"]["200"]["body"])
    # a second PUT of the same body is an update: 200
    status, body, _ = await put_example(
        http, endpoint, "LocalNetworkGatewayCreate", f"{BASE}/localNetworkGateways/localgw"
    )
    assert status == 200
    assert_conforms(body, create["responses"]["200"]["body"])


async def test_local_network_gateway_update_tags(
    spec_sim: tuple[World, str], http: aiohttp.ClientSession
) -> None:
    world, endpoint = spec_sim
    doc = example("LocalNetworkGatewayUpdateTags")
    url = endpoint + f"{BASE}/localNetworkGateways/lgw"
    create = {
        "location": "westus",
        "properties": {
            "gatewayIpAddress": "12.0.0.1",
            "localNetworkAddressSpace": {"addressPrefixes": ["12.0.0.0/8"]},
        },
    }
    assert (await call(http, "PUT", url, doc, create))[0] == 201
    world.ops.finish_all()
    status, body, headers = await call(http, "PATCH", url, doc, doc["parameters"]["parameters"])
    assert status == 200
    assert "Azure-AsyncOperation" not in headers  # synchronous for LNGs
    assert_conforms(body, doc["responses"]["200"]["body"])


async def test_gateway_connection_shared_key_reset_and_ike_sas(
    spec_sim: tuple[World, str], http: aiohttp.ClientSession
) -> None:
    world, endpoint = spec_sim
    world.configure(tunnel_delay=60)
    gw_doc = example("VirtualNetworkGatewayUpdate")
    status, body, _ = await put_example(
        http, endpoint, "VirtualNetworkGatewayUpdate", f"{BASE}/virtualNetworkGateways/vpngw"
    )
    assert status == 201
    expected_gw = dict(gw_doc["responses"]["201"]["body"])
    expected_gw["properties"] = {**expected_gw["properties"], "provisioningState": "Updating"}
    assert_conforms(body, expected_gw)
    await put_example(
        http, endpoint, "LocalNetworkGatewayCreate", f"{BASE}/localNetworkGateways/localgw"
    )
    world.ops.finish_all()

    conn_url = endpoint + f"{BASE}/connections/connS2S"
    conn_doc = example("VirtualNetworkGatewayConnectionCreate")
    status, body, _ = await put_example(
        http, endpoint, "VirtualNetworkGatewayConnectionCreate", f"{BASE}/connections/connS2S"
    )
    assert status == 201
    assert_conforms(body, conn_doc["responses"]["201"]["body"])
    assert "sharedKey" not in body["properties"]
    world.ops.finish_all()

    # the site behind localgw (11.12.13.14) with the example's key: tunnel comes up
    world.set_device("site1", public_ip="11.12.13.14", shared_key="Abc123", lng="localgw")
    get_doc = example("VirtualNetworkGatewayConnectionGet")
    status, body, _ = await call(http, "GET", conn_url, get_doc)
    assert status == 200
    assert_conforms(body, get_doc["responses"]["200"]["body"])  # includes "Connecting"

    set_doc = example("VirtualNetworkGatewayConnectionSetSharedKey")
    status, body, _ = await call(
        http, "PUT", conn_url + "/sharedkey", set_doc, set_doc["parameters"]["parameters"]
    )
    assert status == 200
    assert_conforms(body, set_doc["responses"]["200"]["body"])
    world.ops.finish_all()
    key_doc = example("VirtualNetworkGatewayConnectionGetSharedKey")
    status, body, _ = await call(http, "GET", conn_url + "/sharedkey", key_doc)
    assert status == 200
    assert_conforms(body, key_doc["responses"]["200"]["body"])

    reset_doc = example("VirtualNetworkGatewayConnectionReset")
    status, body, headers = await call(http, "POST", conn_url + "/resetconnection", reset_doc)
    assert status == 202 and body is None
    for header in ("Azure-AsyncOperation", "Location", "Retry-After"):
        assert header in headers
    world.ops.finish_all()

    ike_doc = example("VirtualNetworkGatewayConnectionGetIkeSas")
    status, _, headers = await call(http, "POST", conn_url + "/getikesas", ike_doc)
    assert status == 202
    assert "/operationResults/" in headers["Location"]
    async with http.get(headers["Location"], headers=AUTH) as resp:
        assert resp.status == 202  # still running until polled enough / settled
    world.ops.finish_all()
    async with http.get(headers["Location"], headers=AUTH) as resp:
        assert resp.status == 200
        payload = await resp.json()
    assert isinstance(payload, str)  # like the example: a JSON *string*
    assert isinstance(json.loads(payload), list)

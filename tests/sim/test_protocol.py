"""ARM protocol behaviour seen through the real SDK: auth, etags, faults, LROs, counters."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.network.aio import NetworkManagementClient

from bot.sim.client import SimCredential, sim_network_client
from bot.sim.world import World

from .conftest import AUTH, LOCATION, RG, SITE_IP, SUB, FakeClock, Sim, build_site, rid

LNG_BODY: dict[str, Any] = {
    "location": LOCATION,
    "properties": {
        "gatewayIpAddress": SITE_IP,
        "localNetworkAddressSpace": {"addressPrefixes": ["10.1.0.0/16"]},
    },
}
LNG_PATH = rid("localNetworkGateways", "lng1")


async def create_lng(client: NetworkManagementClient, name: str = "lng1") -> Any:
    return await (
        await client.local_network_gateways.begin_create_or_update(RG, name, LNG_BODY)
    ).result()


async def test_if_match_mismatch_is_precondition_failed(client: NetworkManagementClient) -> None:
    lng = await create_lng(client)
    with pytest.raises(HttpResponseError) as err:
        await client.local_network_gateways.begin_create_or_update(
            RG, "lng1", LNG_BODY, headers={"If-Match": 'W/"stale"'}
        )
    assert err.value.status_code == 412
    assert err.value.error is not None and err.value.error.code == "PreconditionFailed"

    with pytest.raises(HttpResponseError) as err:
        await client.local_network_gateways.begin_create_or_update(
            RG, "lng1", LNG_BODY, headers={"If-None-Match": "*"}
        )
    assert err.value.status_code == 412

    ok = await (
        await client.local_network_gateways.begin_create_or_update(
            RG, "lng1", LNG_BODY, headers={"If-Match": lng.etag}
        )
    ).result()
    assert ok.etag != lng.etag


async def test_missing_authorization_header_is_401(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.get(sim.url(LNG_PATH), params={"api-version": "2026-03-01"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
        body = await resp.json()
    assert body["error"]["code"] == "AuthenticationFailed"


class _NoAuth(SansIOHTTPPolicy[Any, Any]):
    """An authentication policy that sends no token at all."""


async def test_sdk_without_token_raises_client_authentication_error(sim: Sim) -> None:
    async with sim_network_client(
        sim.endpoint, SUB, polling_interval=0, authentication_policy=_NoAuth()
    ) as client:
        with pytest.raises(ClientAuthenticationError) as err:
            await client.local_network_gateways.get(RG, "lng1")
    assert err.value.status_code == 401
    assert err.value.error is not None and err.value.error.code == "AuthenticationFailed"


async def test_wrong_token_is_invalid_authentication_token(sim: Sim, world: World) -> None:
    world.configure(tokens=["the-right-one"])
    async with sim_network_client(
        sim.endpoint, SUB, polling_interval=0, credential=SimCredential("nope")
    ) as client:
        with pytest.raises(ClientAuthenticationError) as err:
            await client.local_network_gateways.get(RG, "lng1")
    assert err.value.error is not None
    assert err.value.error.code == "InvalidAuthenticationToken"
    async with sim_network_client(
        sim.endpoint, SUB, polling_interval=0, credential=SimCredential("the-right-one")
    ) as client:
        assert [x async for x in client.local_network_gateways.list(RG)] == []


async def test_api_version_is_checked(
    sim: Sim, http: aiohttp.ClientSession, client: NetworkManagementClient
) -> None:
    async with http.get(sim.url(LNG_PATH), headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "MissingApiVersionParameter"
    async with http.get(sim.url(LNG_PATH), params={"api-version": "banana"}, headers=AUTH) as resp:
        assert (await resp.json())["error"]["code"] == "InvalidApiVersionParameter"
    with pytest.raises(HttpResponseError) as err:
        await client.local_network_gateways.get(RG, "lng1", api_version="2019-02-02")
    assert err.value.status_code == 400
    assert err.value.error is not None and err.value.error.code == "NoRegisteredProviderFound"
    # an older spec version that is supported reaches the resource (404, not 400)
    async with http.get(sim.url(LNG_PATH), params={"api-version": "2019-02-01"}, headers=AUTH) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "ResourceNotFound"


async def test_unknown_resource_group_and_subscription(sim: Sim, world: World) -> None:
    async with sim_network_client(sim.endpoint, SUB, polling_interval=0) as client:
        with pytest.raises(HttpResponseError) as err:
            await client.local_network_gateways.get("rg-missing", "x")
    assert err.value.error is not None and err.value.error.code == "ResourceGroupNotFound"
    async with sim_network_client(sim.endpoint, "other-sub", polling_interval=0) as client:
        with pytest.raises(HttpResponseError) as err:
            await client.local_network_gateways.get(RG, "x")
    assert err.value.error is not None and err.value.error.code == "SubscriptionNotFound"


async def test_sdk_retry_policy_survives_throttling(
    client: NetworkManagementClient, world: World
) -> None:
    world.add_fault(
        kind="throttle", method="PUT", path="/localNetworkGateways/lng1$", count=2, retry_after=0.25
    )
    started = time.monotonic()
    lng = await create_lng(client)
    elapsed = time.monotonic() - started
    assert lng.provisioning_state == "Succeeded"
    counts = world.counters.get(LNG_PATH)
    assert counts.writes == 3  # two throttled attempts + the one that went through
    assert counts.faults == 2
    assert elapsed >= 0.5  # the SDK honoured Retry-After (0.25 s, twice)
    assert world.faults.rules() == []


async def test_injected_500_on_get_is_retried(
    client: NetworkManagementClient, world: World
) -> None:
    await create_lng(client)
    world.counters.reset()
    world.add_fault(kind="error", method="GET", path="lng1$", status=503, count=1)
    lng = await client.local_network_gateways.get(RG, "lng1")
    assert lng.name == "lng1"
    assert world.counters.reads(LNG_PATH) == 2


async def test_failed_lro_raises_and_resource_is_failed(
    client: NetworkManagementClient, world: World
) -> None:
    await build_site(client, world)
    world.add_fault(
        kind="fail_lro",
        method="PUT",
        path="localNetworkGateways/lng-home$",
        code="InternalServerError",
    )
    lng = await client.local_network_gateways.get(RG, "lng-home")
    poller = await client.local_network_gateways.begin_create_or_update(RG, "lng-home", lng)
    with pytest.raises(HttpResponseError) as err:
        await poller.result()
    assert "InternalServerError" in str(err.value)
    failed = await client.local_network_gateways.get(RG, "lng-home")
    assert failed.provisioning_state == "Failed"
    conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
    assert conn.connection_status == "NotConnected"
    # the documented recovery: re-PUT the same body
    fixed = await (
        await client.local_network_gateways.begin_create_or_update(RG, "lng-home", failed)
    ).result()
    assert fixed.provisioning_state == "Succeeded"
    conn = await client.virtual_network_gateway_connections.get(RG, "conn-home")
    assert conn.connection_status == "Connected"


async def test_slow_lro_costs_extra_polls(client: NetworkManagementClient, world: World) -> None:
    await create_lng(client, "fast")
    fast = world.counters.get(rid("localNetworkGateways", "fast"))
    assert (fast.writes, fast.polls, fast.reads) == (1, 2, 1)  # InProgress, Succeeded, final GET
    world.add_fault(kind="slow_lro", path="localNetworkGateways/slow$", extra_polls=3)
    await create_lng(client, "slow")
    slow = world.counters.get(rid("localNetworkGateways", "slow"))
    assert (slow.writes, slow.polls, slow.reads) == (1, 5, 1)


async def test_lost_operation_surfaces_but_resource_settles(
    client: NetworkManagementClient, world: World, clock: FakeClock
) -> None:
    world.add_fault(kind="lost_operation", path="localNetworkGateways/lng1$")
    poller = await client.local_network_gateways.begin_create_or_update(RG, "lng1", LNG_BODY)
    with pytest.raises(HttpResponseError) as err:
        await poller.result()
    assert err.value.status_code == 404
    assert (await client.local_network_gateways.get(RG, "lng1")).provisioning_state == "Updating"
    clock.advance(world.settings.lro_settle_seconds)
    assert (await client.local_network_gateways.get(RG, "lng1")).provisioning_state == "Succeeded"


async def test_concurrent_write_is_another_operation_in_progress(
    client: NetworkManagementClient,
) -> None:
    await client.local_network_gateways.begin_create_or_update(RG, "lng1", LNG_BODY, polling=False)
    with pytest.raises(ResourceExistsError) as err:  # the SDK maps every 409 to this
        await client.local_network_gateways.begin_create_or_update(RG, "lng1", LNG_BODY)
    assert err.value.error is not None
    assert err.value.error.code == "AnotherOperationInProgress"


async def test_counters_count_reads_and_writes_exactly(
    client: NetworkManagementClient, world: World, sim: Sim, http: aiohttp.ClientSession
) -> None:
    await create_lng(client)
    world.counters.reset()
    await client.local_network_gateways.get(RG, "lng1")
    await client.local_network_gateways.get(RG, "lng1")
    await client.local_network_gateways.update_tags(RG, "lng1", {"tags": {"k": "v"}})
    _ = [x async for x in client.local_network_gateways.list(RG)]
    assert world.counters.reads(LNG_PATH) == 2
    assert world.counters.writes(LNG_PATH) == 1
    assert world.counters.polls(LNG_PATH) == 0
    collection = LNG_PATH.rsplit("/", 1)[0]
    assert world.counters.reads(collection) == 1
    async with http.get(sim.url("/_sim/counters")) as resp:
        snapshot = await resp.json()
    assert snapshot[LNG_PATH.lower()] == {
        "reads": 2,
        "writes": 1,
        "polls": 0,
        "faults": 0,
        "redundant": 0,
    }
    async with http.delete(sim.url("/_sim/counters")) as resp:
        assert resp.status == 200
    assert world.counters.snapshot() == {}


async def test_paging_follows_next_link(client: NetworkManagementClient, world: World) -> None:
    for name in ("a", "b", "c"):
        await create_lng(client, name)
    world.configure(page_size=1)
    world.counters.reset()
    names = [x.name async for x in client.local_network_gateways.list(RG)]
    assert names == ["a", "b", "c"]
    assert world.counters.reads(LNG_PATH.rsplit("/", 1)[0]) == 3


async def test_arm_throttling_token_bucket(
    sim: Sim, world: World, http: aiohttp.ClientSession
) -> None:
    """Burst past ARM's 250-read bucket: the 251st read in the same instant is a 429."""
    params = {"api-version": "2026-03-01"}
    url = sim.url(LNG_PATH.rsplit("/", 1)[0])
    for _ in range(250):
        async with http.get(url, params=params, headers=AUTH) as resp:
            assert resp.status == 200
    async with http.get(url, params=params, headers=AUTH) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "SubscriptionRequestsThrottled"


def test_client_refuses_non_loopback_endpoints() -> None:
    with pytest.raises(ValueError):
        sim_network_client("http://example.invalid", SUB)

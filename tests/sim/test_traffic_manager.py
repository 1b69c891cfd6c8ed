"""Traffic Manager in the ARM simulator: the real aio TrafficManagerManagementClient over HTTP,
the spec examples, the health model, faults and counters, the control API and seeding."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient

from bot.sim.arm import start_arm_sim
from bot.sim.client import sim_traffic_manager_client
from bot.sim.trafficmanager import endpoint_id, profile_id, profiles_collection_id
from bot.sim.world import World

from .conftest import AUTH, RG, SUB, FakeClock, Sim, StartSim
from .test_spec_examples import assert_conforms, example

EXT = "ExternalEndpoints"
PROFILE = "tm-vpn"


def profile_body(**props: Any) -> dict[str, Any]:
    """A multisite entry point: priority routing, the sites as external endpoints."""
    body: dict[str, Any] = {
        "location": "global",
        "tags": {"owner": "netops"},
        "properties": {
            "profileStatus": "Enabled",
            "trafficRoutingMethod": "Priority",
            "dnsConfig": {"relativeName": "vpn-contoso", "ttl": 60},
            "monitorConfig": {"protocol": "HTTPS", "port": 443, "path": "/health"},
            "endpoints": [
                {
                    "name": "ep-home",
                    "type": f"Microsoft.Network/trafficManagerProfiles/{EXT}",
                    "properties": {
                        "target": "home.example.net",
                        "endpointStatus": "Enabled",
                        "priority": 1,
                        "customHeaders": [{"name": "host", "value": "vpn.example.net"}],
                    },
                },
                {
                    "name": "ep-branch",
                    "type": f"Microsoft.Network/trafficManagerProfiles/{EXT}",
                    "properties": {"target": "branch.example.net", "endpointStatus": "Enabled"},
                },
            ],
        },
    }
    body["properties"].update(props)
    return body


@pytest.fixture
async def tm(sim: Sim) -> AsyncIterator[TrafficManagerManagementClient]:
    async with sim_traffic_manager_client(sim.endpoint, SUB, retry_backoff_factor=0.01) as c:
        yield c


def status(world: World, name: str) -> str:
    return world.endpoint_monitor_status(f"{PROFILE}/{name}")


async def test_health_model_follows_the_control_and_the_statuses(
    world: World, clock: FakeClock, tm: TrafficManagerManagementClient
) -> None:
    world.configure(tm_probe_delay=10)
    created = await tm.profiles.create_or_update(RG, PROFILE, profile_body())
    assert [e.endpoint_monitor_status for e in created.endpoints or []] == [
        "CheckingEndpoint",
        "CheckingEndpoint",
    ]
    assert created.monitor_config is not None
    assert created.monitor_config.profile_monitor_status == "CheckingEndpoints"
    assert created.dns_config is not None and created.dns_config.fqdn == (
        "vpn-contoso.trafficmanager.net"
    )

    clock.advance(10)  # the first probe results are in
    ep = await tm.endpoints.get(RG, PROFILE, EXT, "ep-home")
    assert (ep.endpoint_status, ep.endpoint_monitor_status) == ("Enabled", "Online")

    world.set_endpoint_health(f"{PROFILE}/ep-branch", False)
    ep = await tm.endpoints.get(RG, PROFILE, EXT, "ep-branch")
    assert ep.endpoint_monitor_status == "Degraded"
    prof = await tm.profiles.get(RG, PROFILE)
    assert prof.monitor_config is not None
    assert prof.monitor_config.profile_monitor_status == "Degraded"

    ep = await tm.endpoints.update(
        RG, PROFILE, EXT, "ep-branch", {"properties": {"endpointStatus": "Disabled"}}
    )
    assert (ep.endpoint_status, ep.endpoint_monitor_status) == ("Disabled", "Disabled")
    assert status(world, "ep-home") == "Online"
    prof = await tm.profiles.get(RG, PROFILE)
    assert prof.monitor_config is not None
    assert prof.monitor_config.profile_monitor_status == "Online"

    # Enabled again: probed anew (CheckingEndpoint), then what the probes find (still unhealthy).
    await tm.endpoints.update(
        RG, PROFILE, EXT, "ep-branch", {"properties": {"endpointStatus": "Enabled"}}
    )
    assert status(world, "ep-branch") == "CheckingEndpoint"
    clock.advance(10)
    assert status(world, "ep-branch") == "Degraded"
    world.set_endpoint_health("ep-branch", True)
    assert status(world, "ep-branch") == "Online"

    # A disabled profile: its enabled endpoints are Inactive, the profile Disabled.
    await tm.profiles.update(RG, PROFILE, {"properties": {"profileStatus": "Disabled"}})
    assert (status(world, "ep-home"), status(world, "ep-branch")) == ("Inactive", "Inactive")
    prof = await tm.profiles.get(RG, PROFILE)
    assert prof.monitor_config is not None
    assert prof.monitor_config.profile_monitor_status == "Disabled"
    await tm.profiles.update(RG, PROFILE, {"properties": {"profileStatus": "Enabled"}})
    assert status(world, "ep-home") == "CheckingEndpoint"
    clock.advance(10)

    world.set_endpoint_health("ep-home", stopped=True)
    assert status(world, "ep-home") == "Stopped"
    await tm.endpoints.update(
        RG, PROFILE, EXT, "ep-branch", {"properties": {"endpointStatus": "Disabled"}}
    )
    prof = await tm.profiles.get(RG, PROFILE)
    assert prof.monitor_config is not None
    assert prof.monitor_config.profile_monitor_status == "Inactive"  # Stopped + Disabled


async def test_patch_merges_put_replaces_and_monitor_status_is_not_writable(
    world: World, tm: TrafficManagerManagementClient
) -> None:
    await tm.profiles.create_or_update(RG, PROFILE, profile_body())
    before = await tm.endpoints.get(RG, PROFILE, EXT, "ep-home")
    patched = await tm.endpoints.update(
        RG,
        PROFILE,
        EXT,
        "ep-home",
        {"properties": {"endpointStatus": "disabled", "endpointMonitorStatus": "Online"}},
    )
    assert patched.endpoint_status == "Disabled"  # canonical spelling
    assert patched.endpoint_monitor_status == "Disabled"  # computed, not what was sent
    kept = ("target", "priority", "weight", "custom_headers")
    assert [getattr(patched, k) for k in kept] == [getattr(before, k) for k in kept]
    assert before.priority == 1 and before.weight == 1
    branch = await tm.endpoints.get(RG, PROFILE, EXT, "ep-branch")
    assert branch.priority == 2, "a new endpoint gets the lowest free priority"

    replaced = await tm.endpoints.create_or_update(
        RG, PROFILE, EXT, "ep-home", {"properties": {"target": "home2.example.net"}}
    )
    assert replaced.custom_headers is None, "a PUT is the whole endpoint"
    assert (replaced.endpoint_status, replaced.target) == ("Enabled", "home2.example.net")
    raw = world.dump()["trafficManager"][0]
    assert "etag" not in raw and all("etag" not in e for e in raw["properties"]["endpoints"])


async def test_api_versions_of_both_sdk_generations_and_errors(
    sim: Sim, world: World, tm: TrafficManagerManagementClient, http: aiohttp.ClientSession
) -> None:
    await tm.profiles.create_or_update(RG, PROFILE, profile_body())
    # 1.0.0/1.1.0 send 2022-04-01 by default, 2.0.0 sends 2026-09-01; older ones 2018-0x.
    for version in ("2022-04-01", "2026-09-01", "2018-04-01", "2017-05-01"):
        async with sim_traffic_manager_client(sim.endpoint, SUB, api_version=version) as old:
            ep = await old.endpoints.get(RG, PROFILE, EXT, "ep-home")
            assert ep.target == "home.example.net"
    base = sim.url(f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network")
    url = f"{base}/trafficmanagerprofiles/{PROFILE}/externalEndpoints/ep-home"
    async with http.get(url, params={"api-version": "2024-05-01"}, headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "NoRegisteredProviderFound"
        assert "2026-09-01" in body["error"]["message"]
    async with http.get(url, params={"api-version": "2026-09-01"}, headers=AUTH) as resp:
        assert resp.status == 200
        assert "x-ms-ratelimit-remaining-subscription-reads" in resp.headers  # ARM's buckets
    heat = f"{base}/trafficmanagerprofiles/{PROFILE}/heatMaps/default"
    async with http.get(heat, params={"api-version": "2026-09-01"}, headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "InvalidResourceType"

    with pytest.raises(ResourceNotFoundError) as missing:
        await tm.endpoints.get(RG, PROFILE, EXT, "ep-nowhere")
    assert missing.value.error is not None and missing.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        await tm.profiles.get(RG, "tm-nowhere")
    for body, code in (
        ({**profile_body(), "location": "westeurope"}, "LocationNotAvailableForResourceType"),
        ({"properties": profile_body()["properties"]}, "LocationRequired"),
        (profile_body(trafficRoutingMethod="Nearest"), "BadRequest"),
    ):
        with pytest.raises(HttpResponseError) as bad:
            await tm.profiles.create_or_update(RG, "tm-bad", body)
        assert bad.value.status_code == 400 and bad.value.error is not None
        assert bad.value.error.code == code
    for props in ({"endpointStatus": "Paused", "target": "x.example"}, {"weight": 5}):
        with pytest.raises(HttpResponseError) as bad:
            await tm.endpoints.create_or_update(RG, PROFILE, EXT, "ep-new", {"properties": props})
        assert bad.value.status_code == 400
    assert [p.name for p in world.traffic_manager.list_profiles(SUB, RG)] == [PROFILE]

    async with http.delete(url, params={"api-version": "2026-09-01"}, headers=AUTH) as resp:
        assert resp.status == 200
    async with http.delete(url, params={"api-version": "2026-09-01"}, headers=AUTH) as resp:
        assert resp.status == 204
    assert await tm.profiles.delete(RG, PROFILE) is not None
    with pytest.raises(ResourceNotFoundError):
        await tm.profiles.get(RG, PROFILE)


async def test_counters_throttling_and_lost_answers_apply_to_traffic_manager(
    sim: Sim, world: World, tm: TrafficManagerManagementClient
) -> None:
    await tm.profiles.create_or_update(RG, PROFILE, profile_body())
    key = endpoint_id(SUB, RG, PROFILE, EXT, "ep-home")
    world.counters.reset()
    disable = {"properties": {"endpointStatus": "Disabled"}}

    world.add_fault(kind="throttle", method="PATCH", path="externalEndpoints", retry_after=0)
    world.add_fault(kind="error", method="GET", path="externalEndpoints", status=503)
    await tm.endpoints.get(RG, PROFILE, EXT, "ep-home")  # 503, retried by azure-core
    await tm.endpoints.update(RG, PROFILE, EXT, "ep-home", disable)  # 429, retried
    counter = world.counters.get(key)
    assert (counter.reads, counter.writes, counter.faults) == (2, 2, 2)
    assert status(world, "ep-home") == "Disabled"

    # The answer of a write is lost (504 GatewayTimeout) while the write stands.
    world.counters.reset()
    world.add_fault(kind="lost_operation", method="PATCH", path="ep-branch")
    async with sim_traffic_manager_client(sim.endpoint, SUB, retry_total=0) as once:
        with pytest.raises(HttpResponseError) as lost:
            await once.endpoints.update(RG, PROFILE, EXT, "ep-branch", disable)
    assert lost.value.status_code == 504
    assert lost.value.error is not None and lost.value.error.code == "GatewayTimeout"
    assert status(world, "ep-branch") == "Disabled", "the change went through"
    # Sending it again changes nothing: counted as redundant.
    again = await tm.endpoints.update(RG, PROFILE, EXT, "ep-branch", disable)
    assert again.endpoint_status == "Disabled"
    branch = world.counters.get(endpoint_id(SUB, RG, PROFILE, EXT, "ep-branch"))
    assert (branch.writes, branch.faults, branch.redundant) == (2, 1, 1)

    # LRO-shaping faults have no operation to shape here: they stay armed.
    rule = world.add_fault(kind="fail_lro", method="PATCH", path="ep-home")
    await tm.endpoints.update(RG, PROFILE, EXT, "ep-home", {"properties": {"weight": 3}})
    assert [r.id for r in world.faults.rules()] == [rule.id]

    await tm.profiles.get(RG, PROFILE)
    _ = [p async for p in tm.profiles.list_by_resource_group(RG)]
    _ = [p async for p in tm.profiles.list_by_subscription()]
    assert world.counters.reads(profile_id(SUB, RG, PROFILE)) == 1
    assert world.counters.reads(profiles_collection_id(SUB, RG)) == 1
    assert world.counters.reads(profiles_collection_id(SUB)) == 1


async def test_spec_examples_conform(
    start_sim: StartSim, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    world = World.empty(clock=clock, retry_after=0, tm_probe_delay=30)
    put_doc, patch_doc = (
        example("Profile-PUT-WithEndpoints"),
        example("Profile-PATCH-MonitorConfig"),
    )
    ep_doc = example("Endpoint-PUT-External-WithLocation")
    for doc in (put_doc, patch_doc, ep_doc):
        world.add_resource_group(
            doc["parameters"]["subscriptionId"], doc["parameters"]["resourceGroupName"]
        )
    sim = await start_sim(world)

    def url(doc: dict[str, Any], *endpoint: str) -> str:
        p = doc["parameters"]
        path = (
            f"/subscriptions/{p['subscriptionId']}/resourceGroups/{p['resourceGroupName']}"
            f"/providers/Microsoft.Network/trafficmanagerprofiles/{p['profileName']}"
        )
        return sim.url(path + "".join(f"/{e}" for e in endpoint))

    async def call(method: str, target: str, doc: dict[str, Any], body: Any = None) -> Any:
        params = {"api-version": doc["parameters"]["api-version"]}
        async with http.request(method, target, params=params, json=body, headers=AUTH) as r:
            return r.status, json.loads(await r.text())

    def ours(expected: dict[str, Any]) -> dict[str, Any]:
        """The example with the public cloud's DNS suffix instead of Microsoft's test one."""
        fixed = copy.deepcopy(expected)
        dns = fixed["properties"]["dnsConfig"]
        dns["fqdn"] = f"{dns['relativeName']}.trafficmanager.net"
        return fixed

    body = put_doc["parameters"]["parameters"]
    code, got = await call("PUT", url(put_doc), put_doc, body)  # api-version 2018-04-01
    assert code == 201
    assert_conforms(got, ours(put_doc["responses"]["201"]["body"]))
    code, got = await call("PUT", url(put_doc), put_doc, body)
    assert code == 200
    assert_conforms(got, ours(put_doc["responses"]["200"]["body"]))

    # Profile-PATCH-MonitorConfig, on the same profile in the example's own subscription.
    await call("PUT", url(patch_doc), patch_doc, body)
    code, got = await call(
        "PATCH", url(patch_doc), patch_doc, patch_doc["parameters"]["parameters"]
    )
    assert code == 200
    assert_conforms(got, ours(patch_doc["responses"]["200"]["body"]))

    # Endpoint PUT (201, then 200), GET and PATCH of the target (2026-09-01).
    profile = {**body, "properties": {**body["properties"], "endpoints": []}}
    await call("PUT", url(ep_doc), ep_doc, profile)
    ep_url = url(ep_doc, "ExternalEndpoints", "azsmnet7187")
    for expected in (201, 200):
        code, got = await call("PUT", ep_url, ep_doc, ep_doc["parameters"]["parameters"])
        assert code == expected
        assert_conforms(got, ep_doc["responses"][str(expected)]["body"])
    get_doc = example("Endpoint-GET-External-WithLocation")
    code, got = await call("GET", ep_url, get_doc)
    assert code == 200
    assert_conforms(got, get_doc["responses"]["200"]["body"])
    clock.advance(30)
    code, got = await call("GET", ep_url, get_doc)
    assert got["properties"]["endpointMonitorStatus"] == "Online"
    target_doc = example("Endpoint-PATCH-External-Target")
    code, got = await call("PATCH", ep_url, target_doc, target_doc["parameters"]["parameters"])
    assert code == 200
    assert_conforms(got, target_doc["responses"]["200"]["body"])  # re-targeted: probed anew


SEED_TOML = """
subscription = "33333333-0000-0000-0000-000000000000"

[[resource_groups]]
name = "rg-vpn"

[[traffic_manager_profiles]]
resource_group = "rg-vpn"
name = "tm-aovpn"
routing_method = "Priority"
relative_name = "aovpn-contoso"

[[traffic_manager_profiles.endpoints]]
name = "ep-home"
target = "home.example.net"
priority = 1

[[traffic_manager_profiles.endpoints]]
name = "ep-branch"
target = "branch.example.net"
priority = 2
healthy = false
"""


async def test_seeded_multisite_profile_and_the_control_api(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    seed = tmp_path / "world.toml"
    seed.write_text(SEED_TOML)
    world = World.from_file(seed)
    runner, port = await start_arm_sim(world)
    root = f"http://127.0.0.1:{port}"
    try:
        async with http.get(f"{root}/_sim/traffic-manager") as resp:
            (prof,) = await resp.json()
        assert prof["profileMonitorStatus"] == "Degraded"
        views = {e["id"].rsplit("/", 1)[-1]: e for e in prof["endpoints"]}
        assert views["ep-home"]["endpointMonitorStatus"] == "Online"
        assert views["ep-branch"] == {
            "id": views["ep-branch"]["id"],
            "endpointStatus": "Enabled",
            "endpointMonitorStatus": "Degraded",
            "healthy": False,
            "stopped": False,
        }
        async with http.post(
            f"{root}/_sim/traffic-manager/health",
            json={"endpoint": "tm-aovpn/ep-branch", "healthy": True},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["endpointMonitorStatus"] == "Online"
        for body, code in (
            ({"endpoint": "ep-nowhere", "healthy": True}, 404),
            ({"endpoint": "ep-home", "healthy": "yes"}, 400),
            ({"endpoint": "ep-home", "colour": "red"}, 400),
        ):
            async with http.post(f"{root}/_sim/traffic-manager/health", json=body) as resp:
                assert resp.status == code, body
        async with http.get(f"{root}/_sim/state") as resp:
            state = await resp.json()
        (dumped,) = state["trafficManager"]
        assert dumped["properties"]["dnsConfig"]["fqdn"] == "aovpn-contoso.trafficmanager.net"
        assert dumped["properties"]["monitorConfig"]["profileMonitorStatus"] == "Online"
        # Deleting the group takes the profile with it.
        sub = "33333333-0000-0000-0000-000000000000"
        world.ops.finish_all()
        world.delete_resource_group(sub, "rg-vpn")
        world.ops.finish_all()
        assert world.traffic_manager.profiles == {}
    finally:
        await runner.cleanup()


def test_seed_profile_in_a_missing_group_is_rejected() -> None:
    with pytest.raises(ValueError, match="ResourceGroupNotFound"):
        World.from_seed(
            {
                "resource_groups": [{"name": "rg-vpn"}],
                "traffic_manager_profiles": [{"resource_group": "rg-other", "name": "tm"}],
            }
        )

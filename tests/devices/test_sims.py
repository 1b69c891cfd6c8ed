"""The combined device simulator entry and the shared /_sim/ plumbing."""

from __future__ import annotations

import aiohttp
import pytest

from bot.sim.devices import start_devices_sim
from playbooks.devices.barracuda import Barracuda
from playbooks.devices.kemp import Kemp
from playbooks.devices.sonicwall import SonicWall
from tests.devices.conftest import FakeClock, Running
from tests.helpers import eventually


async def test_start_devices_sim_serves_all_three_on_loopback() -> None:
    async with await start_devices_sim() as sim:
        assert set(sim.urls) == {"sonicos", "barracuda", "kemp"}
        async with aiohttp.ClientSession() as http:
            for kind, url in sim.urls.items():
                assert url.startswith("http://127.0.0.1:")
                async with http.get(url + "/_sim/state") as response:
                    assert response.status == 200
                    assert (await response.json())["kind"] == kind
        # The default worlds answer the drivers with the default credentials.
        async with SonicWall(sim.urls["sonicos"], "admin", "password").session() as s:
            assert (await s.policy("Azure")).enable
        async with Barracuda(sim.urls["barracuda"], username="admin", password="password") as fw:
            assert (await fw.service("VPN")).running
        async with Kemp(sim.urls["kemp"], username="bal", password="password") as lm:
            assert len((await lm.virtual_service("203.0.113.50", 4500, "udp")).real_servers) == 2
    assert sim.runners == []


async def test_start_devices_sim_refuses_other_addresses() -> None:
    for host in ("0.0.0.0", "10.0.0.1", "localhost"):
        with pytest.raises(ValueError, match="only bind to"):
            await start_devices_sim(host)


async def test_fault_control_routes(sonicos: Running) -> None:
    rule = await sonicos.sim("POST", "/_sim/faults", {"kind": "error", "status": 502, "count": 2})
    assert rule["remaining"] == 2
    assert [r["id"] for r in await sonicos.sim("GET", "/_sim/faults")] == [rule["id"]]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(sonicos.url + "/api/sonicos/auth") as response:
                assert response.status == 502
                assert (await response.json())["status"]["success"] is False
        async with http.post(sonicos.url + "/api/sonicos/auth") as response:
            assert response.status == 401  # the fault is spent; now a real challenge
            challenges = response.headers.getall("WWW-Authenticate")
            assert challenges[0].startswith("Digest ") and challenges[1].startswith("Basic ")
        async with http.post(sonicos.url + "/_sim/faults", json={"kind": "bogus"}) as response:
            assert response.status == 400
    assert await sonicos.sim("GET", "/_sim/faults") == []
    await sonicos.sim("POST", "/_sim/faults", {"kind": "timeout"})
    assert await sonicos.sim("DELETE", "/_sim/faults") == []
    assert (await sonicos.sim("GET", "/_sim/counters"))["faults_fired"] == 2
    await sonicos.sim("DELETE", "/_sim/counters")
    assert await sonicos.sim("GET", "/_sim/counters") == {}


async def test_sonicos_put_replaces_patch_merges(sonicos: Running) -> None:
    from pydantic import SecretStr

    from playbooks.devices.common import basic_auth
    from tests.devices.conftest import SW_PASSWORD, SW_USER

    path = sonicos.url + "/api/sonicos/vpn/policies/ipv4/site-to-site/name/Azure"

    def envelope(policy: dict[str, object]) -> dict[str, object]:
        return {"vpn": {"policy": [{"ipv4": {"site_to_site": policy}}]}}

    async with aiohttp.ClientSession() as http:
        async with http.get(path) as response:
            assert response.status == 401  # no session yet
        login = basic_auth(SW_USER, SecretStr(SW_PASSWORD))
        async with http.post(sonicos.url + "/api/sonicos/auth", headers=login) as response:
            assert response.status == 200
        async with http.patch(path, json=envelope({"keep_alive": True})) as response:
            assert response.status == 200
        pending = sonicos.device.pending["Azure"]
        assert pending["keep_alive"] is True and pending["gateway"]["primary"] == "203.0.113.10"
        async with http.put(path, json=envelope({"name": "Azure", "enable": True})) as response:
            assert response.status == 200
        assert sonicos.device.pending["Azure"] == {"name": "Azure", "enable": True}
        bad_bodies: list[dict[str, object]] = [
            envelope({"bogus": 1}),
            {"policy": []},
            envelope({"enable": "yes"}),
        ]
        for bad in bad_bodies:
            async with http.patch(path, json=bad) as response:
                assert response.status == 400
                assert (await response.json())["status"]["info"][0]["code"] == "E_INVALID"
        async with http.delete(sonicos.url + "/api/sonicos/config/pending") as response:
            assert response.status == 200
        async with http.delete(sonicos.url + "/api/sonicos/auth") as response:
            assert response.status == 200
    assert sonicos.device.committed["Azure"]["keep_alive"] is False
    assert sonicos.device.counters["changes"] == 2


async def test_kemp_v1_query_string_form(kemp: Running) -> None:
    """The documented GET form (parameters in the query string) works as well as POST."""
    from tests.devices.conftest import KEMP_KEY

    query = {"vs": "203.0.113.50", "port": "500", "prot": "udp", "apikey": KEMP_KEY}
    async with (
        aiohttp.ClientSession() as http,
        http.get(kemp.url + "/access/showvs", params=query) as response,
    ):
        text = await response.text()
    assert response.status == 200
    assert text.startswith('<?xml version="1.0" encoding="ISO-8859-1"?>')
    assert '<Response stat="200" code="ok"><Success><Data>' in text
    assert "<Rs><Status>Up</Status>" in text
    async with (
        aiohttp.ClientSession() as http,
        http.get(kemp.url + "/access/showvs", params={"vs": "1"}) as response,
    ):
        assert response.status == 401


# --- the SonicOS appliance wired into the ARM world ------------------------------------------


async def test_the_gateway_the_sonicwall_uses_is_the_tunnel_connected_in_azure(
    clock: FakeClock,
) -> None:
    from bot.sim.devices.link import SonicOSLink, WorldPort
    from tests.failback_world import legs, sonicwall, world

    w, primary, secondary = world()
    device = sonicwall(primary, secondary, clock=clock)
    link = SonicOSLink(device, WorldPort(w))
    await link.sync()
    assert legs(w) == ["Connected", "NotConnected"]  # on the primary gateway only
    assert w.connection_status("conn-home") == "Connected"

    device.set_reachable(primary, False)  # DPD: the appliance fails over by itself
    await link.sync()
    assert device.tunnels["Azure"].active == "secondary"
    assert legs(w) == ["NotConnected", "Connected"]

    device.set_reachable(primary, True)  # without preempt it stays on the secondary
    clock.advance(3600)
    await link.sync()
    assert legs(w) == ["NotConnected", "Connected"]

    # With "Preempt Secondary Gateway": back to the primary once the interval has passed since
    # the failover and the primary answers.
    device.committed["Azure"]["preempt_secondary_gateway"] = {"interval": 60}
    await link.sync()
    assert legs(w) == ["Connected", "NotConnected"]
    device.set_reachable(primary, False)
    await link.sync()
    device.set_reachable(primary, True)
    clock.advance(59)
    await link.sync()
    assert legs(w) == ["NotConnected", "Connected"]  # not before the preempt interval
    clock.advance(1)
    await link.sync()
    assert legs(w) == ["Connected", "NotConnected"]
    events = [e["event"] for e in device.events]
    assert events == ["tunnel_up", "failover", "failback", "failover", "failback"]


async def test_a_reinitiate_takes_the_azure_tunnel_down_and_up_again(clock: FakeClock) -> None:
    from pydantic import SecretStr

    from bot.sim.devices.link import SonicOSLink, WorldPort
    from bot.sim.devices.sonicos import start_sonicos_sim
    from tests.failback_world import legs, sonicwall, world

    w, primary, secondary = world()
    device = sonicwall(primary, secondary, clock=clock, password="Sw-Pa55-9f3a6c!")
    runner, port = await start_sonicos_sim(device)
    try:
        async with SonicOSLink(device, WorldPort(w), tick=0.05):
            driver = SonicWall(f"http://127.0.0.1:{port}", "admin", SecretStr("Sw-Pa55-9f3a6c!"))
            async with driver.session() as s:
                await s.set_policy("Azure", {"enable": False})
                await s.commit()
            assert legs(w) == ["NotConnected", "NotConnected"]  # the link syncs at the move
            assert w.connection_status("conn-home") == "NotConnected"
            async with driver.session() as s:
                await s.set_policy("Azure", {"enable": True})
                await s.commit()

            async def up() -> bool:
                return legs(w) == ["Connected", "NotConnected"]

            await eventually(up)
    finally:
        await runner.cleanup()
    assert [e["event"] for e in device.events] == ["tunnel_up", "tunnel_down", "tunnel_up"]


async def test_a_half_up_primary_fails_over_by_dpd_and_preempt_loops(clock: FakeClock) -> None:
    """IKE answers, nothing passes: dead peer detection fails over; with preempt the appliance
    tries the primary again after the interval and fails over again (the vendor's loop)."""
    from bot.sim.devices.link import SonicOSLink, WorldPort
    from tests.failback_world import legs, sonicwall, world

    w, primary, secondary = world()
    device = sonicwall(primary, secondary, clock=clock)
    device.committed["Azure"]["preempt_secondary_gateway"] = {"interval": 30}
    link = SonicOSLink(device, WorldPort(w))
    await link.sync()
    w.drop_tunnel("conn-home", ["reset_gateway"], instance=0)
    await link.sync()
    assert device.tunnels["Azure"].active == "secondary"
    assert legs(w) == ["NotConnected", "Connected"]
    clock.advance(30)
    await link.sync()  # preempt back to the half-up primary, DPD gives up on it again
    assert device.tunnels["Azure"].active == "secondary"
    assert [e["event"] for e in device.events] == ["tunnel_up", "failover", "failback", "failover"]
    assert device.counters["dpd_timeouts"] == 2
    w.drop_tunnel("conn-home", ["reset_gateway"], instance=1)  # both half-up: nowhere to go
    await link.sync()
    assert device.tunnels["Azure"].active == "secondary"


async def test_the_link_drives_an_arm_simulator_over_http(clock: FakeClock) -> None:
    from bot.sim.arm import start_arm_sim
    from bot.sim.devices.link import HttpWorldPort, SonicOSLink
    from tests.failback_world import legs, sonicwall, world

    w, primary, secondary = world()
    device = sonicwall(primary, secondary, clock=clock)
    runner, port = await start_arm_sim(w)
    try:
        async with (
            aiohttp.ClientSession() as http,
            SonicOSLink(device, HttpWorldPort(f"http://127.0.0.1:{port}", http), tick=0.05),
        ):
            assert legs(w) == ["Connected", "NotConnected"]
            device.set_reachable(primary, False)

            async def moved() -> bool:
                return legs(w) == ["NotConnected", "Connected"]

            await eventually(moved)
        with pytest.raises(ValueError, match="loopback"):
            HttpWorldPort("http://arm.example.net:8443", http)
    finally:
        await runner.cleanup()


async def test_sim_devices_with_arm_drives_that_simulator_s_tunnels() -> None:
    """``tunnelwarden sim devices --arm URL``: an operator points the appliance's policy at
    the Azure gateway's instances; from then on its gateway choice is the Connected tunnel."""
    import asyncio
    import contextlib

    from bot.sim.arm import start_arm_sim
    from bot.sim.devices import main as devices_main
    from tests.failback_world import legs, world
    from tests.helpers import free_port

    w, primary, secondary = world()
    runner, port = await start_arm_sim(w)
    sonic_port = free_port()
    task = asyncio.create_task(
        devices_main(sonicos_port=sonic_port, arm_url=f"http://127.0.0.1:{port}")
    )
    url = f"http://127.0.0.1:{sonic_port}"
    try:

        async def serving() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(url + "/_sim/state") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(serving)
        async with SonicWall(url, "admin", "password").session() as s:
            await s.set_policy("Azure", {"gateway": {"primary": primary, "secondary": secondary}})
            await s.commit()

        async def on(expected: list[str]) -> bool:
            return legs(w) == expected

        await eventually(lambda: on(["Connected", "NotConnected"]))
        async with (
            aiohttp.ClientSession() as http,
            http.put(f"{url}/_sim/gateways/{primary}", json={"reachable": False}) as r,
        ):
            assert r.status == 200
        await eventually(lambda: on(["NotConnected", "Connected"]))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()

"""The combined device simulator entry and the shared /_sim/ plumbing."""

from __future__ import annotations

import aiohttp
import pytest

from bot.sim.devices import start_devices_sim
from playbooks.devices.barracuda import Barracuda
from playbooks.devices.kemp import Kemp
from playbooks.devices.sonicwall import SonicWall
from tests.devices.conftest import Running


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

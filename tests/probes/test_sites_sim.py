"""The site responders simulator: loopback only, control API, ports that stay put, entry point."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.probes import probe
from bot.sim.sites import DEFAULT_CONFIG, SitesSim, main, start_sites_sim
from tests.helpers import eventually, free_port
from tests.probes.support import SITE, addr, spec


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "localhost", "127.0.0.2"])
async def test_refuses_to_bind_off_loopback(host: str) -> None:
    with pytest.raises(ValueError, match=r"only bind to 127\.0\.0\.1 or ::1"):
        await start_sites_sim(host=host)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback in this environment")
async def test_default_config_runs_on_ipv6_loopback_too() -> None:
    async with await start_sites_sim(host="::1") as sim:
        assert set(sim.ports["home"]) == {r.name for r in DEFAULT_CONFIG.sites[0].responders}
        result = await probe(spec("ikev2", target=f"[::1]:{sim.port('home', 'vpn')}"))
        assert result.ok, result
        assert sim.control_url.startswith("http://[::1]:")


async def _call(sim: SitesSim, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.control_url}{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def test_control_api_lists_and_switches_responders(sim: SitesSim) -> None:
    status, listing = await _call(sim, "GET", "/responders")
    assert status == 200
    by_name = {r["name"]: r for r in listing}
    assert by_name["portal"]["status"] == 401 and by_name["portal"]["port"] == sim.port(
        SITE, "portal"
    )
    assert by_name["vpn"]["mode"] == "accept" and by_name["vpn"]["serving"] is True
    assert by_name["tls"]["ca_file"].endswith("-ca.pem")

    status, vpn = await _call(sim, "PATCH", f"/responders/{SITE}/vpn", {"mode": "closed"})
    assert (status, vpn["mode"], vpn["open"]) == (200, "closed", False)
    assert (await probe(spec("ikev2", target=addr(sim, "vpn")))).reason == "ike_down"

    status, kms = await _call(sim, "PATCH", f"/responders/{SITE}/kms", {"up": False})
    assert (status, kms["up"], kms["serving"]) == (200, False, False)
    assert (await probe(spec("tcp", target=addr(sim, "kms")))).reason == "refused"

    status, one = await _call(sim, "GET", f"/responders/{SITE}/kms")
    assert (status, one["up"]) == (200, False)


async def test_control_api_tunnel_switch(sim: SitesSim) -> None:
    status, site = await _call(sim, "PUT", f"/sites/{SITE}/tunnel", {"up": False})
    assert (status, site["tunnel_up"], site["tunnel_is_up"]) == (200, False, False)
    assert (await probe(spec("tcp", target=addr(sim, "kms-int")))).reason == "refused"
    assert (await probe(spec("tcp", target=addr(sim, "kms")))).ok
    status, sites = await _call(sim, "GET", "/sites")
    assert sites == [{"name": SITE, "tunnel_up": False, "tied": False, "tunnel_is_up": False}]


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "fragment"),
    [
        ("PATCH", "/responders/home/nope", {"up": False}, 404, "no responder home/nope"),
        ("PATCH", "/responders/home/vpn", {"mode": "sideways"}, 400, "mode"),
        ("PATCH", "/responders/home/vpn", {"colour": "red"}, 400, "colour"),
        ("PATCH", "/responders/home/vpn", {"port": 1}, 400, "cannot change port"),
        ("PATCH", "/responders/home/tls", {"tls": False}, 400, "cannot change tls"),
        ("PATCH", "/responders/home/vpn", [1], 400, "expected a JSON object"),
        ("PUT", "/sites/home/tunnel", {"up": "no"}, 400, "expected"),
        ("PUT", "/sites/elsewhere/tunnel", {"up": False}, 404, "no site 'elsewhere'"),
    ],
)
async def test_control_api_errors(
    sim: SitesSim, method: str, path: str, body: Any, code: int, fragment: str
) -> None:
    status, answer = await _call(sim, method, path, body)
    assert status == code
    assert fragment in answer["error"]


async def test_ports_stay_the_same_across_down_and_up(sim: SitesSim) -> None:
    before = sim.ports
    for name in ("kms", "portal", "vpn", "dns"):
        changes: dict[str, Any] = {"mode": "closed"} if name == "vpn" else {"up": False}
        await sim.set_state(SITE, name, **changes)
        await sim.set_state(SITE, name, **({"mode": "accept"} if name == "vpn" else {"up": True}))
    assert sim.ports == before
    assert (await probe(spec("http", url=f"http://{addr(sim, 'portal')}/", expect="401"))).ok


async def test_fixed_ports_and_a_responder_that_starts_down() -> None:
    port = free_port()
    config = {
        "sites": [
            {
                "name": "branch",
                "tunnel_up": False,
                "responders": [
                    {"name": "kms", "kind": "tcp", "port": port, "behind_tunnel": True},
                ],
            }
        ]
    }
    async with await start_sites_sim(config) as sim:
        assert sim.port("branch", "kms") == port
        assert (await probe(spec("tcp", target=f"127.0.0.1:{port}"))).reason == "refused"
        await sim.set_tunnel("branch", True)
        assert (await probe(spec("tcp", target=f"127.0.0.1:{port}"))).ok


async def test_a_failing_tunnel_hook_means_down(
    sim: SitesSim, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("world gone")

    sim.tie(SITE, broken)
    for _ in range(3):
        await sim.sync()
    assert (await probe(spec("tcp", target=addr(sim, "kms-int")))).reason == "refused"
    assert len([r for r in caplog.records if "tunnel hook" in r.getMessage()]) == 1
    sim.tie(SITE, None)
    await sim.sync()
    assert (await probe(spec("tcp", target=addr(sim, "kms-int")))).ok


async def test_a_port_taken_meanwhile_is_reported_and_retried(sim: SitesSim) -> None:
    await sim.set_state(SITE, "kms", up=False)
    port = sim.port(SITE, "kms")
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        status, answer = await _call(sim, "PATCH", f"/responders/{SITE}/kms", {"up": True})
        assert status == 409 and "cannot reopen" in answer["error"]

        async def reported() -> bool:
            return sim.responder(SITE, "kms").describe()["error"] is not None

        await eventually(reported, within=5)
    finally:
        squatter.close()

    async def back() -> bool:
        return (await probe(spec("tcp", target=f"127.0.0.1:{port}"))).ok

    await eventually(back, within=5)
    assert sim.responder(SITE, "kms").error is None


def test_bad_config_is_rejected() -> None:
    from pydantic import ValidationError

    from bot.sim.sites import SitesConfig

    with pytest.raises(ValidationError, match="responder names repeat"):
        SitesConfig.model_validate(
            {"sites": [{"name": "a", "responders": [{"name": "x", "kind": "tcp"}] * 2}]}
        )
    with pytest.raises(ValidationError, match="record"):
        SitesConfig.model_validate(
            {
                "sites": [
                    {
                        "name": "a",
                        "responders": [
                            {"name": "d", "kind": "dns", "records": [{"name": "a", "value": "x"}]}
                        ],
                    }
                ]
            }
        )


async def test_main_serves_a_toml_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sites.toml"
    config.write_text(
        '[[sites]]\nname = "lab"\n\n'
        '[[sites.responders]]\nname = "ike"\nkind = "ikev2"\nmode = "no_proposal"\n'
    )
    control = free_port()
    task = asyncio.create_task(main("127.0.0.1", control, config))
    output: list[str] = []

    async def started() -> bool:
        output.append(capsys.readouterr().out)
        return "control API" in "".join(output)

    try:
        await eventually(started, within=10)
        text = "".join(output)
        assert "lab/ike: ikev2 on 127.0.0.1:" in text and "mode no_proposal" in text
        assert f"http://127.0.0.1:{control}/_sim/responders" in text
        port = int(text.split("lab/ike: ikev2 on 127.0.0.1:")[1].split()[0])
        result = await probe(spec("ikev2", target=f"127.0.0.1:{port}"))
        assert result.ok and "NO_PROPOSAL_CHOSEN" in result.detail
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_responders_follow_a_connection_of_the_arm_simulator() -> None:
    """``tunnelwarden sim sites --arm URL --tie home=conn-home``: behind-the-tunnel responders
    are down while the ARM simulator's connection is not Connected."""
    import asyncio

    from bot.probes import parse_probe, probe
    from bot.sim.arm import start_arm_sim
    from bot.sim.sites import follow_arm, start_sites_sim
    from tests.azure_world import world

    w = world()
    arm, arm_port = await start_arm_sim(w)
    kms = {"name": "kms", "kind": "tcp", "behind_tunnel": True}
    sim = await start_sites_sim({"sites": [{"name": "home", "responders": [kms]}]})
    follower = asyncio.create_task(
        follow_arm(sim, f"http://127.0.0.1:{arm_port}", {"home": "conn-home"}, every=0.05)
    )
    target = f"127.0.0.1:{sim.port('home', 'kms')}"
    spec = parse_probe({"name": "kms", "kind": "tcp", "target": target, "timeout": 0.5})
    try:
        await asyncio.sleep(0.3)
        assert (await probe(spec)).ok, "tunnel Connected: the target answers"
        w.drop_tunnel("conn-home")
        await asyncio.sleep(0.5)
        assert not (await probe(spec)).ok, "tunnel down: the target behind it is gone"
    finally:
        follower.cancel()
        await sim.close()
        await arm.cleanup()

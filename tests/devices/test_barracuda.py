"""The Barracuda driver against the CloudGen Firewall simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import traceback

import pytest

from playbooks.devices.barracuda import Barracuda
from playbooks.devices.common import (
    AccessDenied,
    AuthenticationFailed,
    DeviceConfigError,
    DeviceError,
    DeviceUnavailable,
    NotFound,
)
from tests.devices.conftest import (
    CUDA_PASSWORD,
    CUDA_RO_TOKEN,
    CUDA_TOKEN,
    CUDA_USER,
    FakeClock,
    Running,
    assert_no_secrets,
)


async def test_box_and_service_state(barracuda: Running) -> None:
    async with Barracuda(barracuda.url, token=CUDA_TOKEN, name="cgf1") as fw:
        box = await fw.box_state()
        services = await fw.services()
        vpn = await fw.service("VPN")
    assert box.server_state == "OK"
    assert {s.name for s in services} >= {"VPN", "NGFW", "boxfw"}
    assert vpn.running and vpn.module == "vpn"


async def test_basic_auth(barracuda: Running) -> None:
    async with Barracuda(barracuda.url, username=CUDA_USER, password=CUDA_PASSWORD) as fw:
        assert (await fw.service("VPN")).running


async def test_restart_vpn_drops_every_tunnel(barracuda: Running) -> None:
    before = await barracuda.sim("GET", "/_sim/tunnels")
    assert {t["state"] for t in before.values()} == {"active"}
    async with Barracuda(barracuda.url, token=CUDA_TOKEN) as fw:
        await fw.restart_service("VPN")
        assert (await fw.service("VPN")).running
    counters = barracuda.device.counters
    assert counters["restarts:VPN"] == 1
    assert counters["tunnel_dropped"] == len(before) == 2  # all of them, not one
    after = await barracuda.sim("GET", "/_sim/tunnels")
    assert {t["state"] for t in after.values()} == {"active"}


async def test_restart_takes_time(barracuda: Running, clock: FakeClock) -> None:
    await barracuda.sim("PATCH", "/_sim/config", {"restart_duration": 30})
    await barracuda.sim("PUT", "/_sim/tunnels/SONICWALL-BRANCH", {"peer_reachable": False})
    async with Barracuda(barracuda.url, token=CUDA_TOKEN) as fw:
        await fw.restart_service("VPN")
        vpn = await fw.service("VPN")
        assert vpn.state == "restarting" and not vpn.running
        tunnels = await barracuda.sim("GET", "/_sim/tunnels")
        assert tunnels["AZURE-S2S"]["state"] == "down"
        clock.advance(30)
        assert (await fw.service("VPN")).running
    tunnels = await barracuda.sim("GET", "/_sim/tunnels")
    assert tunnels["AZURE-S2S"]["state"] == "active"
    assert tunnels["SONICWALL-BRANCH"]["state"] == "down"  # its peer is still unreachable
    assert barracuda.device.counters["restarts:VPN"] == 1


async def test_auth_failures_are_permanent(barracuda: Running) -> None:
    for fw in (
        Barracuda(barracuda.url, token="not-the-token"),
        Barracuda(barracuda.url, username=CUDA_USER, password="wrong-" + CUDA_PASSWORD),
    ):
        async with fw:
            with pytest.raises(AuthenticationFailed) as caught:
                await fw.box_state()
        assert caught.value.transient is False
        assert caught.value.status == 401
    assert barracuda.device.counters["auth_failures"] == 2
    async with Barracuda(barracuda.url, token=CUDA_RO_TOKEN) as fw:
        await fw.box_state()  # reading is fine
        with pytest.raises(AccessDenied) as denied:
            await fw.restart_service("VPN")
    assert denied.value.status == 403
    assert barracuda.device.counters.get("restarts:VPN", 0) == 0


async def test_unknown_service_and_transient_faults(barracuda: Running) -> None:
    async with Barracuda(barracuda.url, token=CUDA_TOKEN) as fw:
        with pytest.raises(NotFound):
            await fw.restart_service("NOPE")
        await barracuda.sim(
            "POST", "/_sim/faults", {"kind": "error", "status": 503, "path": "restart"}
        )
        with pytest.raises(DeviceUnavailable) as caught:
            await fw.restart_service("VPN")
        assert caught.value.transient is True
        await fw.restart_service("VPN")  # the retry goes through
    assert barracuda.device.counters["restarts:VPN"] == 1


async def test_configuration_transaction(barracuda: Running) -> None:
    async with Barracuda(barracuda.url, token=CUDA_TOKEN) as fw:
        async with fw.transaction() as token:
            assert token
        with pytest.raises(RuntimeError):
            async with fw.transaction():
                raise RuntimeError("a failed change")
    counters = barracuda.device.counters
    assert (counters["config_begin"], counters["config_commit"]) == (2, 1)
    assert counters["config_rollback"] == 1
    assert barracuda.device.transactions == set()


def test_configuration_is_checked() -> None:
    with pytest.raises(DeviceConfigError, match="token, or username and password"):
        Barracuda("https://cgf.example:8443")
    with pytest.raises(DeviceConfigError, match="plain http"):
        Barracuda("http://cgf.example:8080", token=CUDA_TOKEN)


async def test_credentials_never_in_errors_or_logs(
    barracuda: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for fw in (
        Barracuda(barracuda.url, token=CUDA_RO_TOKEN, name="cgf1"),
        Barracuda(barracuda.url, username=CUDA_USER, password=CUDA_PASSWORD + "x"),
    ):
        texts += [repr(fw), str(vars(fw))]
        async with fw:
            try:
                await fw.restart_service("VPN")
            except DeviceError as exc:
                texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert_no_secrets(*texts, caplog.text)
    assert (CUDA_PASSWORD + "x") not in "".join(texts)

"""The KEMP driver against the LoadMaster simulator (API v1 and v2), over real HTTP."""

from __future__ import annotations

import logging
import traceback
from typing import Any, Literal

import pytest

from playbooks.devices.common import AuthenticationFailed, DeviceError, NotFound
from playbooks.devices.kemp import Kemp
from tests.devices.conftest import KEMP_KEY, KEMP_PASSWORD, KEMP_USER, Running, assert_no_secrets

VIP = "203.0.113.50"


def lm(sim: Running, api: Literal["v1", "v2"], auth: str) -> Kemp:
    creds: dict[str, Any] = (
        {"api_key": KEMP_KEY}
        if auth == "key"
        else {"username": KEMP_USER, "password": KEMP_PASSWORD}
    )
    return Kemp(sim.url, api=api, name="lm1", **creds)


VARIANTS = [("v1", "basic"), ("v1", "key"), ("v2", "basic"), ("v2", "key")]


@pytest.mark.parametrize(("api", "auth"), VARIANTS)
async def test_real_server_status(kemp: Running, api: Literal["v1", "v2"], auth: str) -> None:
    async with lm(kemp, api, auth) as client:
        vs = await client.virtual_service(VIP, 500, "udp")
        rs = await client.real_server(VIP, 4500, "udp", "10.0.0.12", 4500)
    assert (vs.address, vs.port, vs.protocol, vs.status) == (VIP, 500, "udp", "Up")
    assert [(r.address, r.port, r.up) for r in vs.real_servers] == [
        ("10.0.0.11", 500, True),
        ("10.0.0.12", 500, True),
    ]
    assert (rs.address, rs.port, rs.enabled, rs.status) == ("10.0.0.12", 4500, True, "Up")


@pytest.mark.parametrize(("api", "auth"), VARIANTS)
async def test_disable_and_enable_everywhere(
    kemp: Running, api: Literal["v1", "v2"], auth: str
) -> None:
    async with lm(kemp, api, auth) as client:
        await client.disable_real_server("10.0.0.11")
        for port in (500, 4500):  # both IKE ports of the farm
            vs = await client.virtual_service(VIP, port, "udp")
            rs = vs.real_server("10.0.0.11")
            assert rs is not None and not rs.enabled and not rs.up and rs.status == "Disabled"
            other = vs.real_server("10.0.0.12")
            assert other is not None and other.up
        await client.enable_real_server("10.0.0.11")
        vs = await client.virtual_service(VIP, 4500, "udp")
    assert all(r.up for r in vs.real_servers)
    counters = kemp.device.counters
    assert counters["rs_disabled"] == 2 and counters["rs_enabled"] == 2


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_enable_in_one_virtual_service(kemp: Running, api: Literal["v1", "v2"]) -> None:
    async with lm(kemp, api, "key") as client:
        await client.set_real_server_enabled(VIP, 500, "udp", "10.0.0.12", 500, False)
        assert not (await client.real_server(VIP, 500, "udp", "10.0.0.12", 500)).enabled
        assert (await client.real_server(VIP, 4500, "udp", "10.0.0.12", 4500)).enabled
        await client.set_real_server_enabled(VIP, 500, "udp", "10.0.0.12", 500, True)
        assert (await client.real_server(VIP, 500, "udp", "10.0.0.12", 500)).up


async def test_health_shows_in_status(kemp: Running) -> None:
    await kemp.sim("PUT", "/_sim/realservers/10.0.0.12", {"healthy": False})
    async with lm(kemp, "v1", "key") as client:
        vs = await client.virtual_service(VIP, 500, "udp")
    rs = vs.real_server("10.0.0.12")
    assert rs is not None and rs.enabled and rs.status == "Down" and not rs.up
    assert vs.status == "Up"  # the other server still serves


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_errors(kemp: Running, api: Literal["v1", "v2"]) -> None:
    async with lm(kemp, api, "key") as client:
        with pytest.raises(NotFound) as unknown:
            await client.virtual_service("192.0.2.99", 443, "tcp")
        with pytest.raises(NotFound):
            await client.disable_real_server("10.9.9.9")
    assert unknown.value.transient is False
    bad = Kemp(kemp.url, api=api, api_key="wrong-" + KEMP_KEY)
    async with bad:
        with pytest.raises(AuthenticationFailed) as caught:
            await bad.virtual_service(VIP, 500, "udp")
    assert caught.value.transient is False
    assert kemp.device.counters["auth_failures"] == 1


async def test_credentials_never_in_errors_or_logs(
    kemp: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for api in ("v1", "v2"):
        for client in (
            Kemp(kemp.url, api=api, api_key=KEMP_KEY),
            Kemp(kemp.url, api=api, username=KEMP_USER, password=KEMP_PASSWORD + "x"),
        ):
            texts += [repr(client), str(vars(client))]
            async with client:
                try:
                    await client.disable_real_server("10.9.9.9")
                except DeviceError as exc:
                    texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert len(texts) == 20
    assert_no_secrets(*texts, caplog.text)
    assert (KEMP_PASSWORD + "x") not in "".join(texts)

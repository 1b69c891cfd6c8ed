"""FritzSource against the local TR-064/IGD responder (real fritzconnection, 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from bot.sources.fritz import FritzConfig, FritzSource
from bot.sources.ipcheck import IpReason
from tests.sources.tr064_responder import FritzState, Tr064Responder

USER, PASSWORD = "tunnelwarden", "fritz-secret"


def config(port: int, **kw: object) -> FritzConfig:
    data: dict[str, object] = {
        "address": "127.0.0.1",
        "port": port,
        "username": USER,
        "password": PASSWORD,
        "timeout_s": 2.0,
        "allow_documentation": True,
        **kw,
    }
    return FritzConfig.model_validate(data)


@pytest.fixture
async def box() -> AsyncIterator[Tr064Responder]:
    async with Tr064Responder(username=USER, password=PASSWORD) as responder:
        yield responder


async def test_reads_addresses_and_link_via_igd(box: Tr064Responder) -> None:
    source = FritzSource(config(box.port))
    try:
        r = await source.poll()
    finally:
        await source.close()
    assert r.errors == ()
    assert r.ipv4 is not None and r.ipv4.ip == "198.51.100.7"
    assert r.ipv4.service == "WANIPConn1"
    assert r.ipv6 is not None and r.ipv6.ip == "2001:db8:7::1"
    assert (r.linked, r.connected, r.uptime_s) == (True, True, 3600)
    assert r.connection_service == "WANIPConn1"
    assert r.reachable
    # same SOAP actions FritzStatus uses, on the unauthenticated IGD services
    assert {(c.path, c.action) for c in box.calls} == {
        ("/igdupnp/control/WANIPConn1", "GetExternalIPAddress"),
        ("/igdupnp/control/WANIPConn1", "GetStatusInfo"),
        ("/igdupnp/control/WANIPConn1", "X_AVM_DE_GetExternalIPv6Address"),
        ("/igdupnp/control/WANCommonIFC1", "GetCommonLinkProperties"),
    }
    assert all(c.user is None for c in box.calls)


async def test_ip_change_and_uptime_reset_reuse_connection(box: Tr064Responder) -> None:
    source = FritzSource(config(box.port, ipv6=False))
    try:
        first = await source.poll()
        box.state.ipv4 = "203.0.113.99"
        box.state.uptime = 12  # new PPP session
        second = await source.poll()
        box.state.uptime = 80
        third = await source.poll()
    finally:
        await source.close()
    assert first.ipv4 is not None and first.ipv4.ip == "198.51.100.7"
    assert not first.uptime_reset
    assert second.ipv4 is not None and second.ipv4.ip == "203.0.113.99"
    assert second.uptime_reset and second.uptime_s == 12
    assert not third.uptime_reset
    assert second.ipv6 is None
    assert box.description_fetches == 1  # connection built once, then reused
    assert not any(c.action == "X_AVM_DE_GetExternalIPv6Address" for c in box.calls)


async def test_link_down_reports_no_address(box: Tr064Responder) -> None:
    box.state.link = "Down"
    box.state.connection = "Disconnected"
    source = FritzSource(config(box.port))
    try:
        r = await source.poll()
    finally:
        await source.close()
    assert r.linked is False and r.connected is False
    assert r.ipv4 is None and r.ipv6 is None  # 0.0.0.0 / "" mean "no address", not an error
    assert r.uptime_s == 0
    assert r.errors == ()


async def test_tr064_ppp_with_digest_auth_when_igd_is_off() -> None:
    state = FritzState(igd=False, mode="ppp", ipv4="203.0.113.50")
    async with Tr064Responder(username=USER, password=PASSWORD, state=state) as box:
        source = FritzSource(config(box.port))
        try:
            r = await source.poll()
        finally:
            await source.close()
        assert r.ipv4 is not None and r.ipv4.ip == "203.0.113.50"
        assert r.ipv4.service == "WANPPPConnection1"
        assert r.linked is True and r.connected is True
        assert r.ipv6 is None  # no IGD service offers the IPv6 action
        assert box.challenges >= 1  # digest challenge answered by fritzconnection
        assert box.calls and all(c.user == USER for c in box.calls)
        assert ("/upnp/control/wancommonifconfig1", "GetCommonLinkProperties") in {
            (c.path, c.action) for c in box.calls
        }


async def test_tr064_ip_mode_falls_through_to_wanipconnection() -> None:
    state = FritzState(igd=False, mode="ip", ipv4="198.51.100.60")
    async with Tr064Responder(username=USER, password=PASSWORD, state=state) as box:
        source = FritzSource(config(box.port))
        try:
            r = await source.poll()
        finally:
            await source.close()
    assert r.ipv4 is not None and r.ipv4.ip == "198.51.100.60"
    assert r.ipv4.service == "WANIPConnection1"
    assert r.connection_service == "WANIPConnection1"
    assert r.connected is True


async def test_wrong_password_is_reported_not_raised() -> None:
    state = FritzState(igd=False)
    async with Tr064Responder(username=USER, password=PASSWORD, state=state) as box:
        source = FritzSource(config(box.port, password="wrong"))
        try:
            r = await source.poll()
        finally:
            await source.close()
    assert r.ipv4 is None and r.linked is None
    assert any("FritzAuthorizationError" in e for e in r.errors), r.errors
    assert box.calls == []


async def test_cgnat_address_from_router_is_rejected(box: Tr064Responder) -> None:
    box.state.ipv4 = "100.64.12.34"
    source = FritzSource(config(box.port, ipv6=False))
    try:
        r = await source.poll()
    finally:
        await source.close()
    assert r.ipv4 is not None
    assert r.ipv4.raw == "100.64.12.34"
    assert r.ipv4.ip is None
    assert r.ipv4.check.reason is IpReason.CGNAT


async def test_soap_fault_on_one_action_keeps_the_rest(box: Tr064Responder) -> None:
    box.state.failing = {"X_AVM_DE_GetExternalIPv6Address"}
    source = FritzSource(config(box.port))
    try:
        r = await source.poll()
    finally:
        await source.close()
    assert r.ipv6 is None
    assert r.ipv4 is not None and r.ipv4.ip == "198.51.100.7"
    assert len(r.errors) == 1 and "X_AVM_DE_GetExternalIPv6Address" in r.errors[0]
    assert "FritzActionFailedError" in r.errors[0]


async def test_unreachable_box_then_recovers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = FritzSource(config(port, timeout_s=1.0))
    r = await source.poll()
    assert not r.reachable
    assert len(r.errors) == 1 and r.errors[0].startswith("connect:")
    await source.close()


async def test_cancelled_poll_never_overlaps_the_next(box: Tr064Responder) -> None:
    source = FritzSource(config(box.port))
    try:
        await source.poll()  # build the connection
        box.state.delay_s = 0.1
        task = asyncio.create_task(source.poll())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        box.state.ipv4 = "203.0.113.42"
        r = await source.poll()
    finally:
        await source.close()
    assert r.ipv4 is not None and r.ipv4.ip == "203.0.113.42"
    assert box.max_in_flight == 1  # the cancelled poll's thread finished before the next ran

"""Each probe kind against its responder in the site simulator (real sockets, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import cast

from bot.events import Event
from bot.probes import AnyProbe, ProbeResult, ike, probe
from bot.probes.icmp import PERMISSION_HINT
from bot.services import Services
from bot.sim.sites import HttpResponder, SitesSim
from bot.sources.probing import ProbePoller
from tests.helpers import eventually, free_port
from tests.probes.support import SITE, addr, spec

MARGIN = 1.5  # seconds a probe may take beyond its timeout in these tests


async def timed(probe_spec: AnyProbe) -> tuple[ProbeResult, float]:
    started = time.monotonic()
    result = await probe(probe_spec)
    return result, time.monotonic() - started


# ------------------------------------------------------------------------------------ tcp
async def test_tcp_up(sim: SitesSim) -> None:
    result = await probe(spec("tcp", target=addr(sim, "kms")))
    assert result.ok and result.reason == "ok"
    assert result.latency_s is not None and 0 <= result.latency_s < 1
    assert sim.responder(SITE, "kms").hits == 1


async def test_tcp_refused(sim: SitesSim) -> None:
    await sim.set_state(SITE, "kms", up=False)
    result = await probe(spec("tcp", target=addr(sim, "kms")))
    assert (result.ok, result.reason) == (False, "refused")
    assert "refused" in result.detail

    await sim.set_state(SITE, "kms", up=True)  # back on the same port
    assert (await probe(spec("tcp", target=addr(sim, "kms")))).ok


async def test_tcp_unresolvable_host_is_a_result_not_an_exception() -> None:
    result = await probe(spec("tcp", target="no-such-host.invalid:1"))
    assert (result.ok, result.reason) == (False, "resolve_failed")


# ----------------------------------------------------------------------------------- http
async def test_http_expected_401(sim: SitesSim) -> None:
    url = f"http://{addr(sim, 'portal')}/health"
    result = await probe(spec("http", url=url, expect="200-299,401"))
    assert result.ok, result
    assert "401" in result.detail and result.latency_s is not None


async def test_http_401_outside_default_expect(sim: SitesSim) -> None:
    result = await probe(spec("http", url=f"http://{addr(sim, 'portal')}/"))
    assert (result.ok, result.reason) == (False, "unexpected_status")
    assert "401" in result.detail and "200-299" in result.detail
    assert result.latency_s is not None


async def test_http_unexpected_500(sim: SitesSim) -> None:
    await sim.set_state(SITE, "portal", status=500)
    result = await probe(spec("http", url=f"http://{addr(sim, 'portal')}/", expect="200-299,401"))
    assert (result.ok, result.reason) == (False, "unexpected_status")
    assert "-> 500" in result.detail


async def test_http_body_match_and_mismatch(sim: SitesSim) -> None:
    url = f"http://{addr(sim, 'health')}/"
    assert (await probe(spec("http", url=url, body_match=r"state:\s+healthy"))).ok
    await sim.set_state(SITE, "health", body="state: degraded")
    result = await probe(spec("http", url=url, body_match=r"state:\s+healthy"))
    assert (result.ok, result.reason) == (False, "body_mismatch")


async def test_http_timeout(sim: SitesSim) -> None:
    await sim.set_state(SITE, "health", delay=5.0)
    result, elapsed = await timed(spec("http", url=f"http://{addr(sim, 'health')}/", timeout=0.5))
    assert (result.ok, result.reason) == (False, "timeout")
    assert elapsed < 0.5 + MARGIN


async def test_http_refused_when_down(sim: SitesSim) -> None:
    await sim.set_state(SITE, "health", up=False)
    result = await probe(spec("http", url=f"http://{addr(sim, 'health')}/"))
    assert (result.ok, result.reason) == (False, "refused")


async def test_https_verified_against_ca_file(sim: SitesSim) -> None:
    responder = sim.responder(SITE, "tls")
    assert isinstance(responder, HttpResponder) and responder.ca_file is not None
    url = f"https://{addr(sim, 'tls')}/"
    result = await probe(spec("http", url=url, ca_file=str(responder.ca_file)))
    assert result.ok, result

    untrusted = await probe(spec("http", url=url))  # the sim's CA is not in the system store
    assert (untrusted.ok, untrusted.reason) == (False, "tls_error")

    unverified = await probe(spec("http", url=url, verify_tls=False))
    assert unverified.ok


# ------------------------------------------------------------------------------------ dns
async def test_dns_answer(sim: SitesSim) -> None:
    server = addr(sim, "dns")
    result = await probe(spec("dns", query="dc1.corp.internal", server=server, expect="10.1.0."))
    assert result.ok, result
    assert "10.1.0.10" in result.detail

    txt = await probe(spec("dns", query="dc1.corp.internal", type="TXT", server=server))
    assert txt.ok and "site=home" in txt.detail

    chained = await probe(spec("dns", query="kms.corp.internal", server=server, expect="10.1.0.10"))
    assert chained.ok, chained


async def test_dns_nxdomain(sim: SitesSim) -> None:
    result = await probe(spec("dns", query="nope.corp.internal", server=addr(sim, "dns")))
    assert (result.ok, result.reason) == (False, "nxdomain")
    assert result.latency_s is not None


async def test_dns_no_answer_and_unexpected_answer(sim: SitesSim) -> None:
    server = addr(sim, "dns")
    no_aaaa = await probe(spec("dns", query="dc1.corp.internal", type="AAAA", server=server))
    assert (no_aaaa.ok, no_aaaa.reason) == (False, "no_answer")
    wrong = await probe(spec("dns", query="dc1.corp.internal", server=server, expect="10.9."))
    assert (wrong.ok, wrong.reason) == (False, "unexpected_answer")
    assert "10.1.0.10" in wrong.detail


async def test_dns_silent_server_times_out(sim: SitesSim) -> None:
    await sim.set_state(SITE, "dns", up=False)
    probe_spec = spec("dns", query="dc1.corp.internal", server=addr(sim, "dns"), timeout=0.5)
    result, elapsed = await timed(probe_spec)
    assert (result.ok, result.reason) == (False, "timeout")
    assert elapsed < 0.5 + MARGIN
    assert sim.responder(SITE, "dns").hits >= 1  # it was asked, and kept quiet


# ---------------------------------------------------------------------------------- ikev2
async def test_ikev2_accept(sim: SitesSim) -> None:
    result = await probe(spec("ikev2", target=addr(sim, "vpn")))
    assert result.ok, result
    assert "SA, KE, Nonce" in result.detail


async def test_ikev2_no_proposal_chosen_only_counts_as_alive(sim: SitesSim) -> None:
    await sim.set_state(SITE, "vpn", mode="no_proposal")
    result = await probe(spec("ikev2", target=addr(sim, "vpn")))
    assert (result.ok, result.reason) == (True, "ok")
    assert "NO_PROPOSAL_CHOSEN" in result.detail


async def test_ikev2_other_refusals_count_as_alive(sim: SitesSim) -> None:
    await sim.set_state(SITE, "vpn", mode="invalid_ke")
    result = await probe(spec("ikev2", target=addr(sim, "vpn")))
    assert result.ok and "INVALID_KE_PAYLOAD (wants group 2)" in result.detail
    await sim.set_state(SITE, "vpn", mode="cookie")
    result = await probe(spec("ikev2", target=addr(sim, "vpn")))
    assert result.ok and "COOKIE" in result.detail


async def test_ikev2_port_unreachable_is_ike_down(sim: SitesSim) -> None:
    await sim.set_state(SITE, "vpn", mode="closed")
    result, elapsed = await timed(spec("ikev2", target=addr(sim, "vpn"), timeout=2.0))
    assert (result.ok, result.reason) == (False, "ike_down")
    assert result.detail.startswith("host up, IKE down (port unreachable)")
    assert elapsed < 1.0  # the ICMP error comes back at once, no waiting for the timeout

    await sim.set_state(SITE, "vpn", mode="accept")  # reopened on the same port
    assert (await probe(spec("ikev2", target=addr(sim, "vpn")))).ok


async def test_ikev2_silence_is_a_timeout(sim: SitesSim) -> None:
    await sim.set_state(SITE, "vpn", mode="silent")
    result, elapsed = await timed(spec("ikev2", target=addr(sim, "vpn"), timeout=0.5))
    assert (result.ok, result.reason) == (False, "timeout")
    assert 0.4 < elapsed < 0.5 + MARGIN
    assert sim.responder(SITE, "vpn").hits == 1


async def test_ikev2_answers_for_another_spi_are_ignored(sim: SitesSim) -> None:
    await sim.set_state(SITE, "vpn", mode="wrong_spi")
    result = await probe(spec("ikev2", target=addr(sim, "vpn"), timeout=0.5))
    assert (result.ok, result.reason) == (False, "timeout")
    assert "3 unrelated datagrams ignored" in result.detail


class _LatePeer(asyncio.DatagramProtocol):
    """A test peer: first another SPI's answer and garbage, the real answer 0.2 s later."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        spi = data[:8]
        send = self.transport.sendto
        send(ike.build_notify_reply(bytes(b ^ 1 for b in spi), 14), addr)
        send(spi + b"garbage", addr)
        asyncio.get_running_loop().call_later(0.2, send, ike.build_notify_reply(spi, 14), addr)


async def test_ikev2_keeps_waiting_past_wrong_answers() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_LatePeer, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await probe(spec("ikev2", target=f"127.0.0.1:{port}"))
        assert result.ok, result
        assert result.latency_s is not None and result.latency_s >= 0.15
    finally:
        transport.close()


# ----------------------------------------------------------------------------------- icmp
def _ping_sockets_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    except PermissionError:
        return False
    return True


async def test_icmp_loopback_or_a_clear_permission_result() -> None:
    result = await probe(spec("icmp", target="127.0.0.1"))
    if _ping_sockets_allowed():
        assert (result.ok, result.reason) == (True, "ok"), result
        assert result.latency_s is not None and "echo reply from 127.0.0.1" in result.detail
    else:
        assert (result.ok, result.reason, result.latency_s) == (False, "permission", None)
        assert result.detail == PERMISSION_HINT
        assert "net.ipv4.ping_group_range" in result.detail and "CAP_NET_RAW" in result.detail


SILENT_LOOPBACK = "127.255.255.254"  # loopback only; on Linux the kernel answers all of 127/8


async def test_icmp_down_is_a_clear_result(services: Services) -> None:
    """An ICMP probe that cannot succeed is a failed result with a reason people can act on,
    recorded like any other (the site's probe state goes down, ``probe.failed`` says why).

    Where unprivileged ping sockets are refused (``net.ipv4.ping_group_range``), that is the
    reason, at once rather than after the timeout. Where they are allowed, Linux answers an
    echo to every address of 127.0.0.0/8 itself, so no loopback target stays silent: there
    the answer is checked, and a silence (another kernel) must be a timeout."""
    icmp = spec(
        "icmp", target=SILENT_LOOPBACK, timeout=0.2, interval=1, fail_after=1, recover_after=1
    )
    result, took = await timed(icmp)
    poller = ProbePoller(services, SITE, icmp)
    event = await poller.record(result)
    state = await services.state.site_state(SITE)
    if not _ping_sockets_allowed():
        assert (result.ok, result.reason, result.latency_s) == (False, "permission", None)
        assert result.detail == PERMISSION_HINT
        assert took < icmp.timeout + MARGIN
        assert event == "failed"
        assert (state["probe.t-icmp.state"], state["probe.t-icmp.reason"]) == ("down", "permission")
        assert "net.ipv4.ping_group_range" in state["probe.t-icmp.detail"]
        entries = await services.redis.xrange(services.keys.stream)
        (failed,) = [Event.from_wire(fields[b"event"]) for _, fields in entries]
        assert failed.type == "probe.failed" and failed.data["reason"] == "permission"
    elif result.ok:
        assert f"echo reply from {SILENT_LOOPBACK}" in result.detail
        assert event is None and state["probe.t-icmp.state"] == "up"
    else:
        assert result.reason == "timeout", result
        assert result.detail == f"no echo reply from {SILENT_LOOPBACK} in 0.2s"
        assert event == "failed" and state["probe.t-icmp.state"] == "down"


# ------------------------------------------------------------------------ through tunnel
async def test_behind_the_tunnel_responders_follow_the_tied_callable(sim: SitesSim) -> None:
    tunnel = {"up": True}
    sim.tie(SITE, lambda: tunnel["up"])

    def specs() -> list[AnyProbe]:
        return [
            spec("tcp", target=addr(sim, "kms-int"), through_tunnel=True),
            spec("http", url=f"http://{addr(sim, 'web-int')}/", through_tunnel=True),
            spec("ikev2", target=addr(sim, "vpn-int"), timeout=0.5, through_tunnel=True),
            spec("dns", query="fs.corp.internal", server=addr(sim, "dns-int"), timeout=0.5),
        ]

    async def results() -> list[ProbeResult]:
        return list(await asyncio.gather(*(probe(s) for s in specs())))

    assert [r.ok for r in await results()] == [True, True, True, True]

    tunnel["up"] = False
    await sim.sync()
    down = await results()
    assert [r.ok for r in down] == [False, False, False, False]
    assert [r.reason for r in down] == ["refused", "refused", "timeout", "timeout"]
    # responders outside the tunnel do not care
    assert (await probe(spec("tcp", target=addr(sim, "kms")))).ok
    assert (await probe(spec("ikev2", target=addr(sim, "vpn")))).ok

    tunnel["up"] = True  # no explicit sync: the poller notices

    async def all_up() -> bool:
        return all(r.ok for r in await results())

    await eventually(all_up, within=5)


async def test_tie_takes_effect_at_once_for_udp_and_on_kept_connections(sim: SitesSim) -> None:
    tunnel = {"up": False}
    sim.tie(SITE, lambda: tunnel["up"])
    # No sync, no poll yet matters for UDP: each datagram checks the tunnel.
    result = await probe(spec("dns", query="fs.corp.internal", server=addr(sim, "dns-int")))
    assert result.reason == "timeout"
    tunnel["up"] = True
    assert (await probe(spec("dns", query="fs.corp.internal", server=addr(sim, "dns-int")))).ok


async def test_manual_tunnel_switch(sim: SitesSim) -> None:
    await sim.set_tunnel(SITE, False)
    result = await probe(spec("tcp", target=addr(sim, "kms-int")))
    assert result.reason == "refused"
    await sim.set_tunnel(SITE, True)
    assert (await probe(spec("tcp", target=addr(sim, "kms-int")))).ok


# --------------------------------------------------------------------------- no-raise
async def test_nothing_listening_anywhere_gives_results_not_exceptions() -> None:
    port = free_port()
    results = await asyncio.gather(
        probe(spec("tcp", target=f"127.0.0.1:{port}")),
        probe(spec("http", url=f"http://127.0.0.1:{port}/")),
        probe(spec("ikev2", target=f"127.0.0.1:{port}")),
        probe(spec("dns", query="a.example", server=f"127.0.0.1:{port}", timeout=0.5)),
    )
    # dnspython's UDP socket is not connected, so the port-unreachable does not surface there
    assert [r.reason for r in results] == ["refused", "refused", "ike_down", "timeout"]
    assert not any(r.ok for r in results)

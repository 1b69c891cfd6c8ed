"""The SonicWall driver against the SonicOS simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from playbooks.devices.common import (
    AuthenticationFailed,
    DeviceConfigError,
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    NotFound,
    RequestRejected,
    SessionBusy,
    basic_auth,
)
from playbooks.devices.sonicwall import S2SPolicy, SonicWall, policy_changes
from tests.devices.conftest import SW_PASSWORD, SW_USER, FakeClock, Running, assert_no_secrets

PRIMARY = "203.0.113.10"
SECONDARY = "198.51.100.20"


def driver(sim: Running, **kwargs: Any) -> SonicWall:
    kwargs.setdefault("timeout", 5.0)
    return SonicWall(sim.url, SW_USER, SW_PASSWORD, name="fw1", **kwargs)


async def other_client_login(sim: Running, source: str, override: bool = False) -> int:
    """Another API client (from another address) logs in; returns the HTTP status."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            sim.url + "/api/sonicos/auth",
            headers=basic_auth(SW_USER, SecretStr(SW_PASSWORD)),
            json={"override": True} if override else None,
        ) as response,
    ):
        return response.status


def counters(sim: Running) -> dict[str, int]:
    return dict(sim.device.counters)


async def active(sim: Running) -> str | None:
    tunnels = await sim.sim("GET", "/_sim/tunnels")
    return tunnels["Azure"]["active"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- sessions
async def test_read_policy_logs_in_and_out(sonicos: Running) -> None:
    async with driver(sonicos).session() as s:
        policy = await s.policy("Azure")
        assert sonicos.device.session_info()["client"] == "127.0.0.1"
    assert policy == S2SPolicy(
        name="Azure",
        enable=True,
        keep_alive=False,
        primary_gateway=PRIMARY,
        secondary_gateway=SECONDARY,
        preempt_interval=None,
    )
    assert counters(sonicos)["logins"] == 1
    assert counters(sonicos)["logouts"] == 1
    assert sonicos.device.session is None


async def test_digest_authentication(sonicos: Running) -> None:
    await sonicos.sim("PATCH", "/_sim/config", {"auth_methods": ["digest"]})
    async with driver(sonicos, auth="digest").session() as s:
        assert (await s.policy("Azure")).enable is True
        assert sonicos.device.session.scheme == "digest"
    assert counters(sonicos)["logins"] == 1
    assert counters(sonicos)["logouts"] == 1
    # Basic is off on this appliance now: a Basic login is refused, permanently.
    with pytest.raises(AuthenticationFailed) as caught:
        async with driver(sonicos).session():
            pass
    assert caught.value.transient is False


async def test_md5_digest(sonicos: Running) -> None:
    await sonicos.sim(
        "PATCH", "/_sim/config", {"auth_methods": ["digest"], "digest_algorithm": "MD5"}
    )
    async with driver(sonicos, auth="digest").session() as s:
        await s.policy("Azure")
    assert counters(sonicos)["logins"] == 1


async def test_second_login_is_refused_while_a_session_is_held(sonicos: Running) -> None:
    async with driver(sonicos).session() as s:
        assert await other_client_login(sonicos, "127.0.0.2") == 503
        await s.policy("Azure")  # our session is untouched
    assert counters(sonicos)["login_refused"] == 1
    assert counters(sonicos)["logouts"] == 1


async def test_driver_is_refused_when_another_client_holds_the_session(sonicos: Running) -> None:
    assert await other_client_login(sonicos, "127.0.0.2") == 200
    with pytest.raises(SessionBusy) as caught:
        async with driver(sonicos).session():
            pytest.fail("must not get a session")
    assert caught.value.transient is True
    assert caught.value.status == 503
    # The other session is intact, and no logout was sent for a session we never had.
    assert sonicos.device.session_info()["client"] == "127.0.0.2"
    assert counters(sonicos)["login_refused"] == 1
    assert counters(sonicos).get("logouts", 0) == 0
    assert counters(sonicos).get("unauthenticated", 0) == 0


async def test_override_only_when_configured(sonicos: Running) -> None:
    await sonicos.sim("PUT", "/_sim/session", {"holder": "admin"})
    with pytest.raises(SessionBusy):
        async with driver(sonicos).session():
            pass
    assert sonicos.device.session_info()["holder"] == "admin"
    async with driver(sonicos, override=True).session() as s:
        await s.policy("Azure")
    assert counters(sonicos)["kicked"] == 1
    assert counters(sonicos)["logouts"] == 1
    assert sonicos.device.session is None


async def test_logout_after_an_exception_inside_the_session(sonicos: Running) -> None:
    with pytest.raises(RuntimeError, match="playbook bug"):
        async with driver(sonicos).session() as s:
            await s.set_policy("Azure", {"keep_alive": True})
            raise RuntimeError("playbook bug")
    assert counters(sonicos)["logouts"] == 1
    assert counters(sonicos)["pending_discarded"] == 1
    assert sonicos.device.committed["Azure"]["keep_alive"] is False


async def test_logout_after_a_500_on_commit(sonicos: Running) -> None:
    await sonicos.sim(
        "POST", "/_sim/faults", {"kind": "error", "method": "POST", "path": "config/pending"}
    )
    with pytest.raises(DeviceUnavailable) as caught:
        async with driver(sonicos).session() as s:
            await s.set_policy("Azure", {"keep_alive": True})
            await s.commit()
    assert caught.value.transient is True
    assert caught.value.status == 500
    assert counters(sonicos)["faults_fired"] == 1
    assert counters(sonicos)["logins"] == 1
    assert counters(sonicos)["logouts"] == 1
    assert counters(sonicos).get("commits", 0) == 0
    assert sonicos.device.committed["Azure"]["keep_alive"] is False


async def test_logout_after_a_timeout(sonicos: Running) -> None:
    await sonicos.sim(
        "POST", "/_sim/faults", {"kind": "timeout", "delay": 1.5, "method": "GET", "path": "name/"}
    )
    with pytest.raises(DeviceTimeout) as caught:
        async with driver(sonicos, timeout=0.3).session() as s:
            await s.policy("Azure")
    assert caught.value.transient is True
    assert counters(sonicos)["logouts"] == 1
    assert sonicos.device.session is None


async def test_logout_when_the_login_reply_is_lost(sonicos: Running) -> None:
    """A login whose reply is lost: a logout is still attempted, and nothing is stuck.

    The held login completes after our logout; the appliance then holds a session for our
    address, which the next login from the same client replaces (it would otherwise idle out).
    """
    await sonicos.sim(
        "POST", "/_sim/faults", {"kind": "timeout", "delay": 0.6, "method": "POST", "path": "auth"}
    )
    with pytest.raises(DeviceTimeout):
        async with driver(sonicos, timeout=0.3).session():
            pass
    assert counters(sonicos)["unauthenticated"] == 1  # our logout came before the login
    await asyncio.sleep(0.5)  # the held login completes on the appliance
    assert counters(sonicos)["logins"] == 1
    async with driver(sonicos).session() as s:
        await s.policy("Azure")
    assert counters(sonicos)["relogins"] == 1
    assert counters(sonicos)["logouts"] == 1
    assert sonicos.device.session is None


async def test_logout_when_cancelled(sonicos: Running) -> None:
    await sonicos.sim(
        "POST", "/_sim/faults", {"kind": "timeout", "delay": 2, "method": "GET", "path": "name/"}
    )
    inside = asyncio.Event()

    async def run() -> None:
        async with driver(sonicos).session() as s:
            inside.set()
            await s.policy("Azure")

    task = asyncio.create_task(run())
    await asyncio.wait_for(inside.wait(), 5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counters(sonicos)["logouts"] == 1
    assert sonicos.device.session is None


async def test_unknown_policy(sonicos: Running) -> None:
    with pytest.raises(NotFound) as caught:
        async with driver(sonicos).session() as s:
            await s.policy("Nope")
    assert caught.value.transient is False
    assert counters(sonicos)["logouts"] == 1


async def test_rejected_change_is_permanent(sonicos: Running) -> None:
    with pytest.raises(RequestRejected) as caught:
        async with driver(sonicos).session() as s:
            await s.set_policy("Azure", {"preempt_secondary_gateway": {"interval": -5}})
    assert caught.value.transient is False
    assert caught.value.status == 400
    with pytest.raises(ValueError, match="unknown site-to-site policy field"):
        async with driver(sonicos).session() as s:
            await s.set_policy("Azure", {"keepalive": True})
    assert counters(sonicos)["logouts"] == 2


async def test_idle_session_expires(sonicos: Running, clock: FakeClock) -> None:
    assert await other_client_login(sonicos, "127.0.0.2") == 200
    clock.advance(301)  # the other client vanished without logging out
    async with driver(sonicos).session() as s:
        await s.policy("Azure")
    assert counters(sonicos)["session_expired"] == 1


# ---------------------------------------------------------------------- configuration
async def test_changes_stay_pending_until_commit(sonicos: Running) -> None:
    async with driver(sonicos).session() as s:
        await s.set_policy("Azure", {"keep_alive": True})
        assert (await s.policy("Azure")).keep_alive is False  # running config unchanged
        pending = await s.pending()
        assert pending["status"]["cli"]["pending_config"] is True
        assert pending["vpn"]["policy"][0]["ipv4"]["site_to_site"]["keep_alive"] is True
        assert sonicos.device.committed["Azure"]["keep_alive"] is False
        await s.commit()
        assert (await s.policy("Azure")).keep_alive is True
        assert (await s.pending())["status"]["cli"]["pending_config"] is False
    assert counters(sonicos)["changes"] == 1
    assert counters(sonicos)["commits"] == 1


async def test_uncommitted_changes_are_dropped_at_logout(sonicos: Running) -> None:
    async with driver(sonicos).session() as s:
        await s.set_policy("Azure", {"enable": False})
    assert sonicos.device.committed["Azure"]["enable"] is True
    assert counters(sonicos)["pending_discarded"] == 1
    assert await active(sonicos) == "primary"


async def test_policy_changes_are_minimal_and_empty_when_converged() -> None:
    current = S2SPolicy("Azure", True, False, PRIMARY, SECONDARY, None)
    assert policy_changes(current, enable=True, keep_alive=False, preempt=False) == {}
    assert policy_changes(current, keep_alive=True) == {"keep_alive": True}
    assert policy_changes(current, preempt=True, preempt_interval=120) == {
        "preempt_secondary_gateway": {"interval": 120}
    }
    with pytest.raises(ValueError, match="needs preempt_interval"):
        policy_changes(current, preempt=True)
    on = S2SPolicy("Azure", True, True, PRIMARY, SECONDARY, 120.0)
    assert policy_changes(on, preempt=True) == {}
    assert policy_changes(on, preempt_interval=120) == {}
    assert policy_changes(on, preempt=False) == {"preempt_secondary_gateway": None}
    assert policy_changes(on, secondary_gateway="192.0.2.9") == {
        "gateway": {"secondary": "192.0.2.9"}
    }


async def test_preempt_drives_failback(sonicos: Running, clock: FakeClock) -> None:
    assert await active(sonicos) == "primary"
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": False})
    assert await active(sonicos) == "secondary"  # failover (DPD)
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": True})
    clock.advance(3600)
    assert await active(sonicos) == "secondary"  # no preempt: it stays

    async with driver(sonicos).session() as s:
        change = policy_changes(await s.policy("Azure"), preempt=True, preempt_interval=300)
        await s.set_policy("Azure", change)
        assert await active(sonicos) == "secondary"  # pending: no effect yet
        await s.commit()
        assert (await s.policy("Azure")).preempt_interval == 300
    # The interval counts from the switch to the secondary, long ago: back to the primary.
    assert await active(sonicos) == "primary"

    # Failover again; with preempt on, failback waits for the interval.
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": False})
    assert await active(sonicos) == "secondary"
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": True})
    clock.advance(299)
    assert await active(sonicos) == "secondary"
    clock.advance(1)
    assert await active(sonicos) == "primary"

    async with driver(sonicos).session() as s:
        await s.set_policy("Azure", policy_changes(await s.policy("Azure"), preempt=False))
        await s.commit()
        assert (await s.policy("Azure")).preempt is False
    assert sonicos.device.committed["Azure"]["preempt_secondary_gateway"] is None
    events = [e["event"] for e in await sonicos.sim("GET", "/_sim/events")]
    assert events == ["tunnel_up", "failover", "failback", "failover", "failback"]


async def test_reinitiate_returns_to_the_primary(sonicos: Running) -> None:
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": False})
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": True})
    assert await active(sonicos) == "secondary"
    async with driver(sonicos).session() as s:
        await s.set_policy("Azure", {"enable": False})
        await s.commit()
        assert await active(sonicos) is None  # a disabled policy has no tunnel
        await s.set_policy("Azure", {"enable": True})
        await s.commit()
    assert await active(sonicos) == "primary"
    assert counters(sonicos)["commits"] == 2
    assert counters(sonicos)["logins"] == 1


async def test_keep_alive_keeps_an_idle_tunnel_up(sonicos: Running) -> None:
    await sonicos.sim("POST", "/_sim/idle", {"policy": "Azure"})
    assert await active(sonicos) is None  # idled out, nothing brings it back
    async with driver(sonicos).session() as s:
        await s.set_policy("Azure", policy_changes(await s.policy("Azure"), keep_alive=True))
        await s.commit()
    assert await active(sonicos) == "primary"  # keep-alive initiates it
    await sonicos.sim("POST", "/_sim/idle", {"policy": "Azure"})
    assert await active(sonicos) == "primary"


async def test_both_gateways_down_means_no_tunnel(sonicos: Running) -> None:
    await sonicos.sim("PUT", f"/_sim/gateways/{PRIMARY}", {"reachable": False})
    await sonicos.sim("PUT", f"/_sim/gateways/{SECONDARY}", {"reachable": False})
    assert await active(sonicos) is None
    await sonicos.sim("PUT", f"/_sim/gateways/{SECONDARY}", {"reachable": True})
    assert await active(sonicos) == "secondary"


# ---------------------------------------------------------------------- URL, TLS, secrets
def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(DeviceConfigError, match=r"only allowed to 127\.0\.0\.1 or ::1"):
        SonicWall("http://192.0.2.1", SW_USER, SW_PASSWORD)
    with pytest.raises(DeviceConfigError):
        SonicWall("http://localhost:8080", SW_USER, SW_PASSWORD)
    with pytest.raises(DeviceConfigError) as caught:
        SonicWall(f"https://{SW_USER}:{SW_PASSWORD}@fw.example", SW_USER, SW_PASSWORD)
    assert_no_secrets(str(caught.value))
    with pytest.raises(DeviceConfigError, match="ca_file"):
        SonicWall("https://fw.example", SW_USER, SW_PASSWORD, ca_file="/nonexistent.pem")
    SonicWall("http://[::1]:8080", SW_USER, SW_PASSWORD)
    SonicWall("https://fw.example:4443", SW_USER, SW_PASSWORD)


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_credentials_never_in_errors_or_logs(
    sonicos: Running, leaks: pytest.LogCaptureFixture
) -> None:
    texts: list[str] = []
    wrong = SonicWall(sonicos.url, SW_USER, SW_PASSWORD + "-wrong", name="fw1")
    device = driver(sonicos)
    texts += [repr(wrong), repr(device), str(vars(device))]
    for attempt in (
        wrong.session(),
        driver(sonicos, auth="digest").session(),
    ):
        try:
            async with attempt as s:
                await s.policy("Missing")
        except DeviceError as exc:
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert counters(sonicos)["login_failures"] == 1
    assert counters(sonicos).get("logouts", 0) == 1  # none after the refused login
    texts.append(leaks.text)
    assert_no_secrets(*texts)
    assert (SW_PASSWORD + "-wrong") not in "".join(texts)


async def test_tls_verification_with_a_ca_file(tmp_path: Any, sonicos: Running) -> None:
    """A real HTTPS listener with a self-signed certificate: refused unless it is trusted."""
    import datetime
    import ipaddress
    import ssl

    from aiohttp import web
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from bot.sim.devices.sonicos import create_app
    from playbooks.devices.common import TlsVerificationFailed

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fw-sim")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "fw.pem", tmp_path / "fw.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(create_app(sonicos.device), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(TlsVerificationFailed) as caught:
            async with SonicWall(url, SW_USER, SW_PASSWORD).session():
                pass
        assert caught.value.transient is False
        async with SonicWall(url, SW_USER, SW_PASSWORD, ca_file=cert_file).session() as s:
            assert (await s.policy("Azure")).enable is True
        async with SonicWall(url, SW_USER, SW_PASSWORD, verify_tls=False).session() as s:
            await s.policy("Azure")
    finally:
        await runner.cleanup()
    assert counters(sonicos)["logouts"] == 2


async def test_simulator_refuses_non_loopback() -> None:
    from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim

    for host in ("0.0.0.0", "192.0.2.1", "localhost", "::"):
        with pytest.raises(ValueError, match=r"only bind to 127\.0\.0\.1 or ::1"):
            await start_sonicos_sim(SonicOSDevice(), host, 0)


@pytest.fixture
async def ipv6_sim() -> AsyncIterator[Running]:
    from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim

    device = SonicOSDevice(username=SW_USER, password=SW_PASSWORD)
    try:
        runner, port = await start_sonicos_sim(device, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield Running(device, f"http://[::1]:{port}")
    await runner.cleanup()


async def test_ipv6_loopback(ipv6_sim: Running) -> None:
    async with driver(ipv6_sim).session() as s:
        assert (await s.policy("Azure")).primary_gateway == PRIMARY
    assert counters(ipv6_sim)["logouts"] == 1

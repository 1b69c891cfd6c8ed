"""``rras-*`` (against ``RecordedPsTransport`` from a recording file) and ``kemp-real-server``
(against the LoadMaster simulator over HTTP, API v1 and v2) through the real runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.gate import Refused, playbook_call
from playbooks import builtin
from tests.devices.playbook_env import DEAD_DEST, NEW_DEST, OLD_DEST, VIP, Env, environment

IFACE = "rras rras1 interface Azure"


@pytest.fixture
async def env(prefix: str, tmp_path: Path, redis_url: str) -> AsyncIterator[Env]:
    async for e in environment(prefix, tmp_path, redis_url):
        yield e


@pytest.fixture
async def env_down(prefix: str, tmp_path: Path, redis_url: str) -> AsyncIterator[Env]:
    """The recorded interface is Disconnected."""
    async for e in environment(prefix, tmp_path, redis_url, rras_state="Disconnected"):
        yield e


def writes(env: Env) -> list[str]:
    """The cmdlets sent to the RRAS server that change something."""
    return [cmdlet for cmdlet, _ in env.rras.calls if not cmdlet.startswith("Get-")]


# ------------------------------------------------------------------ rras-status
async def test_status_is_a_note_and_a_run_changes_nothing(env: Env) -> None:
    plan = await env.plan("rras-status")
    assert plan.converged
    assert plan.notes == [f"{IFACE}: Connected, destination {OLD_DEST}, enabled"]
    record = await env.run("rras-status")
    assert record.outcome == "no_changes"
    assert env.rras.calls == [("Get-VpnS2SInterface", {"Name": "Azure"})] * 2
    assert await env.services.state.journal("home", record.run_id) == []


async def test_status_reports_the_last_error(env: Env) -> None:
    env.rras.interfaces["Azure"].update(ConnectionState="Disconnected", LastError=809)
    plan = await env.plan("rras-status")
    assert plan.notes == [f"{IFACE}: Disconnected, destination {OLD_DEST}, enabled, last error 809"]


# ------------------------------------------------------------------ rras-connect
async def test_connect_dry_run_run_rerun(env_down: Env) -> None:
    env = env_down
    plan = await env.plan("rras-connect")
    assert plan.render() == f"{IFACE} connectionState: Disconnected -> Connected"
    assert writes(env) == []

    record = await env.run("rras-connect")
    assert record.outcome == "ok", record
    assert record.playbooks[0].detail == f"{IFACE}: Connected"
    assert writes(env) == ["Connect-VpnS2SInterface"]
    assert env.rras.interfaces["Azure"]["ConnectionState"] == "Connected"

    again = await env.run("rras-connect")
    assert again.outcome == "no_changes"
    assert writes(env) == ["Connect-VpnS2SInterface"]
    # one transport per recording: the status read sees what the connect did
    assert (await env.plan("rras-status")).notes[0].startswith(f"{IFACE}: Connected")


async def test_connect_to_an_unreachable_peer_fails_and_says_why(env_down: Env) -> None:
    env = env_down
    env.rras.interfaces["Azure"]["Destination"] = [DEAD_DEST]
    record = await env.run("rras-connect")
    assert record.outcome == "failed"
    (result,) = record.playbooks
    assert result.error_code == "RemoteCommandFailed" and not result.retry
    assert result.error and "remote server is not responding. (809)" in result.error


# ------------------------------------------------------------------ rras-set-destination
async def test_set_destination_reconnects_and_converges(env: Env) -> None:
    plan = await env.plan("rras-set-destination", destination=NEW_DEST)
    assert plan.render() == f"{IFACE} destination: {OLD_DEST} -> {NEW_DEST}"
    assert writes(env) == []

    record = await env.run("rras-set-destination", destination=NEW_DEST)
    assert record.outcome == "ok", record
    assert record.playbooks[0].detail == f"{IFACE}: destination {NEW_DEST}, Connected"
    assert writes(env) == [
        "Set-VpnS2SInterface",
        "Disconnect-VpnS2SInterface",
        "Connect-VpnS2SInterface",
    ]
    set_call = next(p for c, p in env.rras.calls if c == "Set-VpnS2SInterface")
    assert set_call == {"Name": "Azure", "Destination": [NEW_DEST], "Force": True, "PassThru": True}
    iface = env.rras.interfaces["Azure"]
    assert iface["Destination"] == [NEW_DEST] and iface["ConnectionState"] == "Connected"
    steps = [e.step for e in await env.services.state.journal("home", record.run_id)]
    assert [s for s in steps if not s.startswith(":")] == [
        "set-destination",
        "set-destination",
        "disconnect",
        "disconnect",
        "connect",
        "connect",
    ]

    again = await env.run("rras-set-destination", destination=NEW_DEST)
    assert again.outcome == "no_changes"
    assert len(writes(env)) == 3


async def test_set_destination_of_a_disconnected_interface_connects_it(env_down: Env) -> None:
    env = env_down
    record = await env.run("rras-set-destination", destination=NEW_DEST)
    assert record.outcome == "ok", record
    assert writes(env) == ["Set-VpnS2SInterface", "Connect-VpnS2SInterface"]


async def test_set_destination_to_a_dead_peer_is_not_verified(env: Env) -> None:
    record = await env.run("rras-set-destination", destination=DEAD_DEST)
    assert record.outcome == "failed"
    assert record.playbooks[0].error_code == "RemoteCommandFailed"
    assert env.rras.interfaces["Azure"]["Destination"] == [DEAD_DEST]


async def test_destination_follows_the_address_rules(
    env: Env, prefix: str, tmp_path: Path, redis_url: str
) -> None:
    playbooks = builtin()
    for bad, reason in (
        ("10.0.0.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("not-an-address", "malformed"),
        ("203.0.113.9", "documentation"),
    ):
        with pytest.raises(Refused, match=reason):
            playbook_call(
                env.settings, playbooks, "home", "rras-set-destination", {"destination": bad}
            )
        record = await env.run("rras-set-destination", destination=bad)  # the runner checks too
        assert record.outcome == "failed" and record.playbooks[0].error_code == "BadParams"
    assert env.rras.calls == []
    call = playbook_call(
        env.settings, playbooks, "home", "rras-set-destination", {"destination": "2603:1000::a"}
    )
    assert call.params["destination"] == "2603:1000::a"
    # documentation addresses pass where the config says so (simulator, demos)
    async for demo in environment(
        prefix, tmp_path, redis_url, detect={"allow_documentation": True}
    ):
        call = playbook_call(
            demo.settings,
            playbooks,
            "home",
            "rras-set-destination",
            {"destination": "203.0.113.9"},
        )
        assert call.params["destination"] == "203.0.113.9"


# ------------------------------------------------------------------ kemp-real-server
@pytest.fixture(params=["v1", "v2"])
async def kemp_env(
    request: pytest.FixtureRequest, prefix: str, tmp_path: Path, redis_url: str
) -> AsyncIterator[Env]:
    async for e in environment(prefix, tmp_path, redis_url, kemp_api=request.param):
        yield e


def kemp_writes(env: Env) -> int:
    counters = env.sim.kemp.counters
    return sum(counters[c] for c in ("cmd:modrs", "cmd:enablers", "cmd:disablers"))


def enabled(env: Env) -> dict[tuple[int, str], bool]:
    return {(vs.port, rs.addr): rs.enable for vs in env.sim.kemp.services for rs in vs.real_servers}


async def test_real_server_global_form_dry_run_run_rerun(kemp_env: Env) -> None:
    env = kemp_env
    plan = await env.plan("kemp-real-server", device="lm1", server="10.0.0.11", enabled=False)
    assert plan.render().splitlines() == [
        f"kemp lm1 vs {VIP}:500/udp real server 10.0.0.11:500 enabled: True -> False",
        f"kemp lm1 vs {VIP}:4500/udp real server 10.0.0.11:4500 enabled: True -> False",
    ]
    assert kemp_writes(env) == 0

    record = await env.run("kemp-real-server", device="lm1", server="10.0.0.11", enabled=False)
    assert record.outcome == "ok", record
    assert record.playbooks[0].detail == (
        "kemp lm1: real server 10.0.0.11 disabled in every virtual service"
    )
    assert env.sim.kemp.counters["cmd:disablers"] == 1 and kemp_writes(env) == 1
    assert enabled(env) == {
        (500, "10.0.0.11"): False,
        (500, "10.0.0.12"): True,
        (4500, "10.0.0.11"): False,
        (4500, "10.0.0.12"): True,
    }
    again = await env.run("kemp-real-server", device="lm1", server="10.0.0.11", enabled=False)
    assert again.outcome == "no_changes" and kemp_writes(env) == 1

    back = await env.run("kemp-real-server", device="lm1", server="10.0.0.11", enabled=True)
    assert back.outcome == "ok" and env.sim.kemp.counters["cmd:enablers"] == 1
    assert all(enabled(env).values())


async def test_real_server_in_one_virtual_service(kemp_env: Env) -> None:
    env = kemp_env
    # lm-ike's configured virtual service is VIP:4500/udp; port narrows the real server.
    plan = await env.plan(
        "kemp-real-server", device="lm-ike", server="10.0.0.12", port=4500, enabled=False
    )
    assert plan.render() == (
        f"kemp lm-ike vs {VIP}:4500/udp real server 10.0.0.12:4500 enabled: True -> False"
    )
    record = await env.run(
        "kemp-real-server", device="lm-ike", server="10.0.0.12", port=4500, enabled=False
    )
    assert record.outcome == "ok", record
    assert record.playbooks[0].detail == (
        f"kemp lm-ike: real server 10.0.0.12:4500 disabled in vs {VIP}:4500/udp"
    )
    assert env.sim.kemp.counters["cmd:modrs"] == 1 and kemp_writes(env) == 1
    assert enabled(env)[(4500, "10.0.0.12")] is False
    assert enabled(env)[(500, "10.0.0.12")] is True, "another virtual service was touched"
    again = await env.run(
        "kemp-real-server", device="lm-ike", server="10.0.0.12", port=4500, enabled=False
    )
    assert again.outcome == "no_changes" and kemp_writes(env) == 1
    # A virtual service given as a parameter wins over the device's.
    other = await env.plan(
        "kemp-real-server",
        device="lm-ike",
        server="10.0.0.12",
        enabled=False,
        virtual_service=VIP,
        vs_port=500,
        protocol="udp",
    )
    assert other.render() == (
        f"kemp lm-ike vs {VIP}:500/udp real server 10.0.0.12:500 enabled: True -> False"
    )


async def test_real_server_errors(env: Env) -> None:
    unknown = await env.run("kemp-real-server", device="lm1", server="10.9.9.9", enabled=False)
    assert unknown.outcome == "failed"
    (result,) = unknown.playbooks
    assert result.error_code == "NotFound" and not result.retry
    assert result.error == "kemp lm1: real server 10.9.9.9 is not in every virtual service"

    several = await env.run("kemp-real-server", server="10.0.0.11", enabled=False)
    assert several.playbooks[0].error_code == "NotConfigured"
    assert several.playbooks[0].error == (
        "site home: several kemp devices (lm1, lm-ike): name one (device=NAME)"
    )
    wrong_kind = await env.run("kemp-real-server", device="fw1", server="10.0.0.11", enabled=False)
    assert wrong_kind.playbooks[0].error == "site home: device 'fw1' is a sonicwall, not a kemp"
    missing = await env.run("sonicwall-preempt", device="fw9", enabled=True)
    assert missing.playbooks[0].error_code == "NotConfigured"
    assert missing.playbooks[0].error == (
        "site home: no device named 'fw9' (devices: fw1, cgf1, lm1, lm-ike, rras1)"
    )
    with pytest.raises(Refused, match="not an IP address"):
        playbook_call(
            env.settings,
            builtin(),
            "home",
            "kemp-real-server",
            {"device": "lm1", "server": "rs1.example", "enabled": False},
        )
    assert kemp_writes(env) == 0

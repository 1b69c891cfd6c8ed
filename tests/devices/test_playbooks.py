"""The device playbooks through the real runner, against the device simulators over HTTP.

For each playbook: a dry-run shows the diff and writes nothing (simulator counters), a run
converges, a rerun reports no changes and writes nothing. Faults: a busy SonicWall session
and device timeouts are transient, a SonicWall session is ended on every path, destructive
playbooks need a confirmation. Crash-resume with real worker processes is in
``test_playbook_crash.py``, RRAS and KEMP in ``test_playbooks_rras_kemp.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import build_worker
from bot.events import Event
from bot.gate import Refused, playbook_call
from bot.models import PlaybookCall
from bot.redact import Redactor
from bot.sim.arm import start_arm_sim
from playbooks import builtin
from playbooks.base import NoParams
from tests.azure_world import NEW_IP, OLD_IP, azure_settings, world
from tests.devices.playbook_env import POLICY, Env, environment, leaked
from tests.test_azure_playbooks import chain

FW = f"sonicwall fw1 policy {POLICY}"


@pytest.fixture
async def env(prefix: str, tmp_path: Path, redis_url: str) -> AsyncIterator[Env]:
    async for e in environment(prefix, tmp_path, redis_url):
        yield e


def sonicos_writes(env: Env) -> int:
    counters = env.sim.sonicos.counters
    return int(counters["changes"] + counters["commits"])


def session_free(env: Env) -> bool:
    """Nobody holds the SonicWall, and every login of ours was matched by a logout."""
    counters = env.sim.sonicos.counters
    return env.sim.sonicos.session_info() is None and counters["logins"] == counters["logouts"]


def committed(env: Env) -> dict[str, object]:
    return dict(env.sim.sonicos.committed[POLICY])


# ------------------------------------------------------------------ sonicwall-preempt
async def test_preempt_dry_run_run_rerun_and_clear(env: Env) -> None:
    plan = await env.plan("sonicwall-preempt", enabled=True, interval=90)
    assert plan.render() == f"{FW} preempt_secondary_gateway.interval: (none) -> 90"
    assert sonicos_writes(env) == 0, "a dry-run wrote"
    assert session_free(env) and env.sim.sonicos.counters["logins"] == 1

    record = await env.run("sonicwall-preempt", enabled=True, interval=90)
    assert record.outcome == "ok", record
    (result,) = record.playbooks
    assert result.detail == f"{FW}: preempt on (90s), committed"
    assert [str(c) for c in result.changes] == [plan.render()]
    assert committed(env)["preempt_secondary_gateway"] == {"interval": 90}
    assert env.sim.sonicos.counters["changes"] == 1
    assert env.sim.sonicos.counters["commits"] == 1
    assert session_free(env)

    writes = sonicos_writes(env)
    again = await env.run("sonicwall-preempt", enabled=True, interval=90)
    assert again.outcome == "no_changes"
    assert again.playbooks[0].detail == "no changes"
    assert sonicos_writes(env) == writes, "a converged policy got a write"

    # Another interval is a change; enabled=false clears it (what the failover logic sends).
    other = await env.plan("sonicwall-preempt", enabled=True, interval=30)
    assert other.render() == f"{FW} preempt_secondary_gateway.interval: 90 -> 30"
    cleared = await env.run("sonicwall-preempt", enabled=False)
    assert cleared.outcome == "ok", cleared
    assert [str(c) for c in cleared.playbooks[0].changes] == [
        f"{FW} preempt_secondary_gateway.interval: 90 -> (none)"
    ]
    assert committed(env)["preempt_secondary_gateway"] is None
    assert (await env.run("sonicwall-preempt", enabled=False)).outcome == "no_changes"
    assert session_free(env)


async def test_preempt_params_are_checked(env: Env) -> None:
    playbooks = builtin()
    for params, problem in (
        ({"enabled": True, "interval": 0}, "interval"),
        ({"enabled": True, "interval": 86401}, "interval"),
        ({"interval": 60}, "enabled"),
        ({"enabled": True, "intervall": 60}, "intervall"),
    ):
        with pytest.raises(Refused, match=problem):
            playbook_call(env.settings, playbooks, "home", "sonicwall-preempt", params)
    call = playbook_call(
        env.settings, playbooks, "home", "sonicwall-preempt", {"enabled": "true", "device": "fw1"}
    )
    assert call.params == {"enabled": True, "interval": 60, "device": "fw1"}
    assert sonicos_writes(env) == 0


# ------------------------------------------------------------------ sonicwall-keepalive
async def test_keepalive_dry_run_run_rerun(env: Env) -> None:
    plan = await env.plan("sonicwall-keepalive")
    assert plan.render() == f"{FW} keep_alive: False -> True"
    assert sonicos_writes(env) == 0

    record = await env.run("sonicwall-keepalive")
    assert record.outcome == "ok", record
    assert record.playbooks[0].detail == f"{FW}: keep-alive on, committed"
    assert committed(env)["keep_alive"] is True
    # Keep-alive holds the tunnel up without traffic: the simulated tunnel stays up idle.
    await env.control("sonicos", "POST", "/_sim/idle", {"policy": POLICY})
    assert (await env.control("sonicos", "GET", "/_sim/tunnels"))[POLICY]["active"] == "primary"

    writes = sonicos_writes(env)
    again = await env.run("sonicwall-keepalive", enabled=True)
    assert again.outcome == "no_changes" and sonicos_writes(env) == writes
    assert session_free(env)


# ------------------------------------------------------------------ faults and sessions
@pytest.mark.parametrize(
    ("status", "code", "retry"), [(400, "RequestRejected", False), (503, "DeviceUnavailable", True)]
)
async def test_sonicwall_logs_out_when_the_commit_fails(
    env: Env, status: int, code: str, retry: bool
) -> None:
    await env.fault(
        "sonicos", kind="error", method="POST", path="/config/pending", status=status, count=10
    )
    record = await env.run("sonicwall-preempt", enabled=True, interval=60)
    assert record.outcome == "failed"
    (result,) = record.playbooks
    assert result.error_code == code and result.retry is retry, result
    assert result.error and result.error.startswith("fw1: commit: HTTP")
    counters = env.sim.sonicos.counters
    assert counters["changes"] >= 1 and counters["commits"] == 0
    assert counters["pending_discarded"] == counters["changes"], "a staged change outlived us"
    assert committed(env)["preempt_secondary_gateway"] is None
    assert session_free(env), env.sim.sonicos.session_info()
    steps = [(e.step, e.phase) for e in await env.services.state.journal("home", record.run_id)]
    assert ("set-policy", "failed") in steps


async def test_a_busy_sonicwall_is_transient_and_the_admin_keeps_it(env: Env) -> None:
    await env.control("sonicos", "PUT", "/_sim/session", {"holder": "admin"})
    for name, params in (
        ("sonicwall-preempt", {"enabled": True}),
        ("sonicwall-keepalive", {}),
        ("sonicwall-reinitiate", {"force": True}),
    ):
        record = await env.run(name, confirmed=name == "sonicwall-reinitiate", **params)
        assert record.outcome == "failed", record
        (result,) = record.playbooks
        assert result.error_code == "SessionBusy" and result.retry, result
        assert result.error and "login refused (HTTP 503" in result.error
    info = env.sim.sonicos.session_info()
    assert info is not None and info["holder"] == "admin", "the administrator was kicked"
    counters = env.sim.sonicos.counters
    assert counters["login_refused"] == 3
    assert counters["kicked"] == 0 and counters["logouts"] == 0  # nothing sent after a refusal
    assert sonicos_writes(env) == 0


@pytest.mark.parametrize(
    ("kind", "name", "params"),
    [
        ("sonicos", "sonicwall-preempt", {"enabled": True}),
        ("barracuda", "barracuda-restart-vpn", {}),
        ("kemp", "kemp-real-server", {"device": "lm1", "server": "10.0.0.11", "enabled": False}),
    ],
)
async def test_device_timeouts_are_transient(
    prefix: str, tmp_path: Path, redis_url: str, kind: str, name: str, params: dict[str, object]
) -> None:
    async for env in environment(prefix, tmp_path, redis_url, device_timeout=0.5):
        # The first read after the login (or the first request at all) is held for 3 s.
        path = "/vpn/policies" if kind == "sonicos" else ".*"
        await env.fault(kind, kind="timeout", method="*", path=path, delay=3, count=1)
        record = await env.run(name, confirmed=True, **params)
        assert record.outcome == "failed", record
        (result,) = record.playbooks
        assert result.error_code == "DeviceTimeout" and result.retry, result
        assert result.error and "got no reply within 0.5s" in result.error
        if kind == "sonicos":
            assert env.sim.sonicos.counters["logouts"] == 1, "no logout after the timeout"
        assert env.sim.barracuda.counters["restarts:VPN"] == 0
        assert env.sim.kemp.counters["rs_disabled"] == 0


# ------------------------------------------------------------------ sonicwall-reinitiate
async def test_reinitiate_needs_force_without_azure_and_bounces_the_policy_once(env: Env) -> None:
    refused = await env.run("sonicwall-reinitiate")
    assert refused.outcome == "failed"
    (result,) = refused.playbooks
    assert result.error_code == "ForceRequired" and not result.retry
    assert result.error == (
        "site home has no Azure connection configured to tell whether the tunnel is up; "
        f"re-initiating {FW} needs force=true"
    )
    assert env.sim.sonicos.counters["logins"] == 0, "refused before touching the device"

    # Forcing is destructive (the tunnel may be up): without a confirmation it is refused.
    unconfirmed = await env.run("sonicwall-reinitiate", force=True)
    (result,) = unconfirmed.playbooks
    assert result.error_code == "DestructiveRefused" and not result.retry, result
    assert result.error is not None and "--confirm-destructive" in result.error
    assert env.sim.sonicos.counters["logins"] == 0, "refused before touching the device"

    plan = await env.plan("sonicwall-reinitiate", confirmed=True, force=True)
    assert plan.render() == (
        f"{FW} tunnel: unknown (no Azure connection configured) -> "
        "re-initiated (disable, commit, enable, commit)"
    )
    assert sonicos_writes(env) == 0
    record = await env.run("sonicwall-reinitiate", confirmed=True, force=True)
    assert record.outcome == "ok", record
    detail = record.playbooks[0].detail
    assert detail == f"{FW}: re-initiated (disabled and enabled again, committed)"
    assert committed(env)["enable"] is True
    counters = env.sim.sonicos.counters
    assert counters["commits"] == 2 and counters["tunnel_down"] == 1
    assert counters["tunnel_up"] == 2  # at start, and after the re-initiation
    journal = await env.services.state.journal("home", record.run_id)
    assert [e.step for e in journal if e.phase == "done"][:2] == ["disable", "enable"]
    assert session_free(env)


async def test_reinitiate_leaves_a_disabled_policy_alone_unless_forced(env: Env) -> None:
    env.sim.sonicos.committed[POLICY]["enable"] = False
    env.sim.sonicos.evaluate()
    # Forced past the Azure check, a policy an administrator disabled still needs force.
    plan = await env.plan("sonicwall-reinitiate", confirmed=True, force=True)
    assert plan.changes and plan.changes[0].field == "tunnel"
    record = await env.run("sonicwall-reinitiate", confirmed=True, force=True)
    assert record.outcome == "ok" and committed(env)["enable"] is True
    assert env.sim.sonicos.counters["commits"] == 1  # only the enable: it was disabled


async def test_reinitiate_is_converged_while_azure_says_connected(
    prefix: str, tmp_path: Path, redis_url: str
) -> None:
    w = world()
    runner, port = await start_arm_sim(w)
    azure = azure_settings(prefix, tmp_path, port)
    site = azure.sites["home"]
    try:
        async for env in environment(
            prefix,
            tmp_path,
            redis_url,
            azure=azure.azure.model_dump(mode="json"),
            site={
                "resource_group": site.resource_group,
                "local_network_gateway": site.local_network_gateway,
                "connection": site.connection,
            },
        ):
            assert w.connection_status("conn-home") == "Connected"
            plan = await env.plan("sonicwall-reinitiate")
            assert plan.converged
            assert plan.notes == [
                f"connection conn-home is Connected: {FW} is not re-initiated "
                "(force=true to do it anyway)"
            ]
            assert (await env.run("sonicwall-reinitiate")).outcome == "no_changes"
            assert env.sim.sonicos.counters["logins"] == 0, "Azure is read first"

            w.set_device("fritzbox-home", public_ip=NEW_IP)  # the tunnel drops
            status = w.connection_status("conn-home")
            assert status != "Connected"
            plan = await env.plan("sonicwall-reinitiate")
            assert plan.render() == (
                f"{FW} tunnel: connection conn-home {status} -> "
                "re-initiated (disable, commit, enable, commit)"
            )
            assert sonicos_writes(env) == 0
            record = await env.run("sonicwall-reinitiate")
            assert record.outcome == "ok", record
            assert env.sim.sonicos.counters["tunnel_down"] == 1

            w.set_device("fritzbox-home", public_ip=OLD_IP)  # back up: converged again
            assert w.connection_status("conn-home") == "Connected"
            writes = sonicos_writes(env)
            assert (await env.run("sonicwall-reinitiate")).outcome == "no_changes"
            assert sonicos_writes(env) == writes
            refused = await env.run("sonicwall-reinitiate", force=True)
            (result,) = refused.playbooks
            assert result.error_code == "DestructiveRefused", result
            assert result.error is not None
            assert "while connection conn-home is Connected is destructive" in result.error
            assert sonicos_writes(env) == writes
            forced = await env.plan("sonicwall-reinitiate", confirmed=True, force=True)
            assert forced.render().startswith(f"{FW} tunnel: connection conn-home Connected")
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ barracuda-restart-vpn
def restarts(env: Env) -> int:
    return int(env.sim.barracuda.counters["restarts:VPN"])


async def test_restart_vpn_is_destructive(env: Env) -> None:
    with pytest.raises(Refused, match="destructive"):
        playbook_call(env.settings, builtin(), "home", "barracuda-restart-vpn", {})
    record = await env.run("barracuda-restart-vpn")  # a handler's call, not confirmed
    assert record.outcome == "failed"
    assert record.playbooks[0].error_code == "DestructiveRefused"
    assert restarts(env) == 0 and env.sim.barracuda.counters["requests"] == 0


async def test_restart_vpn_dry_run_run_and_a_redelivery_restarts_once(env: Env) -> None:
    await env.control("barracuda", "PATCH", "/_sim/config", {"restart_duration": 0.6})
    plan = await env.plan("barracuda-restart-vpn")
    assert plan.render() == "barracuda cgf1 service VPN: running -> restarted"
    assert plan.notes == ["restarting VPN drops every tunnel of cgf1"]
    assert restarts(env) == 0, "a dry-run restarted"

    worker = build_worker(env.services, "t")
    event = Event.new("test.chain", "home", source="test", idempotency_key="restart-1")
    call = PlaybookCall(name="barracuda-restart-vpn", params={"interval": 0.1}, confirmed=True)
    handler = chain(call)
    handled = await worker.runner.reconcile(event, handler, NoParams())
    assert handled is not None
    record = handled.record
    assert record.outcome == "ok", record
    (result,) = record.playbooks
    assert result.detail == "barracuda cgf1 service VPN: restart restarted"
    assert [str(c) for c in result.changes] == [plan.render()]
    assert restarts(env) == 1
    # verify waited for the service to run again; every tunnel dropped and came back
    assert env.sim.barracuda.services["VPN"]["state"] == "running"
    assert env.sim.barracuda.counters["tunnel_dropped"] == 2
    tunnels = await env.control("barracuda", "GET", "/_sim/tunnels")
    assert {t["state"] for t in tunnels.values()} == {"active"}

    # The same request delivered again is not run again: nothing about a restart converges,
    # so only the run's idempotency key and journal keep it to one.
    again = await worker.runner.reconcile(event, handler, NoParams())
    assert again is None
    assert restarts(env) == 1


async def test_restart_vpn_verify_says_when_the_service_does_not_come_back(env: Env) -> None:
    await env.control("barracuda", "PATCH", "/_sim/config", {"restart_duration": 30})
    record = await env.run("barracuda-restart-vpn", confirmed=True, timeout=0.5, interval=0.1)
    assert record.outcome == "failed"
    (result,) = record.playbooks
    assert result.error_code == "VerifyFailed" and result.retry
    assert re.fullmatch(
        r"barracuda cgf1 service VPN is still restarting after waiting [01]s for it to run",
        result.error or "",
    ), result.error
    assert restarts(env) == 1


async def test_restart_of_an_unknown_service_is_permanent(env: Env) -> None:
    record = await env.run("barracuda-restart-vpn", confirmed=True, service="NOPE")
    assert record.outcome == "failed"
    (result,) = record.playbooks
    assert result.error_code == "NotFound" and not result.retry
    assert restarts(env) == 0


# ------------------------------------------------------------------ secrets
async def test_no_secret_in_journal_history_errors_or_logs(
    prefix: str, tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With a redactor that knows no secret, nothing the device playbooks write holds one:
    the redactor is a safety net, not what keeps them out."""
    caplog.set_level(logging.DEBUG)
    async for env in environment(prefix, tmp_path, redis_url, redact=Redactor([])):
        records = [
            await env.run("sonicwall-preempt", enabled=True, interval=60),
            await env.run("sonicwall-keepalive"),
            await env.run("sonicwall-reinitiate", confirmed=True, force=True),
            await env.run("barracuda-restart-vpn", confirmed=True, interval=0.1),
            await env.run("kemp-real-server", device="lm1", server="10.0.0.12", enabled=False),
            await env.run("kemp-real-server", device="lm-ike", server="10.0.0.12", enabled=True),
            await env.run("rras-set-destination", destination="20.50.1.20"),
        ]
        assert [r.outcome for r in records] == ["ok"] * len(records), records
        # failures: wrong credentials, a busy appliance, a device error quoting text
        env.sim.sonicos.password = "changed-on-the-box"
        records.append(await env.run("sonicwall-preempt", enabled=False))
        env.sim.sonicos.password = env.settings.sites["home"].devices[0].password.get_secret_value()  # type: ignore[union-attr]
        await env.control("sonicos", "PUT", "/_sim/session", {"holder": "admin"})
        records.append(await env.run("sonicwall-keepalive", enabled=False))
        env.sim.kemp.api_keys.clear()
        records.append(
            await env.run("kemp-real-server", device="lm1", server="10.0.0.12", enabled=True)
        )
        assert [r.outcome for r in records[-3:]] == ["failed"] * 3
        assert [r.playbooks[0].error_code for r in records[-3:]] == [
            "AuthenticationFailed",
            "SessionBusy",
            "AuthenticationFailed",
        ]
        texts = "\n".join([await env.texts(r) for r in records])
        assert "sonicwall fw1" in texts and "kemp lm1" in texts  # the texts are the right ones
        assert leaked(texts) == []
        assert leaked(caplog.text) == []
        assert "fw1: logged in" in caplog.text  # the driver's log lines were captured

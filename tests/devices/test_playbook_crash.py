"""SIGKILL a real worker process at each step of ``sonicwall-reinitiate`` and
``barracuda-restart-vpn``; a new worker finishes the run from the journal: the policy ends
enabled after one bounce, the VPN service is restarted once. The workers read the device
credentials from the environment (``password_env``/``token_env``) and talk to the
simulators over loopback."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bot.events import Event
from bot.services import Services
from bot.sim.devices import DevicesSim
from tests.conftest import start_worker
from tests.devices.conftest import CUDA_TOKEN, KEMP_KEY, SW_PASSWORD, SW_USER
from tests.devices.playbook_env import POLICY, leaked, start_sims
from tests.helpers import eventually

CONFIG = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
block_ms = 100

[policies]
lock_ttl = 1.5
retry_max_delay = 1.0
retry_attempts = 10

[[sites.home.devices]]
kind = "sonicwall"
name = "fw1"
url = "{sonicos}"
username = "{user}"
password_env = "TW_TEST_FW1_PASSWORD"
policy = "{policy}"
timeout = 10

[[sites.home.devices]]
kind = "barracuda"
name = "cgf1"
url = "{barracuda}"
token_env = "TW_TEST_CGF1_TOKEN"
timeout = 10
"""


def config_file(tmp_path: Path, sim: DevicesSim) -> Path:
    path = tmp_path / "tw.toml"
    path.write_text(
        CONFIG.format(
            sonicos=sim.urls["sonicos"],
            barracuda=sim.urls["barracuda"],
            user=SW_USER,
            policy=POLICY,
        )
    )
    return path


async def crash_and_resume(
    services: Services,
    procs: list[subprocess.Popen[bytes]],
    redis_url: str,
    prefix: str,
    config: Path,
    data: dict[str, Any],
    kill_when: Any,
    resume_when: Any,
    **more_env: str,
) -> tuple[Event, Any]:
    """Queue a request, start a worker, SIGKILL it once ``kill_when(journal)`` holds, start
    another once ``resume_when()`` holds; returns the event and its recorded run."""
    env = {"TW_TEST_FW1_PASSWORD": SW_PASSWORD, "TW_TEST_CGF1_TOKEN": CUDA_TOKEN, **more_env}

    def start(name: str) -> subprocess.Popen[bytes]:
        return start_worker(procs, config, redis_url, prefix, name, **env)

    event = Event.new("playbook.requested", "home", source="test", data=data)
    await services.queue.publish(event)
    first = start("first")

    async def ready() -> bool:
        return bool(await kill_when(await services.state.journal("home", event.id)))

    await eventually(ready, within=30, every=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    await eventually(resume_when, within=15, every=0.01)
    start("second")
    record = await eventually(lambda: services.state.recorded("home", event.id), within=30)
    assert record.attempt == 2 and record.worker == "second", record
    return event, record


def started(journal: list[Any], step: str) -> bool:
    return any(e.step == step and e.phase == "start" for e in journal)


def finished(journal: list[Any], step: str) -> bool:
    return any(e.step == step and e.phase == "done" for e in journal)


@pytest.mark.parametrize("step", ["disable", "enable"])
async def test_sigkill_in_each_reinitiate_step_ends_enabled_after_one_bounce(
    step: str,
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    sim = await start_sims()
    device = sim.sonicos
    try:
        # Each commit is held 1 s by the appliance, so the worker dies while its commit is
        # in flight: the commit lands after the worker is gone (the outcome it never saw).
        await _fault(sim, "sonicos", "POST", "/config/pending", count=2)
        held = 1 if step == "disable" else 2

        async def kill_when(journal: list[Any]) -> bool:
            return started(journal, step) and device.counters["faults_fired"] == held

        async def resume_when() -> bool:
            return device.counters["commits"] == held  # the orphaned commit has landed

        event, record = await crash_and_resume(
            services,
            procs,
            redis_url,
            prefix,
            config_file(tmp_path, sim),
            {
                "playbook": "sonicwall-reinitiate",
                "params": {"force": True},
                "confirm_destructive": True,
            },
            kill_when,
            resume_when,
        )
        assert record.outcome == "ok", record
        journal = await services.state.journal("home", event.id)
        assert not any(
            e.step == step and e.phase == "done" and e.worker == "first" for e in journal
        )
        assert device.committed[POLICY]["enable"] is True
        assert device.counters["commits"] == 2, "a step was repeated"
        assert device.counters["tunnel_down"] == 1, "the tunnel was bounced twice"
        assert device.session_info() is None, "the second worker left a session behind"
        done = [e.step for e in journal if e.phase == "done" and not e.step.startswith(":")]
        assert done == ["disable", "enable"] if step == "disable" else ["disable", "enable"]
        raw = b"".join(await services.redis.lrange(services.keys.journal("home", event.id), 0, -1))  # type: ignore[misc]
        assert leaked(raw.decode()) == []
    finally:
        await sim.aclose()


@pytest.mark.parametrize("phase", ["restart", "verify"])
async def test_sigkill_during_restart_vpn_never_restarts_twice(
    phase: str,
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    sim = await start_sims()
    box = sim.barracuda
    try:
        box.settings.restart_duration = 2.0  # verify waits this long for the service
        if phase == "restart":  # the restart request is held 1 s: killed while in flight
            await _fault(sim, "barracuda", "POST", "/restart$", count=1)

        async def kill_when(journal: list[Any]) -> bool:
            if phase == "restart":
                return started(journal, "restart") and box.counters["faults_fired"] == 1
            return finished(journal, "restart")  # killed while verify waits

        async def resume_when() -> bool:
            return box.counters["restarts:VPN"] == 1

        event, record = await crash_and_resume(
            services,
            procs,
            redis_url,
            prefix,
            config_file(tmp_path, sim),
            {
                "playbook": "barracuda-restart-vpn",
                "params": {"interval": 0.1},
                "confirm_destructive": True,
            },
            kill_when,
            resume_when,
        )
        assert record.outcome == "ok", record
        (result,) = record.playbooks
        if phase == "restart":
            assert result.detail == (
                "barracuda cgf1 service VPN: restart sent before (outcome unknown); not repeated"
            )
        else:
            assert result.detail == "barracuda cgf1 service VPN: restart restarted"
        assert box.counters["restarts:VPN"] == 1, "the VPN service was restarted twice"
        assert box.services["VPN"]["state"] == "running"
        assert box.counters["tunnel_dropped"] == 2  # both tunnels, once
        journal = await services.state.journal("home", event.id)
        resumed = [e for e in journal if e.step == "restart" and e.phase == "resumed"]
        assert len(resumed) == (1 if phase == "restart" else 0)
    finally:
        await sim.aclose()


async def _fault(sim: DevicesSim, kind: str, method: str, path: str, count: int) -> None:
    from bot.sim.devices.common import DeviceFaultSpec, FaultKind

    world = {"sonicos": sim.sonicos, "barracuda": sim.barracuda}[kind]
    world.faults.add(
        DeviceFaultSpec(kind=FaultKind.TIMEOUT, method=method, path=path, count=count, delay=1.0)
    )


KEMP_CONFIG = """
[[sites.home.devices]]
kind = "kemp"
name = "lm1"
url = "{kemp}"
api_key_env = "TW_TEST_LM1_KEY"
timeout = 10
"""


@pytest.mark.parametrize(
    ("playbook", "params", "field", "wanted"),
    [
        ("sonicwall-preempt", {"enabled": True, "interval": 90}, "preempt_secondary_gateway", 90),
        ("sonicwall-keepalive", {"enabled": True}, "keep_alive", True),
    ],
)
async def test_sigkill_while_a_policy_change_commits_ends_with_the_change_once(
    playbook: str,
    params: dict[str, Any],
    field: str,
    wanted: Any,
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """The worker dies while the appliance holds its commit; the commit lands without it. The
    next worker resumes the run, reads the policy again and finds nothing left to change."""
    sim = await start_sims()
    device = sim.sonicos
    try:
        assert _value(device.committed[POLICY][field]) != wanted
        await _fault(sim, "sonicos", "POST", "/config/pending", count=1)

        async def kill_when(journal: list[Any]) -> bool:
            return started(journal, "set-policy") and device.counters["faults_fired"] == 1

        async def resume_when() -> bool:
            return device.counters["commits"] == 1

        event, record = await crash_and_resume(
            services,
            procs,
            redis_url,
            prefix,
            config_file(tmp_path, sim),
            {"playbook": playbook, "params": params},
            kill_when,
            resume_when,
        )
        assert record.outcome == "ok", record
        assert _value(device.committed[POLICY][field]) == wanted
        assert device.counters["commits"] <= 2, "committed more than once per worker"
        assert device.session_info() is None, "a session was left behind"
        raw = b"".join(await services.redis.lrange(services.keys.journal("home", event.id), 0, -1))  # type: ignore[misc]
        assert leaked(raw.decode()) == []
    finally:
        await sim.aclose()


async def test_sigkill_while_a_real_server_is_disabled_resumes_without_a_second_write(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    sim = await start_sims()
    lm = sim.kemp
    try:
        lm.faults.add(_held("POST", "/access/disablers"))
        config = config_file(tmp_path, sim)
        config.write_text(config.read_text() + KEMP_CONFIG.format(kemp=sim.urls["kemp"]))

        async def kill_when(journal: list[Any]) -> bool:
            return started(journal, "disable") and lm.counters["faults_fired"] == 1

        async def resume_when() -> bool:
            return True  # whether the held command landed is the next worker's to find out

        event, record = await crash_and_resume(
            services,
            procs,
            redis_url,
            prefix,
            config,
            {
                "playbook": "kemp-real-server",
                "params": {"device": "lm1", "server": "10.0.0.11", "enabled": False},
            },
            kill_when,
            resume_when,
            TW_TEST_LM1_KEY=KEMP_KEY,
        )
        assert record.outcome == "ok", record
        states = {(vs.port, rs.addr): rs.enable for vs in lm.services for rs in vs.real_servers}
        assert states[(500, "10.0.0.11")] is False and states[(4500, "10.0.0.11")] is False
        assert states[(500, "10.0.0.12")] is True and states[(4500, "10.0.0.12")] is True
        assert lm.counters["cmd:disablers"] <= 2
        raw = b"".join(await services.redis.lrange(services.keys.journal("home", event.id), 0, -1))  # type: ignore[misc]
        assert leaked(raw.decode()) == []
    finally:
        await sim.aclose()


def _held(method: str, path: str) -> Any:
    from bot.sim.devices.common import DeviceFaultSpec, FaultKind

    return DeviceFaultSpec(kind=FaultKind.TIMEOUT, method=method, path=path, count=1, delay=1.0)


def _value(setting: Any) -> Any:
    """A policy setting as SonicOS shows it: preempt is ``{"interval": N}`` when on."""
    return setting.get("interval") if isinstance(setting, dict) else setting

"""``traffic-manager-endpoint``: our runner drives the real aio TrafficManagerManagementClient
over HTTP against the ARM simulator, with real Redis; the crash test kills real workers."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from bot.app import build_worker
from bot.events import Event
from bot.models import PlaybookCall
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.trafficmanager import endpoint_id
from bot.sim.world import World
from playbooks.azure.traffic_manager import EndpointState, TmTarget, endpoint_state
from tests.azure_world import RG, SUB, azure_settings, seed
from tests.conftest import start_worker
from tests.helpers import eventually
from tests.test_azure_playbooks import execute

PROFILE = "tm-aovpn"
EXT = "ExternalEndpoints"
HOME = endpoint_id(SUB, RG, PROFILE, EXT, "ep-home")
BRANCH = endpoint_id(SUB, RG, PROFILE, EXT, "ep-branch")
SITE_TM = {"resource_group": RG, "profile": PROFILE, "endpoint": "ep-home"}
LABEL = f"tm endpoint {PROFILE}/ep-home"


def tm_world() -> World:
    """The one-site Azure world plus a multisite profile: the site's endpoint and another."""
    data = seed()
    data["traffic_manager_profiles"] = [
        {
            "resource_group": RG,
            "name": PROFILE,
            "routing_method": "Priority",
            "relative_name": "aovpn-contoso",
            "endpoints": [
                {
                    "name": "ep-home",
                    "target": "home.example.net",
                    "priority": 1,
                    "weight": 10,
                    "endpoint_location": "West Europe",
                    "properties": {
                        "customHeaders": [{"name": "host", "value": "vpn.contoso.example"}],
                        "alwaysServe": "Disabled",
                    },
                },
                {"name": "ep-branch", "target": "branch.example.net", "priority": 2},
            ],
        }
    ]
    return World.from_seed(data)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[World, int]]:
    w = tm_world()
    runner, port = await start_arm_sim(w)
    try:
        yield w, port
    finally:
        await runner.cleanup()


async def open_services(
    prefix: str, tmp_path: Path, port: int, redis_url: str, site: dict[str, Any] | None = None
) -> Services:
    home = {"traffic_manager": SITE_TM} if site is None else site
    settings = azure_settings(prefix, tmp_path, port, sites={"home": home})
    return Services.build(settings, Redis.from_url(redis_url))


@pytest.fixture
async def az(
    sim: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> AsyncIterator[Services]:
    services = await open_services(prefix, tmp_path, sim[1], redis_url)
    try:
        yield services
    finally:
        await services.azure.close()
        await services.redis.aclose()


def tm(enabled: bool, **params: Any) -> PlaybookCall:
    return PlaybookCall(
        name="traffic-manager-endpoint",
        params={"enabled": enabled, "timeout": 10, "interval": 0.05, **params},
    )


def endpoint(w: World, name: str = "ep-home") -> dict[str, Any]:
    (profile,) = w.dump()["trafficManager"]
    found: dict[str, Any] = next(e for e in profile["properties"]["endpoints"] if e["name"] == name)
    return found


def settings_of(ep: dict[str, Any]) -> dict[str, Any]:
    """Everything of an endpoint but the status the playbook sets and the one it causes."""
    props = {
        k: v
        for k, v in ep["properties"].items()
        if k not in ("endpointStatus", "endpointMonitorStatus")
    }
    return {**{k: v for k, v in ep.items() if k != "properties"}, "properties": props}


def profile_settings(w: World) -> dict[str, Any]:
    (profile,) = w.dump()["trafficManager"]
    props = {k: v for k, v in profile["properties"].items() if k != "endpoints"}
    props["monitorConfig"] = {
        k: v for k, v in props["monitorConfig"].items() if k != "profileMonitorStatus"
    }
    return {**{k: v for k, v in profile.items() if k not in ("properties", "sim")}, **props}


def writes(w: World) -> int:
    return int(w.counters.totals().writes)


def disable_home(w: World) -> None:
    w.traffic_manager.patch_endpoint(
        SUB, RG, PROFILE, EXT, "ep-home", {"properties": {"endpointStatus": "Disabled"}}
    )


async def test_dry_run_run_and_rerun(sim: tuple[World, int], az: Services) -> None:
    w, _ = sim
    before, branch, profile = (
        settings_of(endpoint(w)),
        endpoint(w, "ep-branch"),
        profile_settings(w),
    )
    worker = build_worker(az, "t")

    plan = await worker.runner.plan("home", tm(False))
    assert plan.render() == f"{LABEL} endpointStatus: Enabled -> Disabled"
    assert plan.notes == [f"{LABEL} endpointMonitorStatus: Online"]
    assert writes(w) == 0, "dry-run wrote"

    record = await execute(az, tm(False))
    assert record.outcome == "ok", record
    assert [str(c) for c in record.playbooks[0].changes] == [
        f"{LABEL} endpointStatus: Enabled -> Disabled"
    ]
    assert record.playbooks[0].detail == f"{LABEL} endpointStatus Disabled (monitor: Disabled)"
    ep = endpoint(w)
    assert ep["properties"]["endpointStatus"] == "Disabled"
    assert ep["properties"]["endpointMonitorStatus"] == "Disabled"
    assert writes(w) == 1 and w.counters.writes(HOME) == 1
    assert settings_of(ep) == before, "other endpoint settings changed"
    assert endpoint(w, "ep-branch") == branch and profile_settings(w) == profile
    steps = [(e.step, e.phase) for e in await az.state.journal("home", record.run_id)]
    assert ("set-endpoint-status", "done") in steps

    again = await execute(az, tm(False))
    assert again.outcome == "no_changes"
    assert writes(w) == 1, "a converged endpoint got a write"
    assert w.counters.totals().redundant == 0
    assert (await worker.runner.plan("home", tm(False))).render() == "no changes"


async def test_enabling_waits_until_traffic_manager_says_online(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    disable_home(w)
    w.configure(tm_probe_delay=0.6)  # the first probe after enabling takes a while
    began = time.monotonic()

    record = await execute(az, tm(True))

    assert record.outcome == "ok", record
    assert time.monotonic() - began >= 0.6, "verify did not wait for the first probe"
    # The PATCH's answer still said CheckingEndpoint; verify read until Online.
    assert "(monitor: CheckingEndpoint)" in record.playbooks[0].detail
    assert endpoint(w)["properties"]["endpointMonitorStatus"] == "Online"
    assert w.counters.reads(HOME) >= 4, "verify sampled the endpoint"


async def test_an_endpoint_that_stays_degraded_fails_with_the_reason(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    disable_home(w)
    w.set_endpoint_health(f"{PROFILE}/ep-home", False)

    record = await execute(az, tm(True, timeout=0.4))

    assert record.outcome == "failed"
    result = record.playbooks[0]
    assert result.error_code == "VerifyFailed" and result.retry
    assert f"{LABEL} is Degraded after 0." in (result.error or "")
    assert "health probes" in (result.error or "") and "home.example.net" in (result.error or "")
    assert endpoint(w)["properties"]["endpointStatus"] == "Enabled", "the change was made"

    # Its status is converged now; once the probes succeed it is simply Online.
    w.set_endpoint_health(f"{PROFILE}/ep-home", True)
    assert (await execute(az, tm(True))).outcome == "no_changes"
    assert endpoint(w)["properties"]["endpointMonitorStatus"] == "Online"


async def test_throttling_and_server_errors_are_retried_by_azure_core(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    w.add_fault(kind="throttle", method="PATCH", path="externalEndpoints", count=2, retry_after=0.3)
    w.add_fault(kind="error", method="PATCH", path="externalEndpoints", status=500)
    w.add_fault(kind="error", method="GET", path="externalEndpoints", status=503, count=2)
    began = time.monotonic()

    record = await execute(az, tm(False))

    assert record.outcome == "ok", record
    assert time.monotonic() - began >= 0.6, "Retry-After was not honoured"
    counter = w.counters.get(HOME)
    assert (counter.writes, counter.faults) == (4, 5)  # 2 throttled, 1 failed, 1 through
    assert counter.redundant == 0
    assert endpoint(w)["properties"]["endpointStatus"] == "Disabled"
    journal = await az.state.journal("home", record.run_id)
    phases = [e.phase for e in journal if e.step == "set-endpoint-status"]
    assert phases == ["start", "done"], "azure-core's retries did not absorb the faults"


async def test_a_storm_longer_than_azure_cores_budget_is_read_and_planned_again(
    sim: tuple[World, int], az: Services
) -> None:
    """azure-core retries a status at most 3 times (retry_status): the fourth 429 fails the
    step, the runner reads the endpoint, plans again and applies once more."""
    w, _ = sim
    w.add_fault(kind="throttle", method="PATCH", path="externalEndpoints", count=4, retry_after=0.1)

    record = await execute(az, tm(False))

    assert record.outcome == "ok", record
    assert endpoint(w)["properties"]["endpointStatus"] == "Disabled"
    counter = w.counters.get(HOME)
    assert (counter.writes, counter.faults, counter.redundant) == (5, 4, 0)
    journal = await az.state.journal("home", record.run_id)
    phases = [e.phase for e in journal if e.step == "set-endpoint-status"]
    assert phases == ["start", "failed", "start", "done"]


async def test_a_lost_answer_is_judged_by_reading_again(
    sim: tuple[World, int], az: Services
) -> None:
    """Every answer to the PATCH is lost (504) while the change stands: azure-core's retries
    give up, and the runner reads and plans again instead of sending the write once more."""
    w, _ = sim
    w.add_fault(kind="lost_operation", method="PATCH", path="ep-home", count=50)
    # azure-core re-sends an answer-less 504 up to retry_status times (its default: 3).
    retries = min(az.settings.azure.retry_total, 3)

    record = await execute(az, tm(False))

    assert record.outcome == "ok", record
    assert endpoint(w)["properties"]["endpointStatus"] == "Disabled"
    counter = w.counters.get(HOME)
    assert counter.writes == retries + 1, "the playbook re-sent the write itself"
    assert counter.redundant == retries
    phases = [
        e.phase for e in await az.state.journal("home", record.run_id) if e.step != ":playbook"
    ]
    assert phases == ["start", "failed"]


async def test_parameters_override_the_site_and_errors_fail_fast(
    sim: tuple[World, int], az: Services, prefix: str, tmp_path: Path, redis_url: str
) -> None:
    w, port = sim
    record = await execute(az, tm(False, endpoint="ep-branch", endpoint_type=EXT))
    assert record.outcome == "ok", record
    assert endpoint(w, "ep-branch")["properties"]["endpointStatus"] == "Disabled"
    assert endpoint(w)["properties"]["endpointStatus"] == "Enabled"

    missing = await execute(az, tm(False, endpoint="ep-nowhere"))
    assert missing.outcome == "failed"
    assert missing.playbooks[0].error_code == "ResourceNotFound"
    assert not missing.playbooks[0].retry and missing.duration_s < 2

    bare = await open_services(prefix, tmp_path, port, redis_url, site={})
    try:
        unset = await execute(bare, tm(False))
        named = await execute(bare, tm(False, resource_group=RG, profile=PROFILE))
        given = await execute(
            bare, tm(False, resource_group=RG, profile=PROFILE, endpoint="ep-home")
        )
    finally:
        await bare.azure.close()
        await bare.redis.aclose()
    assert unset.playbooks[0].error_code == "NotConfigured"
    assert "sites.home.traffic_manager.profile" in (unset.playbooks[0].error or "")
    assert named.playbooks[0].error_code == "NotConfigured"
    assert "traffic_manager.endpoint" in (named.playbooks[0].error or "")
    assert given.outcome == "ok", given
    assert endpoint(w)["properties"]["endpointStatus"] == "Disabled"


async def test_endpoint_state_reads_the_monitor_status(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    ctx = build_worker(az, "t").runner.context("home", "read", 0, [], lock=None)
    assert await endpoint_state(ctx) == EndpointState("Enabled", "Online", "home.example.net")
    w.set_endpoint_health(f"{PROFILE}/ep-branch", False)
    branch = TmTarget(RG, PROFILE, "ep-branch", EXT)
    state = await endpoint_state(ctx, branch)
    assert (state.monitor_status, state.online) == ("Degraded", False)
    assert writes(w) == 0


CONFIG = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
block_ms = 100

[policies]
lock_ttl = 1.5
retry_max_delay = 1.0
retry_attempts = 10

[azure]
cloud = "sim"
endpoint = "http://127.0.0.1:{port}"
subscription_id = "{sub}"
polling_interval = 0.2
retry_backoff_factor = 1.0

[sites.home.traffic_manager]
resource_group = "{rg}"
profile = "{profile}"
endpoint = "ep-home"
"""


@pytest.mark.parametrize("when", ["before-the-write", "after-the-write"])
async def test_sigkill_in_the_step_resumes_from_the_journal(
    when: str,
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Kill a real worker inside the journaled step: while its PATCH waits out a 429 (not
    applied yet), or after the PATCH went through but its answer was lost (azure-core is
    backing off before sending it again). A new worker finishes with the endpoint Disabled
    and nothing else changed."""
    w = tm_world()
    if when == "before-the-write":
        w.add_fault(kind="throttle", method="PATCH", path="ep-home", retry_after=3)
    else:  # two lost answers: the second retry waits retry_backoff_factor * 2 = 2 s
        w.add_fault(kind="lost_operation", method="PATCH", path="ep-home", count=3)
    runner, port = await start_arm_sim(w)
    try:
        before = settings_of(endpoint(w))
        config = tmp_path / "tw.toml"
        config.write_text(CONFIG.format(port=port, sub=SUB, rg=RG, profile=PROFILE))
        key = Fernet.generate_key().decode()

        def start(name: str) -> subprocess.Popen[bytes]:
            return start_worker(
                procs, config, redis_url, prefix, name, TUNNELWARDEN_SECURITY__JOURNAL_KEY=key
            )

        event = Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={"playbook": "traffic-manager-endpoint", "params": {"enabled": False}},
        )
        await services.queue.publish(event)
        first = start("first")

        async def in_step() -> bool:
            journal = await services.state.journal("home", event.id)
            started = any(e.step == "set-endpoint-status" and e.phase == "start" for e in journal)
            counter = w.counters.get(HOME)
            sent = counter.faults >= (1 if when == "before-the-write" else 2)
            return started and sent

        await eventually(in_step, within=30, every=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        journal = await services.state.journal("home", event.id)
        assert not any(e.step == "set-endpoint-status" and e.phase == "done" for e in journal)
        applied = endpoint(w)["properties"]["endpointStatus"]
        assert applied == ("Enabled" if when == "before-the-write" else "Disabled")

        start("second")
        record = await eventually(lambda: services.state.recorded("home", event.id), within=30)

        assert record.outcome == "ok", record
        assert record.attempt == 2 and record.worker == "second"
        ep = endpoint(w)
        assert ep["properties"]["endpointStatus"] == "Disabled"
        assert settings_of(ep) == before
        assert endpoint(w, "ep-branch")["properties"]["endpointStatus"] == "Enabled"
        # before: the throttled PATCH and the resumed one; after: the two the first worker
        # sent (both applied) and none from the second, which found the change made.
        assert w.counters.writes(HOME) == 2
        assert [r.run_id for r in await services.state.history("home", 10)] == [event.id]
    finally:
        await runner.cleanup()


async def test_a_wait_that_times_out_gives_back_the_last_value_read() -> None:
    """What verify reports from: the last sample itself (not wrapped in another Waited)."""
    from bot.retry import sample_until

    reads: list[str] = []

    async def read() -> str:
        reads.append("Degraded")
        return "Degraded"

    waited = await sample_until(read, lambda s: s == "Online", within=0.1, every=0.02)
    assert (waited.done, waited.value, waited.error) == (False, "Degraded", None)
    assert len(reads) >= 2

"""Azure playbooks: our worker drives the real aio SDK over HTTP against the ARM simulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.app import build_worker
from bot.events import Event
from bot.models import Decision, PlaybookCall, RunRecord
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.world import World
from handlers.base import Handler, SiteView
from playbooks.base import NoParams
from tests.azure_world import (
    CONNECTION_SETTINGS,
    NEW_IP,
    OLD_IP,
    SHARED_KEY,
    azure_settings,
    world,
)

LNG = "lng-home"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[World, int]]:
    w = world()
    runner, port = await start_arm_sim(w)
    try:
        yield w, port
    finally:
        await runner.cleanup()


@pytest.fixture
async def az(
    sim: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> AsyncIterator[Services]:
    settings = azure_settings(prefix, tmp_path, sim[1])
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    try:
        yield services
    finally:
        await services.azure.close()
        await client.aclose()


def lng_of(w: World) -> dict[str, Any]:
    return next(r for r in w.dump()["resources"] if r["name"] == LNG)


def connections(w: World) -> list[dict[str, Any]]:
    return [r for r in w.dump()["resources"] if r["type"].endswith("/connections")]


def settings_of(conn: dict[str, Any]) -> dict[str, Any]:
    keep = set(CONNECTION_SETTINGS) | {
        "localNetworkGateway2",
        "virtualNetworkGateway1",
        "connectionType",
    }
    props = {k: v for k, v in conn["properties"].items() if k in keep}
    return {
        "properties": props,
        "tags": conn.get("tags"),
        "sharedKey": conn["sim"]["sharedKey"],
        "id": conn["id"],
        "location": conn["location"],
    }


def writes(w: World) -> int:
    return int(w.counters.totals().writes)


def chain(*calls: PlaybookCall) -> Handler:
    """A handler that decides exactly these playbooks (the runner's input, as a test sets it)."""

    async def decide(event: Event, data: NoParams, view: SiteView) -> Decision:
        return Decision(playbooks=list(calls), reason="test")

    return Handler("test.chain", NoParams, decide)


async def execute(services: Services, *calls: PlaybookCall) -> RunRecord:
    worker = build_worker(services, "t")
    event = Event.new("test.chain", "home", source="test", idempotency_key=uuid.uuid4().hex)
    handled = await worker.runner.reconcile(event, chain(*calls), NoParams())
    assert handled is not None
    return handled.record


def update(ip: str = NEW_IP) -> PlaybookCall:
    return PlaybookCall(name="update-local-gateway", params={"ip": ip})


def recreate(ip: str = NEW_IP, confirmed: bool = True) -> PlaybookCall:
    return PlaybookCall(name="recreate-connection", params={"ip": ip}, confirmed=confirmed)


VERIFY = PlaybookCall(name="verify-tunnel", params={"timeout": 10, "interval": 0.05})


async def test_in_place_update_brings_the_tunnel_back(sim: tuple[World, int], az: Services) -> None:
    w, _ = sim
    assert w.connection_status("conn-home") == "Connected"
    before = settings_of(connections(w)[0])
    w.set_device("fritzbox-home", public_ip=NEW_IP)  # the router got a new IP
    assert w.connection_status("conn-home") == "NotConnected"

    record = await execute(az, update(), VERIFY)

    assert record.outcome == "ok", record
    assert [str(c) for c in record.playbooks[0].changes] == [
        f"lng {LNG} gatewayIpAddress: {OLD_IP} -> {NEW_IP}"
    ]
    lng = lng_of(w)
    assert lng["properties"]["gatewayIpAddress"] == NEW_IP
    assert lng["properties"]["localNetworkAddressSpace"]["addressPrefixes"] == [
        "192.168.178.0/24",
        "192.168.179.0/24",
    ]
    assert lng["properties"]["bgpSettings"]["asn"] == 65010
    assert w.connection_status("conn-home") == "Connected"
    (conn,) = connections(w)
    assert settings_of(conn) == before, "in-place must leave the connection alone"


async def test_second_run_and_dry_run_make_no_writes(sim: tuple[World, int], az: Services) -> None:
    w, _ = sim
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    worker = build_worker(az, "t")
    plan = await worker.runner.plan("home", update())
    assert plan.render() == f"lng {LNG} gatewayIpAddress: {OLD_IP} -> {NEW_IP}"
    assert writes(w) == 0, "dry-run wrote"

    await execute(az, update())
    after_first = writes(w)
    assert after_first == 1

    second = await execute(az, update())
    assert second.outcome == "no_changes"
    assert second.playbooks[0].detail == "no changes"
    assert writes(w) == after_first, "a converged target got a write"
    assert (await worker.runner.plan("home", update())).render() == "no changes"


async def test_recreate_preserves_every_setting_and_keeps_the_key_out_of_the_journal(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    before = settings_of(connections(w)[0])
    w.set_device("fritzbox-home", public_ip=NEW_IP)

    record = await execute(az, recreate(), VERIFY)

    assert record.outcome == "ok", record
    (conn,) = connections(w)
    assert settings_of(conn) == before
    assert lng_of(w)["properties"]["gatewayIpAddress"] == NEW_IP
    assert w.connection_status("conn-home") == "Connected"
    journal = await az.redis.lrange(az.keys.journal("home", record.run_id), 0, -1)  # type: ignore[misc]
    raw = b"".join(journal)
    assert b"snapshot" in raw and SHARED_KEY.encode() not in raw
    steps = [e.step for e in await az.state.journal("home", record.run_id) if e.phase == "done"]
    assert steps[:4] == ["snapshot", "delete-connection", "update-lng", "create-connection"]


async def test_recreate_refuses_without_a_journal_key(
    sim: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> None:
    w, port = sim
    settings = azure_settings(prefix, tmp_path, port)
    settings.security.journal_key = None
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    try:
        plan = await build_worker(services, "t").runner.plan("home", recreate())
        assert "recreate needs security.journal_key" in plan.notes[0]
        record = await execute(services, recreate())
    finally:
        await services.azure.close()
        await client.aclose()
    assert record.outcome == "failed"
    assert record.playbooks[0].error_code == "JournalKeyMissing"
    assert len(connections(w)) == 1 and writes(w) == 0


async def test_throttling_storm_is_survived_with_retry_after(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    w.add_fault(
        kind="throttle", method="PUT", path="localNetworkGateways", count=3, retry_after=0.1
    )
    record = await execute(az, update(), VERIFY)
    assert record.outcome == "ok", record
    assert lng_of(w)["properties"]["gatewayIpAddress"] == NEW_IP
    # Three throttled PUTs (azure-core honoured each Retry-After) and one that went through.
    counter = w.counters.get(lng_of(w)["id"].lower())
    assert (counter.writes, counter.faults) == (4, 3)
    assert len(record.playbooks[0].changes) == 1


async def test_a_busy_resource_is_tried_again(sim: tuple[World, int], az: Services) -> None:
    w, _ = sim
    w.add_fault(
        kind="error",
        method="PUT",
        path="localNetworkGateways",
        count=2,
        status=409,
        code="AnotherOperationInProgress",
        message="busy",
    )
    record = await execute(az, update())
    assert record.outcome == "ok", record
    assert w.counters.get(lng_of(w)["id"].lower()).writes == 3


async def test_failed_lro_and_permanent_errors_are_reported(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    w.add_fault(
        kind="fail_lro",
        method="PUT",
        path="localNetworkGateways",
        count=10,
        code="InternalServerError",
        message="gateway update failed",
    )
    failed = await execute(az, update())
    assert failed.outcome == "failed"
    assert "gateway update failed" in (failed.playbooks[0].error or "")
    assert failed.playbooks[0].retry, "a failed operation is worth a later reconcile"
    w.faults.clear()

    w.add_fault(
        kind="error",
        method="GET",
        path="localNetworkGateways",
        status=403,
        code="AuthorizationFailed",
        message="no read permission",
    )
    denied = await execute(az, update(ip="203.0.113.99"))
    assert denied.outcome == "failed"
    assert denied.playbooks[0].error_code == "AuthorizationFailed"
    assert not denied.playbooks[0].retry, "a 403 needs a person, not a retry"
    assert w.counters.get(lng_of(w)["id"].lower()).reads >= 1


async def test_missing_resource_fails_fast_with_the_arm_code(
    sim: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> None:
    _, port = sim
    settings = azure_settings(prefix, tmp_path, port)
    settings.sites["home"].local_network_gateway = "lng-missing"
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    try:
        record = await execute(services, update())
    finally:
        await services.azure.close()
        await client.aclose()
    assert record.outcome == "failed"
    assert record.playbooks[0].error_code == "ResourceNotFound"
    assert record.duration_s < 2, "a 404 must not be retried"


async def test_reset_connection_brings_back_a_dropped_tunnel(
    sim: tuple[World, int], az: Services
) -> None:
    w, _ = sim
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    assert w.connection_status("conn-home") == "NotConnected"

    down = await execute(
        az, PlaybookCall(name="verify-tunnel", params={"timeout": 0.2, "interval": 0.05})
    )
    assert down.outcome == "failed"
    assert down.playbooks[0].error_code == "VerifyFailed"
    assert "connection conn-home is NotConnected" in (down.playbooks[0].error or "")
    assert f"points at {OLD_IP}" in (down.playbooks[0].error or "")

    reset = await execute(
        az, PlaybookCall(name="reset-connection", params={"timeout": 5, "interval": 0.05})
    )
    assert reset.outcome == "ok", reset
    assert w.connection_status("conn-home") == "Connected"
    # Connected already: a second reset request changes nothing.
    again = await execute(az, PlaybookCall(name="reset-connection"))
    assert again.outcome == "no_changes"


async def test_cli_against_a_hand_started_simulator(
    prefix: str, tmp_path: Path, redis_url: str
) -> None:
    """The CLI lines of the issue, against `tunnelwarden sim arm`; resources made by ARM PUTs."""
    import socket
    import subprocess

    import aiohttp

    from tests.azure_world import RG, SUB
    from tests.conftest import cli_env, tunnelwarden

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim_proc = await asyncio.create_subprocess_exec(
        *tunnelwarden(),
        "sim",
        "arm",
        "--port",
        str(port),
        "--retry-after",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    root = f"http://127.0.0.1:{port}"
    base = f"{root}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network"
    q = "?api-version=2024-05-01"
    gw = {"location": "westeurope", "properties": {"gatewayType": "Vpn", "vpnType": "RouteBased"}}
    lng = {
        "location": "westeurope",
        "properties": {
            "gatewayIpAddress": OLD_IP,
            "localNetworkAddressSpace": {"addressPrefixes": ["192.168.178.0/24"]},
        },
    }
    try:
        assert sim_proc.stdout is not None
        banner = (await sim_proc.stdout.readline()).decode()
        assert f"listening on {root}" in banner
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer anything"}) as http:
            async with http.post(
                f"{root}/_sim/resource-groups", json={"subscription": SUB, "name": RG}
            ) as resp:
                assert resp.status in (200, 201), await resp.text()
            for path, body in (
                (f"/virtualNetworkGateways/vpngw{q}", gw),
                (f"/localNetworkGateways/{LNG}{q}", lng),
            ):
                async with http.put(base + path, json=body) as resp:
                    assert resp.status in (200, 201), await resp.text()
            async with http.post(f"{root}/_sim/operations/complete") as resp:
                assert resp.status == 200

            async def total_writes() -> int:
                async with http.get(f"{root}/_sim/counters") as resp:
                    counters = await resp.json()
                return sum(c["writes"] for c in counters.values())

            config = tmp_path / "tw.toml"
            config.write_text(
                f'[azure]\ncloud = "sim"\nendpoint = "{root}"\n'
                f'subscription_id = "{SUB}"\npolling_interval = 0\n\n'
                f'[sites.home]\nresource_group = "{RG}"\nlocal_network_gateway = "{LNG}"\n'
                f'connection = "conn-home"\n'
            )
            env = cli_env(redis_url, prefix)
            args = [
                *tunnelwarden(),
                "--config",
                str(config),
                "playbook",
                "run",
                "update-local-gateway",
                "--site",
                "home",
                "--param",
                f"ip={NEW_IP}",
            ]

            def run(*extra: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*args, *extra],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )

            assert await total_writes() == 2  # our two set-up PUTs
            dry = await asyncio.to_thread(run, "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert f"lng {LNG} gatewayIpAddress: {OLD_IP} -> {NEW_IP}" in dry.stdout
            assert await total_writes() == 2, "dry-run wrote"
            done = await asyncio.to_thread(run)
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.startswith("ok ")
            assert await total_writes() == 3
            again = await asyncio.to_thread(run)
            assert again.returncode == 0
            assert "no changes" in again.stdout
            assert await total_writes() == 3, "a converged run wrote"
            dry_again = await asyncio.to_thread(run, "--dry-run")
            assert "no changes" in dry_again.stdout
    finally:
        sim_proc.terminate()
        await sim_proc.wait()

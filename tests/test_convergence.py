"""Convergence: events are hints, the desired state is the truth, failed sites come back.

One regression test per defect of the convergence issue, each against a real Redis and the
ARM simulator with its fault injection. The bot runs in this event loop (HTTP server,
worker and scheduler, as ``tunnelwarden run`` assembles them); routers are HTTP clients.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

import handlers
from bot.app import build_worker
from bot.events import Event
from bot.models import PlaybookCall, RunRecord
from bot.services import Services
from bot.sim.world import World
from handlers.site import Reconcile
from tests.azure_world import NEW_IP, OLD_IP
from tests.helpers import eventually
from tests.test_azure_playbooks import connections, execute, lng_of, update, writes
from tests.test_ip_change_e2e import Bot, Receiver, push, receiver, running_bot

__all__ = ["receiver"]  # the fixture, re-exported for pytest

BAD_IP = "203.0.113.20"


def lng_ip(w: World) -> str:
    return str(lng_of(w)["properties"]["gatewayIpAddress"])


def lng_writes(w: World) -> int:
    return w.counters.get(lng_of(w)["id"]).writes


async def converged(bot: Bot, ip: str) -> bool:
    state = await bot.services.state.site_state("home")
    return (
        lng_ip(bot.world) == ip
        and bot.world.connection_status("conn-home") == "Connected"
        and state.get("reconcile.status") == "converged"
        and state.get("reconcile.seq") == state.get("ip.v4.seq")
    )


async def until_converged(bot: Bot, ip: str, within: float = 30) -> None:
    await eventually(lambda: converged(bot, ip), within=within, every=0.05)


# --- defect 1: a stale "already applied" -------------------------------------------------


async def test_pushing_the_old_address_again_converges_after_faults_without_another_push(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """Device at .7, push .7; push .20 (LNG moves, tunnel down); push .7 again while ARM
    fails: once the faults clear, the scheduler converges the site to .7 by itself.

    Resets are neither limited nor cooled down here: with the defaults, the reset sent for
    .20 holds the site's next visit until its cool-down ends (5 min), even after a failed LNG
    write (see test_a_failed_lng_write_is_retried_with_backoff_while_resets_are_held)."""
    async with running_bot(
        tmp_path,
        prefix,
        redis_url,
        receiver,
        retry_base_delay=0.3,
        retry_max_delay=1.0,
        reset_cooldown=0,
        max_resets_per_hour=0,
    ) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await until_converged(bot, NEW_IP)

        assert await push(bot.base, BAD_IP) == f"good {BAD_IP}"  # a wrong report
        await eventually(lambda: _status(bot, "retrying"), within=20)
        assert lng_ip(w) == BAD_IP and w.connection_status("conn-home") == "NotConnected"

        # ARM fails every write for a while: more than azure-core's retries and the run's
        # own re-plans can absorb, so the run fails (transiently).
        w.add_fault(kind="error", method="PUT", path="localNetworkGateways", count=14, status=503)
        pushed = time.time()
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await until_converged(bot, NEW_IP, within=40)
        assert not w.faults.rules(), "the faults were all spent"

        # The first run that read observation 3 met the faults. Usually that is the push's
        # own hint; but the site keeps retrying .20 meanwhile, and when such a retry holds
        # the lock as the hint arrives, the hint is folded into the reconcile the site is
        # owed (a scheduler run). Either way, the run that met the faults failed transiently,
        # and a later run of the scheduler converged the site: no second push.
        runs = await bot.services.state.history("home", 50)
        toward = [r for r in reversed(runs) if r.started_at >= pushed and _targets(r, NEW_IP)]
        first, last = toward[0], toward[-1]
        assert first.outcome == "failed", toward
        assert first.playbooks[0].playbook == "update-local-gateway"
        assert first.playbooks[0].retry and first.retry_at is not None
        pushed_runs = [r for r in toward if r.event_type == "ip.changed"]
        assert pushed_runs in ([], [first]), "the push's hint ran first, or was folded"
        assert all(r.outcome == "failed" for r in toward[:-1])
        assert last is runs[0] and last.outcome == "ok" and last.event_source == "scheduler"
        # Converged: the same address again is nochg and Azure is not written.
        before = lng_writes(w)
        assert await push(bot.base, NEW_IP) == f"nochg {NEW_IP}"
        await asyncio.sleep(0.5)
        assert lng_writes(w) == before
        assert w.counters.totals().redundant == 0


async def test_a_failed_lng_write_is_retried_with_backoff_while_resets_are_held(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(
        tmp_path, prefix, redis_url, receiver, retry_base_delay=0.3, retry_max_delay=1.0
    ) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await until_converged(bot, NEW_IP)
        assert await push(bot.base, BAD_IP) == f"good {BAD_IP}"  # LNG moves; a reset is sent
        await eventually(lambda: _attempt(bot, 2), within=20)  # its first retry: resets held
        w.add_fault(kind="error", method="PUT", path="localNetworkGateways", count=14, status=503)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await eventually(lambda: _attempt(bot, 3), within=20)  # the LNG write failed
        state = await bot.services.state.site_state("home")
        assert "ServiceUnavailable" in state["reconcile.error"]
        due = await bot.services.scheduler.due_at("site.reconcile", "home")
        assert due is not None and due <= time.time() + 1.2 * 1.0 + 1, "backoff, not cool-down"


def _targets(record: RunRecord, ip: str) -> bool:
    """The run converged (or tried to) towards ``ip``: the push's hint for observation 3,
    or a scheduler run that read it ("retry 2: LNG at ...")."""
    return f"-> {ip} (observation 3)" in record.reason or f"LNG at {ip}" in record.reason


async def _status(bot: Bot, status: str) -> bool:
    return (await bot.services.state.site_state("home")).get("reconcile.status") == status


# --- defect 2: a transient failure is not final ------------------------------------------


async def test_arm_down_during_a_change_is_retried_until_it_converges(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(
        tmp_path, prefix, redis_url, receiver, retry_base_delay=5, retry_max_delay=5
    ) as bot:
        w = bot.world
        await bot.arm_down()
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await eventually(lambda: _attempt(bot, 1), within=20)
        state = await bot.services.state.site_state("home")
        assert state["reconcile.status"] == "retrying"
        assert "Cannot connect" in state["reconcile.error"]
        # The router pushes again meanwhile: nochg for it, and the site is looked at again
        # at once (not only when its backoff of ~5 s ends).
        pushed = time.time()
        assert await push(bot.base, NEW_IP) == f"nochg {NEW_IP}"
        await eventually(lambda: _attempt(bot, 2), within=3)
        assert time.time() - pushed < 3
        # ARM comes back: the next retry converges the site, with no further push.
        await bot.arm_up()
        await until_converged(bot, NEW_IP, within=30)
        # One message for the outage, one when it converged: not one per retry.
        await eventually(lambda: _count(receiver.posts, 2), within=10)
        await asyncio.sleep(1.0)
        assert [p["severity"] for p in receiver.posts] == ["error", "info"]
        assert "applied" in receiver.posts[1]["title"]


async def _attempt(bot: Bot, n: int) -> bool:
    state = await bot.services.state.site_state("home")
    return int(state.get("reconcile.attempt") or 0) >= n


async def _count(items: list[object], n: int) -> bool:
    return len(items) >= n


# --- defect 3: concurrent pushes and late redeliveries -------------------------------------


async def test_concurrent_pushes_converge_on_the_last_observation_and_old_hints_are_superseded(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(
        tmp_path, prefix, redis_url, receiver, retry_base_delay=0.3, retry_max_delay=1.0
    ) as bot:
        w = bot.world
        ips = [f"203.0.113.{100 + i}" for i in range(8)]
        answers = await asyncio.gather(
            *(push(bot.base, ip, source=f"127.0.0.{10 + i}") for i, ip in enumerate(ips))
        )
        assert sorted(answers) == sorted(f"good {ip}" for ip in ips)
        state = await bot.services.state.site_state("home")
        assert state["ip.v4.seq"] == "8", "every push is one observation, numbered once"
        last = state["ip.v4"]
        w.set_device("fritzbox-home", public_ip=last)
        await until_converged(bot, last, within=40)
        assert w.counters.totals().redundant == 0

        # An old hint delivered late (out of order) is superseded and writes nothing.
        entries = await bot.services.redis.xrange(bot.services.keys.stream)
        hints = [json.loads(f[b"event"]) for _, f in entries if b"ip.changed" in f[b"event"]]
        oldest = min(hints, key=lambda e: e["data"]["seq"])
        assert oldest["data"]["seq"] == 1
        replay = {**oldest, "id": uuid.uuid4().hex, "idempotency_key": "late-" + oldest["id"]}
        before = lng_writes(w)
        await bot.services.queue.publish_fields({"event": json.dumps(replay)})
        record = await eventually(
            lambda: bot.services.state.recorded("home", replay["id"]), within=10
        )
        assert record.outcome == "superseded"
        assert "superseded by observation 8" in record.reason
        await asyncio.sleep(0.3)
        assert lng_writes(w) == before and lng_ip(w) == last


# --- defect 4: retries in the right layer --------------------------------------------------


@pytest.fixture
async def az_world(
    prefix: str, tmp_path: Path, redis_url: str
) -> tuple[World, Services, list[object]]:
    from bot.sim.arm import start_arm_sim
    from tests.azure_world import azure_settings, world

    w = world()
    runner, port = await start_arm_sim(w)
    settings = azure_settings(
        prefix, tmp_path, port, policies={"tunnel_timeout": 2.0, "tunnel_poll": 0.05}
    )
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    cleanup: list[object] = [runner, client, services]
    yield w, services, cleanup  # type: ignore[misc]
    await services.azure.close()
    await client.aclose()
    await runner.cleanup()


def conn_counter(w: World) -> tuple[int, int]:
    conn = connections(w)[0]
    c = w.counters.get(conn["id"])
    return c.writes, c.faults


RESET = PlaybookCall(name="reset-connection", params={"timeout": 5, "interval": 0.05})


async def test_a_throttled_poll_during_a_reset_sends_exactly_one_reset(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    w.add_fault(kind="throttle", method="GET", path="operationResults", count=2, retry_after=0.2)
    record = await execute(services, RESET)
    assert record.outcome == "ok", record
    # One reset POST; the two throttled polls were retried by azure-core, not the reset.
    assert conn_counter(w) == (1, 2), "one reset POST, none repeated"
    assert w.counters.get(connections(w)[0]["id"]).polls >= 3
    assert w.connection_status("conn-home") == "Connected"


async def test_a_failed_reset_post_is_not_sent_again_in_the_run(
    az_world: tuple[World, Services, list[object]],
) -> None:
    """azure-core re-sends a POST on 500; the reset must not be (each restarts the tunnel).
    The run reads the status instead, and leaves the next attempt to the scheduler."""
    w, services, _ = az_world
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    w.add_fault(kind="error", method="POST", path="resetconnection", status=500, count=1)
    record = await execute(
        services, PlaybookCall(name="reset-connection", params={"timeout": 0.3, "interval": 0.05})
    )
    assert record.outcome == "failed"
    assert conn_counter(w) == (1, 1), "the failed POST was the only one"
    (result,) = record.playbooks
    assert result.retry, "worth another reconcile later"
    journal = await services.state.journal("home", record.run_id)
    assert [e.phase for e in journal if e.step == "reset"] == ["start", "failed", "resumed", "done"]


async def test_throttled_status_reads_while_waiting_for_connected_do_not_fail_verify(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    w.configure(tunnel_delay=0.6)
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    await execute(services, update())
    conn_id = connections(w)[0]["id"]
    reads = w.counters.get(conn_id).reads
    verify = PlaybookCall(name="verify-tunnel", params={"timeout": 10, "interval": 0.05})
    task = asyncio.create_task(execute(services, verify))
    # Once verify has planned (one read), throttle more reads than azure-core retries
    # (retry_status=3): the wait for Connected meets errors, and must not fail on them.
    await eventually(lambda: _above(w.counters.get(conn_id).reads, reads), within=5, every=0.001)
    w.add_fault(kind="throttle", method="GET", path="conn-home$", count=6, retry_after=0)
    record = await task
    assert record.outcome == "ok", record
    assert not w.faults.rules(), "every throttled read happened inside the wait"
    assert w.counters.get(conn_id).faults == 6


async def _above(value: int, floor: int) -> bool:
    return value > floor


async def test_a_retry_after_longer_than_the_backoff_cap_is_honoured(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    services.settings.azure.retry_total = 0  # let the 429 reach the reconciler
    await services.azure.close()
    w.add_fault(kind="throttle", method="GET", path="localNetworkGateways", count=1, retry_after=7)
    await _observe(services, NEW_IP)
    worker = build_worker(services, "t")
    event = Event.new("site.reconcile", "home", source="scheduler")
    began = time.time()
    handled = await worker.runner.reconcile(
        event, handlers.builtin()["site.reconcile"], Reconcile()
    )
    assert handled is not None and handled.record.outcome == "failed"
    assert services.settings.policy_for("home").retry_max_delay == 0.5
    due = await services.scheduler.due_at("site.reconcile", "home")
    assert due is not None and due >= began + 7, "Retry-After cut short"
    state = await services.state.site_state("home")
    assert float(state["reconcile.not_before"]) >= began + 7
    assert state["reconcile.status"] == "retrying" and state["reconcile.attempt"] == "1"


async def _observe(services: Services, ip: str) -> int:
    """The site's router reported ``ip`` (recorded as desired state, no hint published)."""
    from bot.sources.report import IpReporter

    reporter = IpReporter(services, allow_documentation=True)
    return (await reporter.observe("home", ip, "v4", "dyndns2", hint=False)).seq


# --- defect 5: the truth of an operation whose status URL was lost ----------------------------


async def test_a_lost_operation_is_judged_by_reading_the_resource(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    w.configure(lro_settle_seconds=0.5)
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    w.add_fault(kind="lost_operation", method="PUT", path="localNetworkGateways")
    record = await execute(services, update(), PlaybookCall(name="verify-tunnel"))
    assert record.outcome == "ok", record
    assert [str(c) for c in record.playbooks[0].changes] == [
        f"lng lng-home gatewayIpAddress: {OLD_IP} -> {NEW_IP}"
    ]
    assert lng_of(w)["properties"]["provisioningState"] == "Succeeded"
    assert lng_writes(w) == 1


# --- defect 7: one gate, and manual runs outside the automatic limit -------------------------


async def test_manual_runs_do_not_consume_the_automatic_change_limit(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    services.settings.policies.max_changes_per_hour = 1
    worker = build_worker(services, "t")
    requested = handlers.builtin()["playbook.requested"]
    for ip in ("203.0.113.50", "203.0.113.51"):
        data = requested.data_model.model_validate(
            {"playbook": "update-local-gateway", "params": {"ip": ip}, "requested_by": "cli"}
        )
        event = Event.new("playbook.requested", "home", source="cli", data=data.model_dump())
        handled = await worker.runner.reconcile(event, requested, data)
        assert handled is not None and handled.record.outcome == "ok"
    assert await services.state.changes_since("home", 3600) == 0
    # An automatic change still goes through (then counts).
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    seq = await _observe(services, NEW_IP)
    site = handlers.builtin()["ip.changed"]
    data = site.data_model.model_validate({"ip": NEW_IP, "seq": seq})
    event = Event.new("ip.changed", "home", source="dyndns2", data=data.model_dump())
    handled = await worker.runner.reconcile(event, site, data)
    assert handled is not None
    assert handled.record.playbooks[0].playbook == "update-local-gateway"
    assert lng_ip(w) == NEW_IP
    assert await services.state.changes_since("home", 3600) == 1


async def test_a_held_change_is_told_once_and_applied_when_the_window_allows(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(tmp_path, prefix, redis_url, receiver, max_changes_per_hour=1) as bot:
        w, services = bot.world, bot.services
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await until_converged(bot, NEW_IP)
        for ip in ("203.0.113.30", "203.0.113.31"):  # two more changes inside the hour
            assert await push(bot.base, ip) == f"good {ip}"
            await eventually(lambda: _status(bot, "held"), within=10)
        await asyncio.sleep(0.5)
        held = [p for p in receiver.posts if "rate limit" in p["title"]]
        assert len(held) == 1, "a held change is reported once per window"
        assert lng_ip(w) == NEW_IP
        due = await services.scheduler.due_at("site.reconcile", "home")
        rows = await services.redis.zrange(services.keys.changes("home"), 0, 0, withscores=True)
        oldest = float(rows[0][1]) if rows else None
        assert due is not None and oldest is not None and abs(due - (oldest + 3601)) < 1
        # The hour passes (the change leaves the window; the due entry comes round).
        await services.redis.delete(services.keys.changes("home"))
        await services.scheduler.at("site.reconcile", "home", time.time())
        w.set_device("fritzbox-home", public_ip="203.0.113.31")
        await until_converged(bot, "203.0.113.31")


# --- defect 8: destructive work is explicit --------------------------------------------------


async def test_a_destructive_playbook_needs_policy_or_confirmation(
    az_world: tuple[World, Services, list[object]],
) -> None:
    w, services, _ = az_world
    refused = await execute(services, PlaybookCall(name="recreate-connection"))
    assert refused.outcome == "failed"
    assert refused.playbooks[0].error_code == "DestructiveRefused"
    assert writes(w) == 0
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])
    confirmed = PlaybookCall(name="recreate-connection", confirmed=True)
    done = await execute(services, confirmed)
    assert done.outcome == "ok", done
    assert len(connections(w)) == 1 and w.connection_status("conn-home") == "Connected"
    services.settings.policies.allow_destructive = True
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])
    assert (await execute(services, PlaybookCall(name="recreate-connection"))).outcome == "ok"


async def test_a_requested_playbook_is_checked_again_by_the_worker(
    az_world: tuple[World, Services, list[object]],
) -> None:
    """The gate runs before queueing; whatever reaches the stream anyway (an old client, a
    hand-made entry) meets the same rules in the worker: no private address reaches Azure."""
    w, services, _ = az_world
    record = await execute(
        services, PlaybookCall(name="update-local-gateway", params={"ip": "10.0.0.1"})
    )
    assert record.outcome == "failed" and record.playbooks[0].error_code == "BadParams"
    assert "private" in (record.playbooks[0].error or "")
    assert writes(w) == 0

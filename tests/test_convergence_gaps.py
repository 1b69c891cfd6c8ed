"""Convergence, the remaining checks: each against a real Redis, the real SDK and the ARM
simulator (with its fault injection), with real workers in this event loop.

- A requested playbook meets the runner's rules: a destructive one without confirmation is
  refused (and recorded with the reason), ``strategy=`` is refused with the new playbook's name.
- A permanent error stops the retries: status ``failed``, the resync is the only next visit,
  and one message tells a person what to do.
- ``If-Match``: an LNG changed between ``plan()`` and the PUT gets 412 and is planned again
  (the other writer's change survives); the connection's DELETE in ``recreate-connection``
  carries the ETag of its snapshot, so a connection changed meanwhile is not deleted.
- A crash between recording a run and telling people still tells them (once).
- The periodic resync repairs drift made outside the bot; resync entries are spread.
- The backoff: exponential, jittered, capped, and a longer ``Retry-After`` in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import handlers
from bot.app import build_worker
from bot.events import Event
from bot.models import PlaybookCall, RunRecord
from bot.retry import backoff
from bot.scheduler import RECONCILE, member, spread
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.resources import Kind
from bot.sim.world import World
from bot.sources.report import IpReporter
from bot.worker import Worker
from tests.azure_world import NEW_IP, OLD_IP, RG, SHARED_KEY, SUB, azure_settings, world
from tests.helpers import eventually
from tests.test_azure_playbooks import connections, execute, lng_of, settings_of, writes
from tests.test_ip_change_e2e import Receiver, push, receiver, running_bot

__all__ = ["receiver"]  # the fixture, re-exported for pytest


@dataclass
class Env:
    world: World
    services: Services
    receiver: Receiver


@pytest.fixture
async def env(
    prefix: str, tmp_path: Path, redis_url: str, receiver: Receiver
) -> AsyncIterator[Env]:
    w = world()
    runner, port = await start_arm_sim(w)
    settings = azure_settings(
        prefix,
        tmp_path,
        port,
        policies={"tunnel_timeout": 2.0, "tunnel_poll": 0.05},
        scheduler={"tick": 0.1},
        notify=[{"kind": "webhook", "url": receiver.url, "name": "ops"}],
    )
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    try:
        yield Env(w, services, receiver)
    finally:
        await services.azure.close()
        await client.aclose()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def working(services: Services, name: str = "w1") -> AsyncIterator[Worker]:
    """A worker consuming the stream (and polling the schedule) in this event loop."""
    worker = build_worker(services, name)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


def lng_ip(w: World) -> str:
    return str(lng_of(w)["properties"]["gatewayIpAddress"])


def lng_counter(w: World) -> tuple[int, int]:
    c = w.counters.get(lng_of(w)["id"])
    return c.writes, c.faults


# --- a requested playbook meets the runner's rules ------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (
            {"playbook": "recreate-connection", "params": {"ip": NEW_IP}},
            "DestructiveRefused",
            "recreate-connection is destructive: it runs only where the site's policy has "
            "allow_destructive = true, or when a person confirms it",
        ),
        (
            {"playbook": "update-local-gateway", "params": {"ip": NEW_IP, "strategy": "recreate"}},
            "BadParams",
            "strategy: re-creating is its own playbook now: recreate-connection",
        ),
    ],
)
async def test_a_request_the_runner_refuses_is_recorded_with_the_reason(
    env: Env, data: dict[str, Any], code: str, words: str
) -> None:
    """What reaches the stream without the CLI's gate (an old client, a hand-made entry) is
    refused by the worker, recorded with the reason, and Azure is not touched."""
    w, services = env.world, env.services
    event = Event.new("playbook.requested", "home", source="cli", data=data)
    await services.queue.publish(event)
    async with working(services):
        record: RunRecord = await eventually(
            lambda: services.state.recorded("home", event.id), within=20
        )
        await eventually(lambda: _nothing_pending(services), within=10)
    assert record.outcome == "failed"
    (result,) = record.playbooks
    assert result.error_code == code and words in (result.error or "")
    assert not result.retry, "a refusal is not retried"
    assert record.reason.startswith("requested")
    assert writes(w) == 0 and len(connections(w)) == 1 and lng_ip(w) == OLD_IP
    assert await services.queue.dead_count() == 0, "recorded, not dead-lettered"
    (recorded,) = await services.state.history("home")
    assert recorded.run_id == event.id and recorded.playbooks[0].error_code == code


async def _nothing_pending(services: Services) -> bool:
    return (await services.queue.stats())["pending"] == 0


def test_update_local_gateway_refuses_the_old_strategy_parameter() -> None:
    import playbooks
    from bot.config import load_config
    from bot.gate import Refused, playbook_call

    settings = load_config(None, overrides={"sites": {"home": {}}})
    for strategy in ("recreate", "in_place"):
        with pytest.raises(Refused) as refused:
            playbook_call(
                settings,
                playbooks.builtin(),
                "home",
                "update-local-gateway",
                {"ip": "20.50.1.7", "strategy": strategy},
            )
        assert refused.value.code == "BadParams"
        assert "recreate-connection (destructive" in str(refused.value)
    # Without it, the same request passes.
    call = playbook_call(
        settings, playbooks.builtin(), "home", "update-local-gateway", {"ip": "20.50.1.7"}
    )
    assert call.params == {"ip": "20.50.1.7"}


# --- a permanent error: stop, tell a person, keep only the resync -----------------------------


async def test_a_permanent_error_stops_retrying_and_tells_a_person_once(env: Env) -> None:
    w, services, hook = env.world, env.services, env.receiver
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    # The identity may read the LNG but not write it (a role without .../write).
    w.add_fault(
        kind="error",
        method="PUT",
        path="localNetworkGateways",
        status=403,
        code="AuthorizationFailed",
        message="The client does not have authorization to perform action "
        "'Microsoft.Network/localNetworkGateways/write'.",
        count=100,
    )
    reporter = IpReporter(services, allow_documentation=True)
    assert (await reporter.observe("home", NEW_IP, "v4", "dyndns2")).status == "good"
    interval = services.settings.scheduler.resync_interval
    async with working(services):
        state = await eventually(lambda: _status(services, "failed"), within=20)
        recorded_at = float(state["reconcile.at"])
        assert "reconcile.attempt" not in state and "reconcile.not_before" not in state
        assert "authorization to perform action" in state["reconcile.error"]
        due = await services.scheduler.due_at(RECONCILE, "home")
        assert due is not None and due >= recorded_at + 0.95 * interval - 1, (
            "no retry: the next visit is the resync"
        )
        assert [m for m, _ in await services.scheduler.entries()] == [member(RECONCILE, "home")]
        await eventually(lambda: _count(hook.posts, 1), within=10)
        (message,) = hook.posts
        assert message["severity"] == "error"
        assert message["title"] == "home: cannot converge, needs a person"
        assert message["next_step"].startswith("Grant the identity the role in docs/azure.md")
        assert "authorization to perform action" in message["summary"]

        # The router pushes the same address again: nochg, and (not converged) one more look,
        # which fails the same way: same incident, no second message, still only the resync.
        first_writes = lng_counter(w)[0]
        seen = await reporter.observe("home", NEW_IP, "v4", "dyndns2")
        assert seen.status == "nochg" and seen.reconcile
        await eventually(lambda: _runs(services, 2), within=20)
        await eventually(lambda: _status(services, "failed"), within=10)
    assert lng_counter(w)[0] == first_writes + 1, "one PUT per look, none repeated"
    assert len(hook.posts) == 1, "one message for the incident, not one per look"
    due = await services.scheduler.due_at(RECONCILE, "home")
    assert due is not None and due >= time.time() + 0.9 * interval
    assert lng_ip(w) == OLD_IP


async def _status(services: Services, status: str) -> dict[str, str] | None:
    state = await services.state.site_state("home")
    return state if state.get("reconcile.status") == status else None


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _runs(services: Services, n: int) -> bool:
    return len(await services.state.history("home", 20)) >= n


# --- If-Match: changed between plan() and the write ---------------------------------------------


async def test_an_lng_changed_after_plan_gets_412_and_is_planned_again(env: Env) -> None:
    """Someone tags the LNG while our PUT waits out a 429: the retried PUT carries the ETag
    plan() read, ARM answers 412, and the run reads and plans again instead of overwriting
    the other change."""
    w, services = env.world, env.services
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    w.add_fault(kind="throttle", method="PUT", path="localNetworkGateways", retry_after=3.0)
    task = asyncio.create_task(
        execute(services, PlaybookCall(name="update-local-gateway", params={"ip": NEW_IP}))
    )
    await eventually(lambda: _faulted(w), within=10, every=0.01)
    etag = lng_of(w)["etag"]
    w.patch_tags(Kind.LNG, SUB, RG, "lng-home", {"tags": {"owner": "alice"}})
    assert lng_of(w)["etag"] != etag
    record = await task
    assert record.outcome == "ok", record
    lng = lng_of(w)
    assert lng["properties"]["gatewayIpAddress"] == NEW_IP
    assert lng.get("tags") == {"owner": "alice"}, "the other writer's change was kept"
    # The throttled PUT, the retried one (412) and, after a new plan, the one that went
    # through: no blind re-send of the stale body.
    assert lng_counter(w) == (3, 1)
    journal = await services.state.journal("home", record.run_id)
    phases = [e.phase for e in journal if e.step == "update-lng"]
    assert phases == ["start", "failed", "start", "done"]
    failed = next(e for e in journal if e.step == "update-lng" and e.phase == "failed")
    assert "changed meanwhile" in str(failed.data)


async def _faulted(w: World) -> bool:
    return lng_counter(w)[1] >= 1


async def test_recreate_does_not_delete_a_connection_changed_since_its_snapshot(
    env: Env,
) -> None:
    w, services = env.world, env.services
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])
    conn_id = connections(w)[0]["id"]
    w.add_fault(kind="throttle", method="DELETE", path="connections/conn-home", retry_after=3.0)
    recreate = PlaybookCall(name="recreate-connection", confirmed=True)
    task = asyncio.create_task(execute(services, recreate))
    await eventually(lambda: _conn_faulted(w, conn_id), within=10, every=0.01)
    # A person changes the connection meanwhile (after the snapshot was journaled).
    w.patch_tags(Kind.CONNECTION, SUB, RG, "conn-home", {"tags": {"owner": "bob"}})
    record = await task
    assert record.outcome == "failed", record
    (result,) = record.playbooks
    assert result.retry, "worth another run, which snapshots the connection again"
    assert "changed since its snapshot" in (result.error or "")
    (conn,) = connections(w)
    assert conn["tags"] == {"owner": "bob"}, "not deleted: the snapshot was stale"
    # The next run takes a new snapshot and re-creates the connection as it is now.
    before = settings_of(conn)
    again = await execute(services, recreate)
    assert again.outcome == "ok", again
    (conn,) = connections(w)
    assert settings_of(conn) == before and conn["tags"] == {"owner": "bob"}
    assert w.connection_status("conn-home") == "Connected"


async def _conn_faulted(w: World, conn_id: str) -> bool:
    return w.counters.get(conn_id).faults >= 1


# --- 409 AnotherOperationInProgress: wait for the running operation, then plan again ---------


async def test_a_reset_refused_while_the_connection_is_updating_waits_and_plans_again(
    env: Env,
) -> None:
    """Someone sets the connection's shared key (an operation of a few tenths of a second)
    just as the tunnel is down: ARM refuses our reset with 409 AnotherOperationInProgress.
    That reset was not sent, so the run waits for the connection to leave Updating, plans
    again (still down) and sends it: two POSTs, one refused, one that went through."""
    w, services = env.world, env.services
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    conn_id = connections(w)[0]["id"]
    w.configure(lro_polls=10_000, lro_settle_seconds=60)  # the other operation: until told
    w.set_shared_key(
        SUB, RG, "conn-home", {"value": SHARED_KEY}, request=("PUT", f"{conn_id}/sharedkey")
    )
    w.configure(lro_polls=1, lro_settle_seconds=0)  # ours: quick
    assert connections(w)[0]["properties"]["provisioningState"] == "Updating"
    reset = PlaybookCall(name="reset-connection", params={"timeout": 5, "interval": 0.05})
    task = asyncio.create_task(execute(services, reset))
    await eventually(lambda: _conn_writes(w, conn_id, 1), within=20, every=0.01)
    # Refused: the run now waits for the connection's operation (it has not sent a reset).
    assert connections(w)[0]["properties"]["provisioningState"] == "Updating"
    assert not task.done()
    w.ops.finish_all()  # the shared key operation ends
    record = await task
    assert record.outcome == "ok", record
    counter = w.counters.get(conn_id)
    assert counter.writes == 2, "the refused POST, then the one that went through"
    assert w.connection_status("conn-home") == "Connected"
    (conn,) = connections(w)
    assert conn["properties"]["provisioningState"] == "Succeeded"
    assert conn["sim"]["sharedKey"] == SHARED_KEY
    journal = await services.state.journal("home", record.run_id)
    steps = [(e.phase, str(e.data or "")) for e in journal if e.step == "reset"]
    assert [phase for phase, _ in steps] == ["start", "failed", "resumed", "done"]
    assert "AnotherOperationInProgress" in steps[1][1]


async def test_a_reset_whose_outcome_is_unknown_is_still_not_repeated(env: Env) -> None:
    """Only ARM's refusal proves a reset was not sent: after any other failure of the POST
    the run reads the status instead of resetting again."""
    w, services = env.world, env.services
    w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
    conn_id = connections(w)[0]["id"]
    w.add_fault(kind="error", method="POST", path="resetconnection", status=502, count=1)
    reset = PlaybookCall(name="reset-connection", params={"timeout": 0.3, "interval": 0.05})
    record = await execute(services, reset)
    assert record.outcome == "failed"
    assert w.counters.get(conn_id).writes == 1


async def _conn_writes(w: World, conn_id: str, n: int) -> bool:
    return w.counters.get(conn_id).writes >= n


# --- a crash between the record and the message ---------------------------------------------


async def test_a_crash_after_recording_still_tells_the_team(env: Env) -> None:
    """A worker records the run and dies before its message goes out: the entry is
    redelivered, the run is not repeated, and the message is sent (once)."""
    w, services, hook = env.world, env.services, env.receiver
    w.set_device("fritzbox-home", public_ip=NEW_IP)
    reporter = IpReporter(services, allow_documentation=True)
    seen = await reporter.observe("home", NEW_IP, "v4", "dyndns2")
    # The worker that crashes: it takes the entry, runs and records it, and dies before its
    # follow-up (no message, no acknowledgement).
    await services.queue.ensure_group()
    (delivery,) = await services.queue.read("crashed", 10, 100)
    event = Event.from_wire(delivery.fields["event"] if delivery.fields else None)
    assert event.id == seen.event_id
    handler = handlers.builtin()[event.type]
    data = handler.data_model.model_validate(event.data)
    handled = await build_worker(services, "crashed").runner.reconcile(event, handler, data)
    assert handled is not None and handled.record.outcome == "ok"
    assert not await services.state.notified("home", event.id) and hook.posts == []
    writes_before = writes(w)

    async with working(services, "second"):
        await eventually(lambda: services.state.notified("home", event.id), within=20)
        await eventually(lambda: _nothing_pending(services), within=10)
    (message,) = hook.posts
    assert message["severity"] == "info" and NEW_IP in message["title"]
    assert message["facts"]["Old IP"] == OLD_IP and message["facts"]["New IP"] == NEW_IP
    assert writes(w) == writes_before, "the recorded run was not run again"
    assert len(await services.state.history("home")) == 1


# --- the periodic resync ------------------------------------------------------------------


async def test_the_resync_repairs_drift_made_outside_the_bot(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_bot(
        tmp_path, prefix, redis_url, receiver, scheduler={"resync_interval": 10}
    ) as bot:
        w = bot.world
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        assert await push(bot.base, NEW_IP) == f"good {NEW_IP}"
        await eventually(lambda: _converged(bot.services, w, NEW_IP), within=20)
        due = await bot.services.scheduler.due_at(RECONCILE, "home")
        assert due is not None and due <= time.time() + 10 * 1.05 + 1
        writes_before = lng_counter(w)[0]
        # Someone points the LNG elsewhere in the portal (an ARM PUT that is not ours).
        drifted = w.render(w.get(Kind.LNG, SUB, RG, "lng-home"))
        drifted["properties"]["gatewayIpAddress"] = "198.51.100.99"
        w.put(Kind.LNG, SUB, RG, "lng-home", drifted)
        assert w.connection_status("conn-home") == "NotConnected"
        await eventually(lambda: _converged(bot.services, w, NEW_IP), within=30)

        async def repaired() -> RunRecord | None:  # the run that wrote the LNG back
            for run in await bot.services.state.history("home", 10):
                if run.playbooks and any(
                    "198.51.100.99" in str(c) for c in run.playbooks[0].changes
                ):
                    return run
            return None

        repair = await eventually(repaired, within=30)
        assert repair.event_type == RECONCILE and repair.event_source == "scheduler"
        assert repair.outcome == "ok" and repair.reason == f"re-check: LNG at {NEW_IP}"
        assert [str(c) for c in repair.playbooks[0].changes] == [
            f"lng lng-home gatewayIpAddress: 198.51.100.99 -> {NEW_IP}"
        ]
        assert lng_counter(w)[0] == writes_before + 1
        assert w.counters.totals().redundant == 0


async def _converged(services: Services, w: World, ip: str) -> bool:
    state = await services.state.site_state("home")
    return (
        lng_ip(w) == ip
        and w.connection_status("conn-home") == "Connected"
        and state.get("reconcile.status") == "converged"
    )


def test_resync_offsets_are_stable_and_spread_over_the_interval() -> None:
    interval = 900.0
    sites = [f"{RECONCILE}|site{i}" for i in range(400)]
    offsets = [spread(s, interval) for s in sites]
    assert offsets == [spread(s, interval) for s in sites], "stable: same site, same offset"
    assert all(0 <= o < interval for o in offsets)
    # Evenly: every tenth of the interval gets a share, none more than twice the average.
    buckets = [0] * 10
    for o in offsets:
        buckets[int(o / interval * 10)] += 1
    assert min(buckets) >= 20 and max(buckets) <= 80, buckets
    assert spread("a", 60) != spread("b", 60)


async def test_resync_entries_are_spread_in_the_schedule(services: Services) -> None:
    interval = 600.0
    pairs = [(RECONCILE, f"site{i}") for i in range(60)]
    began = time.time()
    assert await services.scheduler.ensure_resync(pairs, interval) == 60
    assert await services.scheduler.ensure_resync(pairs, interval) == 0, "kept, not moved"
    scores = sorted(score for _, score in await services.scheduler.entries())
    assert len(scores) == 60 and began <= scores[0] and scores[-1] < time.time() + interval
    gaps = [b - a for a, b in itertools.pairwise(scores)]
    assert scores[-1] - scores[0] > 0.8 * interval, "spread over the interval"
    assert max(gaps) < interval / 6, "no long silence, no pile-up"


# --- the backoff ---------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after() -> None:
    base, cap = 10.0, 600.0
    samples = {n: [backoff(n, base, cap) for _ in range(300)] for n in range(1, 12)}
    for n in range(1, 6):  # 10, 20, 40, 80, 160: below the cap
        expected = base * 2 ** (n - 1)
        assert all(0.8 * expected <= d <= 1.2 * expected for d in samples[n]), n
        assert min(samples[n + 1]) > max(samples[n]), "each attempt waits longer"
        assert statistics.mean(samples[n]) == pytest.approx(expected, rel=0.05)
    for n in range(1, 12):
        assert len(set(samples[n])) > 250, "jittered: retries of many sites spread out"
    for n in (8, 9, 11):
        assert all(0.8 * cap <= d <= cap for d in samples[n]), "never beyond the cap"
        assert len(set(samples[n])) > 250, "still jittered at the cap"
    assert all(0.8 * cap <= backoff(10_000, base, cap) <= cap for _ in range(50))
    # A Retry-After longer than the backoff, even than its cap, is honoured in full.
    assert backoff(1, base, cap, retry_after=3600.0) == 3600.0
    assert backoff(1, 0.1, 0.5, retry_after=7.0) == 7.0
    # A shorter one does not shorten the backoff.
    assert all(backoff(3, base, cap, retry_after=1.0) >= 0.8 * 40 for _ in range(50))

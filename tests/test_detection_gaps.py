"""Detection and healing, the parts ``test_detection.py`` leaves out.

Against the simulators (ARM, site responders, device APIs) with real Redis: the watcher
slowing down as ARM's read budget runs low, degraded tunnels (one of an active-active pair
down; Connected but passing nothing), a probe's time series and metrics, a plain probe that
only notifies, one incident per outage across a reset cool-down, the gateway reset, and the
device re-initiate in the ``tunnel.down`` chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.config import Settings
from bot.events import Event
from bot.gate import Refused, playbook_call
from bot.models import PlaybookCall
from bot.probes import ProbeResult, parse_probe
from bot.services import Services
from bot.sim.arm import start_arm_sim
from bot.sim.metering import OpClass
from bot.sim.sites import SitesSim, start_sites_sim
from bot.sim.world import World
from bot.sources.probing import SERIES_MAXLEN, ProbePoller
from bot.sources.watcher import ARM_READS_PER_SECOND, LOW_REMAINING, TunnelWatcher
from handlers.site import HANDLERS, TunnelHint
from playbooks import builtin
from tests.azure_world import SHARED_KEY, SUB, azure_settings, seed
from tests.helpers import eventually
from tests.test_azure_playbooks import execute
from tests.test_detection import resets
from tests.test_ip_change_e2e import Bot, Receiver, receiver, running_bot

__all__ = ["receiver"]


@pytest.fixture
async def arm() -> AsyncIterator[tuple[World, int]]:
    """The one-site world with an active-active gateway (two tunnels per connection)."""
    world_seed = seed()
    world_seed["virtual_network_gateways"][0]["properties"] = {"activeActive": True}
    w = World.from_seed(world_seed)
    runner, port = await start_arm_sim(w)
    try:
        yield w, port
    finally:
        await runner.cleanup()


@pytest.fixture
async def az(
    arm: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> AsyncIterator[Services]:
    settings = azure_settings(prefix, tmp_path, arm[1], watcher={"interval": 0.2, "debounce": 0})
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    try:
        yield services
    finally:
        await services.azure.close()
        await client.aclose()


async def published(services: Services) -> list[Event]:
    entries = await services.redis.xrange(services.keys.stream)
    return [Event.from_wire(fields[b"event"]) for _, fields in entries]


def gateway_writes(w: World) -> int:
    gateway = next(r for r in w.dump()["resources"] if r["name"] == "vpngw")
    return w.counters.get(gateway["id"]).writes


# --- the watcher ---------------------------------------------------------------------------


async def test_the_watcher_slows_down_as_arms_read_budget_runs_low(
    arm: tuple[World, int], az: Services
) -> None:
    """Others in the subscription use up the read bucket: ARM's
    ``x-ms-ratelimit-remaining-subscription-reads`` falls and the watcher reads slower, in
    proportion; when the bucket is full again it is back to its pace."""
    w, _ = arm
    watcher = TunnelWatcher(az, az.settings.watcher)
    share = 1.0 / (az.settings.watcher.read_share * ARM_READS_PER_SECOND)
    pace = max(az.settings.watcher.interval, share)  # one site: one read per sweep
    await watcher.check("home")
    assert watcher.interval == pytest.approx(pace), "a full bucket: the sweep's pace"
    left = 0
    for _ in range(240):  # 250 in the bucket: leave about ten
        _, left, _ = w.limiter.acquire(SUB, OpClass.READ)
    assert left < LOW_REMAINING
    await watcher.check("home")
    slow = watcher.interval
    assert slow >= pace * LOW_REMAINING / (left + 5), (slow, left)
    assert slow <= pace * 10, "never slower than ten times its pace"
    w.limiter.reset()  # the bucket refilled
    await watcher.check("home")
    assert watcher.interval == pytest.approx(pace)
    assert watcher.reads == 3


async def test_one_tunnel_of_an_active_active_pair_down_is_degraded(
    arm: tuple[World, int], az: Services
) -> None:
    w, _ = arm
    watcher = TunnelWatcher(az, az.settings.watcher)
    assert await watcher.check("home") is None, "first sight of a healthy tunnel"
    w.drop_tunnel("conn-home", instance=1)
    assert w.connection_status("conn-home") == "Connected", "the other tunnel carries it"
    assert await watcher.check("home") == "degraded"
    state = await az.state.site_state("home")
    assert state["tunnel.reported"] == "degraded"
    assert state["tunnel.detail"].startswith("tunnel conn-home_")
    assert state["tunnel.detail"].endswith(" is NotConnected")
    (event,) = await published(az)
    assert (event.type, event.source) == ("tunnel.degraded", "arm-watcher")
    assert event.data["status"] == "Connected"
    assert event.data["detail"] == state["tunnel.detail"]
    assert await watcher.check("home") is None, "told once"
    w.reset_connection(SUB, "rg-vpn", "conn-home")  # both tunnels up again
    assert await watcher.check("home") == "up"
    assert [e.type for e in await published(az)] == ["tunnel.degraded", "tunnel.up"]


async def test_connected_without_traffic_for_n_sweeps_is_degraded_and_told(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    watcher = {"interval": 0.2, "debounce": 0.2, "read_share": 1.0, "idle_sweeps": 3}
    async with running_bot(tmp_path, prefix, redis_url, receiver, more={"watcher": watcher}) as bot:
        w = bot.world
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=10)
        w.set_idle("conn-home")  # Connected, but no bytes move
        await eventually(lambda: _state(bot, "tunnel.reported", "degraded"), within=10)
        state = await bot.services.state.site_state("home")
        assert state["tunnel.detail"].startswith("Connected, no bytes moved for ")
        assert int(state["tunnel.idle"]) >= 3
        (message,) = await eventually(lambda: _titled(receiver, "degraded"), within=10)
        assert message["title"] == "home: tunnel Connected but degraded"
        assert message["summary"] == "Connected, no bytes moved for 3 checks"
        assert resets(w) == 0, "told, not reset: Azure says Connected"
        w.set_idle("conn-home", False)
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=10)


# --- probes ----------------------------------------------------------------------------------


@pytest.fixture
async def responders() -> AsyncIterator[SitesSim]:
    sim = await start_sites_sim(
        {"sites": [{"name": "home", "responders": [{"name": "kms", "kind": "tcp"}]}]}
    )
    try:
        yield sim
    finally:
        await sim.close()


async def test_a_probe_run_writes_its_capped_series_and_metrics(
    responders: SitesSim, services: Services
) -> None:
    spec = parse_probe(
        {"name": "kms", "kind": "tcp", "target": f"127.0.0.1:{responders.port('home', 'kms')}"}
    )
    poller = ProbePoller(services, "home", spec)
    key = services.keys.probe("home", "kms")
    assert key == f"{services.settings.redis.prefix}:site:{{home}}:probe:kms"
    await poller.poll()
    ((_, up),) = await services.redis.xrange(key)
    assert up[b"ok"] == b"1" and up[b"reason"] == b"ok"
    latency = float(up[b"latency"])
    registry = services.metrics.registry
    labels = {"site": "home", "probe": "kms"}
    assert registry.get_sample_value("tunnelwarden_probe_up", labels) == 1.0
    assert registry.get_sample_value("tunnelwarden_probe_latency_seconds_count", labels) == 1.0
    assert registry.get_sample_value(
        "tunnelwarden_probe_latency_seconds_sum", labels
    ) == pytest.approx(latency, abs=1e-4)

    await responders.set_state("home", "kms", up=False)
    await poller.poll()
    (_, down) = (await services.redis.xrange(key))[-1]
    assert (down[b"ok"], down[b"reason"]) == (b"0", b"refused")
    assert b"refused the connection" in down[b"detail"]
    assert registry.get_sample_value("tunnelwarden_probe_up", labels) == 0.0

    # Capped: however long it runs, the series keeps about SERIES_MAXLEN results (trimmed
    # approximately, a node of up to 100 entries at a time), the newest.
    for i in range(SERIES_MAXLEN + 300):
        await poller.record(ProbeResult.up(0.001, f"run {i}"))
    length = await services.redis.xlen(key)
    assert SERIES_MAXLEN <= length <= SERIES_MAXLEN + 100, length
    (_, newest) = (await services.redis.xrevrange(key, count=1))[0]
    assert newest[b"detail"] == f"run {SERIES_MAXLEN + 299}".encode()


async def test_a_failing_plain_probe_only_notifies(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """A probe that does not go through the tunnel (the site's public VPN endpoint) fails
    while Azure says Connected: people are told, nothing is reset."""
    sim = await start_sites_sim(
        {"sites": [{"name": "home", "responders": [{"name": "vpn", "kind": "tcp"}]}]}
    )
    probe = {
        "name": "vpn", "kind": "tcp", "target": f"127.0.0.1:{sim.port('home', 'vpn')}",
        "interval": 0.3, "timeout": 0.3, "fail_after": 2, "recover_after": 1,
    }  # fmt: skip
    more = {"sites": {"home": {"probes": [probe]}}}
    try:
        async with running_bot(
            tmp_path, prefix, redis_url, receiver, more=more, reset_cooldown=0
        ) as bot:
            await eventually(lambda: _state(bot, "probe.vpn.state", "up"), within=10)
            await sim.set_state("home", "vpn", up=False)
            (record,) = await eventually(lambda: _records(bot, "probe.failed"), within=15)
            assert record.outcome in ("ok", "no_changes"), record
            assert [p.playbook for p in record.playbooks] == ["verify-tunnel"]
            (told,) = await eventually(lambda: _titled(receiver, "probe vpn fails"), within=10)
            assert told["title"] == "home: probe vpn fails (refused)"
            assert "Not through the tunnel, so not a reason to reset." in told["summary"]
            assert resets(bot.world) == 0
    finally:
        await sim.close()


# --- incidents ---------------------------------------------------------------------------------


async def test_an_outage_across_a_reset_cool_down_is_told_once_and_once_back(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """The device's key is wrong, so resets cannot help: the bot resets, retries inside the
    cool-down (verify only), resets again after it; people get one message that it is down
    (since when, what was done) and one that it is back (how long it was down)."""
    watcher = {"interval": 0.2, "debounce": 0.2, "read_share": 1.0}
    policy = {
        "reset_cooldown": 1.5,
        "max_resets_per_hour": 0,
        "max_changes_per_hour": 0,
        "retry_base_delay": 0.2,
        "retry_max_delay": 0.4,
        "tunnel_timeout": 0.5,
    }
    async with running_bot(
        tmp_path, prefix, redis_url, receiver, more={"watcher": watcher}, **policy
    ) as bot:
        w = bot.world
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=10)
        w.set_device("fritzbox-home", shared_key="not-the-azure-key")
        await eventually(lambda: _outage_retried(bot), within=40)
        w.set_device("fritzbox-home", shared_key=SHARED_KEY)  # a person fixed the key
        await eventually(lambda: _titled(receiver, "converged again"), within=20)
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=10)
        await asyncio.sleep(0.5)  # let anything late arrive
        titles = [p["title"] for p in receiver.posts]
        down = [p for p in receiver.posts if "tunnel down" in p["title"]]
        assert len(down) == 1, titles
        (message,) = down
        assert message["title"] == "home: tunnel down, retrying"
        assert message["facts"]["Down since"]
        assert "verify-tunnel (failed) → reset-connection (failed)" in message["facts"]["Done"]
        (back,) = [p for p in receiver.posts if "converged again" in p["title"]]
        assert float(back["facts"]["Tunnel down for"].rstrip("s")) > 1.5
        assert len(titles) == 2, titles


async def _outage_retried(bot: Bot) -> bool:
    """At least two resets (so a cool-down in between) and a retry held by it."""
    records = await bot.services.state.history("home", 100)
    failed = [r for r in records if r.outcome == "failed"]
    with_reset = [r for r in failed if any(p.playbook == "reset-connection" for p in r.playbooks)]
    held = [r for r in failed if [p.playbook for p in r.playbooks] == ["verify-tunnel"]]
    return len(with_reset) >= 2 and len(held) >= 1


# --- reset-gateway -----------------------------------------------------------------------------


@pytest.fixture
async def gateway_world() -> AsyncIterator[tuple[World, int]]:
    w = World.from_seed(seed())
    runner, port = await start_arm_sim(w)
    try:
        yield w, port
    finally:
        await runner.cleanup()


async def _services(settings: Settings, redis_url: str) -> tuple[Services, Redis]:
    client = Redis.from_url(redis_url)
    return Services.build(settings, client), client


GATEWAY = PlaybookCall(name="reset-gateway", params={"timeout": 5, "interval": 0.05})


async def test_reset_gateway_resets_verifies_and_needs_policy_or_confirmation(
    gateway_world: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> None:
    w, port = gateway_world
    w.drop_tunnel("conn-home", cleared_by=["reset_gateway"])  # only a gateway reset helps
    settings = azure_settings(prefix, tmp_path, port)
    with pytest.raises(Refused, match="reset-gateway is destructive; site home does not allow"):
        playbook_call(settings, builtin(), "home", "reset-gateway", {})
    services, client = await _services(settings, redis_url)
    try:
        refused = await execute(services, GATEWAY)
        assert refused.outcome == "failed"
        assert refused.playbooks[0].error_code == "DestructiveRefused"
        assert gateway_writes(w) == 0 and w.connection_status("conn-home") == "NotConnected"

        confirmed = await execute(services, GATEWAY.model_copy(update={"confirmed": True}))
        assert confirmed.outcome == "ok", confirmed
        (result,) = confirmed.playbooks
        assert result.detail.startswith("gateway reset; Connected after "), result.detail
        (change,) = result.changes
        assert (change.target, change.field) == ("gateway vpngw", "reset")
        assert change.old == "connection conn-home NotConnected"
        assert gateway_writes(w) == 1, "one reset POST (the LRO polls are reads)"
        assert w.connection_status("conn-home") == "Connected"
        again = await execute(services, GATEWAY.model_copy(update={"confirmed": True}))
        assert again.outcome == "no_changes" and gateway_writes(w) == 1, "Connected: no reset"
    finally:
        await services.azure.close()
        await client.aclose()

    allowed = azure_settings(prefix, tmp_path, port, policies={"allow_destructive": True})
    assert playbook_call(allowed, builtin(), "home", "reset-gateway", {}).name == "reset-gateway"
    w.drop_tunnel("conn-home", cleared_by=["reset_gateway"])
    services, client = await _services(allowed, redis_url)
    try:
        record = await execute(services, GATEWAY)  # not confirmed: the policy allows it
        assert record.outcome == "ok", record
        assert gateway_writes(w) == 2 and w.connection_status("conn-home") == "Connected"
    finally:
        await services.azure.close()
        await client.aclose()


# --- the device re-initiates before anything destructive ---------------------------------------


async def test_a_sonicwall_re_initiates_after_a_failed_reset(
    gateway_world: tuple[World, int], prefix: str, tmp_path: Path, redis_url: str
) -> None:
    """The site handler's chain through the real runner: the tunnel stays down after the
    connection reset, so the SonicWall re-initiates it (device simulator), then the tunnel is
    verified; without allow_destructive nothing destructive follows."""
    from tests.devices.playbook_env import environment

    w, port = gateway_world
    azure = azure_settings(prefix, tmp_path, port)
    site = azure.sites["home"]
    w.drop_tunnel("conn-home", cleared_by=["put_connection"])  # resets do not help
    async for env in environment(
        prefix,
        tmp_path,
        redis_url,
        azure=azure.azure.model_dump(mode="json"),
        policies={"tunnel_timeout": 0.3, "tunnel_poll": 0.05},
        site={
            "resource_group": site.resource_group,
            "local_network_gateway": site.local_network_gateway,
            "connection": site.connection,
        },
    ):
        from bot.app import build_worker

        handler = next(h for h in HANDLERS if h.event_type == "tunnel.down")
        event = Event.new("tunnel.down", "home", source="arm-watcher", data={})
        runner = build_worker(env.services, "t").runner
        handled = await runner.reconcile(event, handler, TunnelHint())
        assert handled is not None
        record = handled.record
        assert [(p.playbook, p.outcome) for p in record.playbooks] == [
            ("verify-tunnel", "failed"),
            ("reset-connection", "failed"),
            ("sonicwall-reinitiate", "ok"),
            ("verify-tunnel", "failed"),
        ]
        assert env.sim.sonicos.counters["tunnel_down"] == 1, "re-initiated once"
        assert env.sim.sonicos.committed["Azure"]["enable"] is True
        assert resets(w) == 1, "one connection reset, nothing destructive"


# --- helpers -----------------------------------------------------------------------------------


async def _state(bot: Bot, key: str, value: str) -> bool:
    return (await bot.services.state.site_state("home")).get(key) == value


async def _records(bot: Bot, event_type: str) -> list[Any]:
    return [r for r in await bot.services.state.history("home", 50) if r.event_type == event_type]


async def _titled(receiver: Receiver, part: str) -> list[dict[str, Any]]:
    return [p for p in receiver.posts if part in p["title"]]

"""Detecting tunnel drops and failing probes, and healing them.

Against the simulators, with the bot running as ``tunnelwarden run`` assembles it: the ARM
tunnel watcher notices a drop and one reset heals it; an Azure Monitor metric alert and a
Resource Health alert start the same flow; through-tunnel probes that fail while Azure says
Connected get the connection reset, and only when a quorum agrees.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import WatcherConfig
from bot.probes import parse_probe
from bot.sim.sites import start_sites_sim
from bot.sim.world import World
from bot.sources.probing import ProbeState, advance
from bot.sources.watcher import Seen, judge
from tests.helpers import eventually
from tests.test_azure_playbooks import connections
from tests.test_ip_change_e2e import Bot, Receiver, receiver, running_bot

__all__ = ["receiver"]

SAMPLES = Path(__file__).parent / "sources" / "samples" / "azure-monitor"
TOKEN = "hook-token-4711-secret"


def resets(w: World) -> int:
    """Reset POSTs (and any other writes) the connection got."""
    return w.counters.get(connections(w)[0]["id"]).writes


async def _records(bot: Bot, event_type: str) -> list[Any]:
    return [r for r in await bot.services.state.history("home", 50) if r.event_type == event_type]


# --- the watcher ---------------------------------------------------------------------------


def test_judge_debounces_reports_once_and_spots_idle_tunnels() -> None:
    cfg = WatcherConfig(debounce=60, idle_sweeps=3)
    seen, event = judge(None, "Connected", 100, 0, cfg)
    assert (seen.reported, event) == ("up", None)
    seen, event = judge(seen, "NotConnected", 100, 10, cfg)
    assert event is None and seen.since == 10, "not down before the debounce window"
    seen, event = judge(seen, "NotConnected", 100, 69, cfg)
    assert event is None
    seen, event = judge(seen, "NotConnected", 100, 70, cfg)
    assert event == "down"
    seen, event = judge(seen, "Unknown", 100, 130, cfg)
    assert event is None, "told once"
    seen, event = judge(seen, "Connected", 200, 140, cfg)
    assert event == "up"
    for t in (150, 160):
        seen, event = judge(seen, "Connected", 200, t, cfg)
        assert event is None
    seen, event = judge(seen, "Connected", 200, 170, cfg)
    assert event == "degraded" and "no bytes moved for 3 checks" in seen.detail
    seen, event = judge(seen, "Connected", 200, 180, cfg)
    assert event is None
    seen, event = judge(seen, "Connected", 900, 190, cfg)
    assert event == "up", "traffic again: no longer degraded"
    seen, event = judge(seen, "Connected", 950, 200, cfg, partial="tunnel b is NotConnected")
    assert event == "degraded" and seen.detail == "tunnel b is NotConnected"
    restored = Seen.from_state(seen.fields(200))
    assert restored == seen, "what the watcher saw survives a restart (it lives in Redis)"


async def test_the_watcher_notices_a_drop_and_one_reset_heals_it(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    watcher = {"interval": 0.5, "debounce": 0.3, "read_share": 1.0}
    async with running_bot(tmp_path, prefix, redis_url, receiver, more={"watcher": watcher}) as bot:
        w = bot.world
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=10)
        w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
        dropped = time.time()
        records = await eventually(lambda: _records(bot, "tunnel.down"), within=20)
        await eventually(lambda: _state(bot, "tunnel.reported", "up"), within=20)
        assert w.connection_status("conn-home") == "Connected"
        (record,) = records
        assert record.outcome == "ok", record
        assert [(p.playbook, p.outcome) for p in record.playbooks] == [
            ("verify-tunnel", "failed"),
            ("reset-connection", "ok"),
        ]
        await asyncio.sleep(1.5)  # the watcher keeps reading: nothing more happens
        assert resets(w) == 1, "exactly one reset POST"
        await eventually(lambda: _some(receiver.posts), within=10)
        (message,) = [p for p in receiver.posts if "reset brought it back" in p["title"]]
        assert message["facts"]["Noticed by"] == "arm-watcher"
        assert float(message["facts"]["Tunnel down for"].rstrip("s")) <= time.time() - dropped
        state = await bot.services.state.site_state("home")
        assert state["reconcile.status"] == "converged"
        assert len(state["reset.times"].split()) == 1


async def test_the_watchers_reads_stay_inside_its_share_of_the_arm_budget(
    tmp_path: Path, prefix: str, redis_url: str
) -> None:
    """200 connections, a 1 s sweep asked for, 10 % of ARM's 25 reads/s allowed: the watcher
    reads at most 2.5 connections per second, spread over them, whatever the sweep says."""
    from redis.asyncio import Redis

    from bot.services import Services
    from bot.sim.arm import start_arm_sim
    from bot.sources.pollers import run_pollers
    from bot.sources.watcher import TunnelWatcher
    from tests.azure_world import azure_settings, seed

    world_seed = seed()
    for i in range(200):
        world_seed["local_network_gateways"].append(
            {"resource_group": "rg-vpn", "name": f"lng-{i}", "gateway_ip_address": "192.0.2.1"}
        )
        world_seed["connections"].append(
            {
                "resource_group": "rg-vpn",
                "name": f"conn-{i}",
                "virtual_network_gateway": "vpngw",
                "local_network_gateway": f"lng-{i}",
                "shared_key": "k-" + str(i),
            }
        )
    w = World.from_seed(world_seed)
    sim, port = await start_arm_sim(w)
    sites = {
        f"s{i}": {
            "resource_group": "rg-vpn",
            "local_network_gateway": f"lng-{i}",
            "connection": f"conn-{i}",
        }
        for i in range(200)
    }
    settings = azure_settings(prefix, tmp_path, port, watcher={"interval": 1, "read_share": 0.1})
    settings.sites.update(
        {k: type(settings.sites["home"]).model_validate(v) for k, v in sites.items()}
    )
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    watcher = TunnelWatcher(services, settings.watcher)
    stop = asyncio.Event()
    lease = services.state.leader_lease("pollers", ttl=15)
    began = time.monotonic()
    task = asyncio.create_task(run_pollers([watcher], lease, stop, tick=1.0))
    try:
        await asyncio.sleep(6)
    finally:
        stop.set()
        await task
        await services.azure.close()
        await client.aclose()
        await sim.cleanup()
    elapsed = time.monotonic() - began
    reads = sum(w.counters.reads(c["id"]) for c in connections(w))
    assert watcher.interval == pytest.approx(0.4), "2.5 reads/s: 10 % of 25"
    assert 0.5 * elapsed * 2.5 <= reads <= elapsed * 2.5 + 2, (reads, elapsed)
    read_sites = {c["name"] for c in connections(w) if w.counters.reads(c["id"])}
    assert len(read_sites) == reads, "spread over the connections, none read twice yet"


# --- Azure Monitor ---------------------------------------------------------------------------


def alert(sample: str, **replace: str) -> bytes:
    text = (SAMPLES / sample).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    doc = json.loads(text)
    doc["data"]["essentials"]["alertId"] += "-" + uuid.uuid4().hex  # a new alert each time
    return json.dumps(doc).encode()


METRIC = {"cn-Site-A": "conn-home"}
HEALTH = {"rg-sites": "rg-vpn", "cn-site-b": "conn-home"}


async def post(bot: Bot, body: bytes, token: str = TOKEN) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{bot.base}/hooks/azure-monitor", params={"token": token}, data=body) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("sample", "names"),
    [("metric-fired-tunnel-bandwidth.json", METRIC), ("resource-health-unavailable.json", HEALTH)],
)
async def test_an_azure_monitor_alert_starts_the_same_flow(
    sample: str,
    names: dict[str, str],
    tmp_path: Path,
    prefix: str,
    redis_url: str,
    receiver: Receiver,
) -> None:
    hooks = {"azure_monitor": {"token": TOKEN}}
    async with running_bot(tmp_path, prefix, redis_url, receiver, more={"hooks": hooks}) as bot:
        w = bot.world
        w.drop_tunnel("conn-home", cleared_by=["reset_connection"])
        body = alert(sample, **names)
        assert (await post(bot, body, token="wrong"))[0] == 401
        status, answer = await post(bot, body)
        assert (status, answer) == (202, {"sites": ["home"]})
        status, answer = await post(bot, body)  # Azure retries the same notification
        assert status == 200 and answer["duplicate"] is True
        (record,) = await eventually(lambda: _records(bot, "tunnel.down"), within=20)
        assert record.outcome == "ok" and record.event_source == "azure-monitor"
        assert [p.playbook for p in record.playbooks] == ["verify-tunnel", "reset-connection"]
        assert w.connection_status("conn-home") == "Connected"
        await asyncio.sleep(0.5)
        assert len(await _records(bot, "tunnel.down")) == 1, "a duplicate alert starts nothing"
        assert resets(w) == 1


async def test_an_alert_of_another_schema_is_refused_and_kept(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    hooks = {"azure_monitor": {"token": TOKEN}}
    async with running_bot(tmp_path, prefix, redis_url, receiver, more={"hooks": hooks}) as bot:
        body = (SAMPLES / "budget-other-schema.json").read_bytes()
        status, answer = await post(bot, body)
        assert status == 400 and "schema" in answer["error"]
        (dead,) = await bot.services.queue.dead_letters()
        assert dead.entry_id == "hooks/azure-monitor" and "schema" in dead.reason
        assert "AIP Budget Notification" in dead.raw["body"]


# --- probes ------------------------------------------------------------------------------------


def test_probe_thresholds() -> None:
    spec = parse_probe({"name": "kms", "kind": "tcp", "target": "10.0.0.4:1688",
                        "fail_after": 3, "recover_after": 2})  # fmt: skip
    state, events = ProbeState("", 0, 0), []
    for t, ok in enumerate(
        [True, True, False, False, True, False, False, False, False, True, True]
    ):
        state, event = advance(state, ok, float(t), spec)
        events.append(event)
    # Up after two successes (first sight: nothing to tell), one blip does not count, three
    # failures in a row are a failure, told once; two successes are a recovery.
    assert events == [None, None, None, None, None, None, None, "failed", None, None, "recovered"]
    assert state.state == "up" and state.streak == 2


async def test_probes_through_the_tunnel_reset_it_only_when_a_quorum_fails(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """The tunnel is up as far as Azure knows, but nothing passes (the device's routes are
    gone): two probes behind it fail, and the connection is reset; one probe alone is not
    enough."""
    sites_sim = await start_sites_sim(
        {
            "sites": [
                {
                    "name": "home",
                    "responders": [
                        {"name": "kms", "kind": "tcp", "behind_tunnel": True},
                        {"name": "intranet", "kind": "http", "status": 401, "behind_tunnel": True},
                        {"name": "vpn", "kind": "tcp"},
                    ],
                }
            ]
        }
    )
    ports = sites_sim.ports["home"]
    probes = [
        {"name": "kms", "kind": "tcp", "target": f"127.0.0.1:{ports['kms']}",
         "through_tunnel": True},
        {"name": "intranet", "kind": "http", "url": f"http://127.0.0.1:{ports['intranet']}/",
         "expect": "401", "through_tunnel": True},
        {"name": "vpn", "kind": "tcp", "target": f"127.0.0.1:{ports['vpn']}"},
    ]  # fmt: skip
    for p in probes:
        p.update(interval=0.3, timeout=0.3, fail_after=2, recover_after=1)
    more = {"sites": {"home": {"probes": probes}}}
    try:
        async with running_bot(
            tmp_path, prefix, redis_url, receiver, more=more, reset_cooldown=0
        ) as bot:
            w = bot.world
            w.set_idle("conn-home")  # Azure: Connected, but no bytes move
            await eventually(lambda: _state(bot, "probe.kms.state", "up"), within=10)
            await sites_sim.set_state("home", "kms", up=False)  # one probe alone
            await eventually(lambda: _state(bot, "probe.kms.state", "down"), within=10)
            await asyncio.sleep(1.0)
            assert resets(w) == 0, "one failing probe is below the quorum of 2"
            (told,) = [p for p in receiver.posts if "probe kms fails" in p["title"]]
            assert "a reset needs 2" in told["summary"]
            sites_sim.tie("home", lambda: False)  # now nothing passes the tunnel
            records = await eventually(lambda: _forced(bot), within=15)
            assert resets(w) == 1
            assert "fail through the tunnel" in records[0].reason
            sites_sim.tie("home", None)
            await sites_sim.set_state("home", "kms", up=True)
            await eventually(lambda: _state(bot, "probe.intranet.state", "up"), within=10)
            await asyncio.sleep(1.0)
            assert resets(w) == 1, "recovered probes: nothing more to do"
    finally:
        await sites_sim.close()


async def _forced(bot: Bot) -> list[Any]:
    return [
        r
        for r in await _records(bot, "probe.failed")
        if any(p.playbook == "reset-connection" and p.outcome == "ok" for p in r.playbooks)
    ]


async def _state(bot: Bot, key: str, value: str) -> bool:
    return (await bot.services.state.site_state("home")).get(key) == value


async def _some(items: list[Any]) -> bool:
    return bool(items)


async def test_a_secure_webhook_needs_a_valid_entra_token_too(
    tmp_path: Path, prefix: str, redis_url: str, receiver: Receiver
) -> None:
    """With [hooks.azure_monitor.entra], the URL token is not enough: Azure's bearer token is
    checked against the tenant's keys (a local key set here)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    from bot.sources.azure_monitor import ACTION_GROUPS_APP_ID, SECURE_WEBHOOK_ROLE

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "use": "sig"}
    jwks_file = tmp_path / "keys.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}))
    issuer, audience = "https://login.microsoftonline.com/t1/v2.0", "api://tunnelwarden"
    entra = {"issuer": issuer, "audience": audience, "jwks_file": str(jwks_file)}
    hooks = {"azure_monitor": {"token": TOKEN, "entra": entra}}
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "exp": now + 600,
        "azp": ACTION_GROUPS_APP_ID,
        "roles": [SECURE_WEBHOOK_ROLE],
    }
    bearer = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    async with running_bot(tmp_path, prefix, redis_url, receiver, more={"hooks": hooks}) as bot:
        url = f"{bot.base}/hooks/azure-monitor"
        body = alert("metric-fired-tunnel-bandwidth.json", **METRIC)
        async with aiohttp.ClientSession() as http:
            async with http.post(url, params={"token": TOKEN}, data=body) as resp:
                assert resp.status == 401, "no bearer token"
            forged = jwt.encode(
                claims,
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                algorithm="RS256",
                headers={"kid": "k1"},
            )
            for token in (forged, bearer):
                headers = {"Authorization": f"Bearer {token}"}
                async with http.post(
                    url, params={"token": TOKEN}, data=body, headers=headers
                ) as resp:
                    assert resp.status == (202 if token == bearer else 401)

"""Property: whatever happens in between, the site converges on the last pushed address.

Random interleavings (seeded, so a failure replays) of router pushes, late redeliveries of
old hints, SIGKILLed workers and ARM faults (throttling, 5xx, lost operations, busy
resources). Afterwards, with no further push, the LNG holds the last pushed address, the
tunnel is Connected, and the simulator never saw a write that changed nothing (an LNG PUT
of the address it already held).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.sim.world import World
from tests.azure_world import RG, SUB
from tests.conftest import start_worker
from tests.helpers import eventually
from tests.test_convergence import converged, lng_ip
from tests.test_ip_change_e2e import Bot, Receiver, push, receiver, running_bot

__all__ = ["receiver"]

WORKER = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
max_deliveries = 50
block_ms = 100
grace_period = 1

[scheduler]
tick = 0.2

[policies]
lock_ttl = 1.5
tunnel_timeout = 0.5
tunnel_poll = 0.05
retry_base_delay = 0.2
retry_max_delay = 1.0
max_changes_per_hour = 0

[azure]
cloud = "sim"
endpoint = "http://127.0.0.1:{port}"
subscription_id = "{sub}"
polling_interval = 0.05
retry_backoff_factor = 0.01
settle_timeout = 10

[sites.home]
resource_group = "{rg}"
local_network_gateway = "lng-home"
connection = "conn-home"
"""

POOL = ["203.0.113.41", "203.0.113.42", "203.0.113.43", "198.51.100.44"]
FAULTS: list[dict[str, Any]] = [
    {"kind": "throttle", "method": "PUT", "path": "localNetworkGateways", "retry_after": 0.05},
    {"kind": "error", "method": "GET", "path": "localNetworkGateways", "status": 503},
    {"kind": "error", "method": "PUT", "path": "localNetworkGateways", "status": 500},
    {"kind": "lost_operation", "method": "PUT", "path": "localNetworkGateways"},
    {
        "kind": "error",
        "method": "PUT",
        "path": "localNetworkGateways",
        "status": 409,
        "code": "AnotherOperationInProgress",
    },
    {"kind": "throttle", "method": "GET", "path": "connections", "retry_after": 0},
]


@pytest.mark.parametrize("seed", [11, 23, 37, 41, 59])
async def test_random_interleavings_converge_on_the_last_push(
    seed: int,
    tmp_path: Path,
    prefix: str,
    redis_url: str,
    receiver: Receiver,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    rng = random.Random(seed)
    async with running_bot(tmp_path, prefix, redis_url, receiver, worker=False) as bot:
        w = bot.world
        w.configure(lro_settle_seconds=0.3)
        config = tmp_path / "worker.toml"
        config.write_text(WORKER.format(port=bot.sim_port, sub=SUB, rg=RG))
        workers = {n: start_worker(procs, config, redis_url, prefix, n) for n in ("w1", "w2")}
        pushed: list[str] = []
        log: list[str] = []
        for _ in range(14):
            action = rng.choices(["push", "redeliver", "kill", "fault"], [4, 2, 1, 2])[0]
            if action == "push" or not pushed:
                ip = rng.choice(POOL)
                answer = await push(bot.base, ip, source=f"127.0.0.{rng.randint(2, 250)}")
                assert answer in (f"good {ip}", f"nochg {ip}"), answer
                pushed.append(ip)
                if rng.random() < 0.5:
                    w.set_device("fritzbox-home", public_ip=ip)  # sometimes the router is there
                log.append(f"push {ip}")
            elif action == "redeliver":
                log.append(f"redeliver {await _redeliver(bot, rng)}")
            elif action == "kill":
                name = rng.choice(sorted(workers))
                workers[name].send_signal(signal.SIGKILL)
                workers[name].wait(10)
                workers[name] = start_worker(procs, config, redis_url, prefix, name)
                log.append(f"kill {name}")
            else:
                spec = dict(rng.choice(FAULTS), count=rng.randint(1, 6))
                w.add_fault(**spec)
                log.append(f"fault {spec}")
            await asyncio.sleep(rng.uniform(0, 0.4))

        last = pushed[-1]
        w.faults.clear()  # ARM recovers; the router is where it said it was
        w.set_device("fritzbox-home", public_ip=last)
        try:
            await eventually(lambda: converged(bot, last), within=60, every=0.1)
        except AssertionError:
            state = await bot.services.state.site_state("home")
            raise AssertionError(f"seed {seed}: {log}; LNG {lng_ip(w)}; state {state}") from None
        assert w.counters.totals().redundant == 0, f"seed {seed}: a write changed nothing: {log}"
        assert _lng_puts(w) >= 1


async def _redeliver(bot: Bot, rng: random.Random) -> str:
    """An old hint delivered again, late: a copy of an earlier ip.changed on the stream."""
    entries = await bot.services.redis.xrange(bot.services.keys.stream)
    hints = [json.loads(f[b"event"]) for _, f in entries if b'"ip.changed"' in f[b"event"]]
    if not hints:
        return "nothing yet"
    old = rng.choice(hints)
    copy = {**old, "id": uuid.uuid4().hex, "idempotency_key": f"again-{uuid.uuid4().hex}"}
    await bot.services.queue.publish_fields({"event": json.dumps(copy)})
    return f"observation {old['data']['seq']} ({old['data']['ip']})"


def _lng_puts(w: World) -> int:
    lng = next(r for r in w.dump()["resources"] if r["name"] == "lng-home")
    return w.counters.get(lng["id"]).writes

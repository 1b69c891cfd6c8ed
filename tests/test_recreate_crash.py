"""SIGKILL the worker at each step of ``recreate``; a new worker must finish with one identical
connection. The worker is a real process; it talks to the simulator over loopback."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.events import Event
from bot.services import Services
from bot.sim.arm import start_arm_sim
from tests.azure_world import NEW_IP, RG, SHARED_KEY, SUB, world
from tests.conftest import start_worker
from tests.helpers import eventually
from tests.test_azure_playbooks import connections, lng_of, settings_of

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

[sites.home]
resource_group = "{rg}"
local_network_gateway = "lng-home"
connection = "conn-home"
"""


@pytest.mark.parametrize(
    "step", ["snapshot", "delete-connection", "update-lng", "create-connection"]
)
async def test_sigkill_at_each_recreate_step_ends_with_one_identical_connection(
    step: str,
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    w = world()
    # Slow every long-running operation, and make the snapshot's key read wait, so that
    # each step lasts long enough to be killed in the middle of.
    w.configure(lro_polls=6, lro_settle_seconds=2.0)
    w.add_fault(kind="throttle", method="GET", path="sharedkey", count=1, retry_after=0.8)
    runner, port = await start_arm_sim(w)
    try:
        before = settings_of(connections(w)[0])
        w.set_device("fritzbox-home", public_ip=NEW_IP)
        config = tmp_path / "tw.toml"
        config.write_text(CONFIG.format(port=port, sub=SUB, rg=RG))
        journal_key = Fernet.generate_key().decode()

        def start(name: str) -> subprocess.Popen[bytes]:
            return start_worker(
                procs,
                config,
                redis_url,
                prefix,
                name,
                TUNNELWARDEN_SECURITY__JOURNAL_KEY=journal_key,
            )

        event = Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={
                "playbook": "recreate-connection",
                "params": {"ip": NEW_IP},
                "confirm_destructive": True,
            },
        )
        await services.queue.publish(event)
        first = start("first")

        async def in_step() -> bool:
            journal = await services.state.journal("home", event.id)
            return any(e.step == step and e.phase == "start" for e in journal)

        await eventually(in_step, within=30, every=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        journal = await services.state.journal("home", event.id)
        assert not any(e.step == step and e.phase == "done" for e in journal), "killed too late"

        start("second")
        record = await eventually(lambda: services.state.recorded("home", event.id), within=30)

        assert record.outcome == "ok", record
        assert record.attempt == 2 and record.worker == "second"
        (conn,) = connections(w)
        assert settings_of(conn) == before, "the re-created connection differs"
        assert conn["sim"]["sharedKey"] == SHARED_KEY
        assert lng_of(w)["properties"]["gatewayIpAddress"] == NEW_IP
        assert w.connection_status("conn-home") == "Connected"
        assert [r.run_id for r in await services.state.history("home", 10)] == [event.id]
        raw = b"".join(await services.redis.lrange(services.keys.journal("home", event.id), 0, -1))  # type: ignore[misc]
        assert SHARED_KEY.encode() not in raw
    finally:
        await runner.cleanup()

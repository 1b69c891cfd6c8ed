"""Real worker processes: SIGKILL mid-run is resumed by another; SIGTERM drains or hands back."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from bot.events import Event
from bot.services import Services
from tests.conftest import start_worker
from tests.helpers import eventually

CONFIG = """
[worker]
visibility_timeout = 1.0
reclaim_interval = 0.2
max_deliveries = 5
block_ms = 100
grace_period = {grace}

[policies]
lock_ttl = 1.5
lock_wait = 30
"""


def write_config(tmp_path: Path, grace: float) -> Path:
    path = tmp_path / "tw.toml"
    path.write_text(CONFIG.format(grace=grace))
    return path


async def step_done(services: Services, site: str, run_id: str, step: str) -> bool:
    journal = await services.state.journal(site, run_id)
    return any(e.step == step and e.phase == "done" for e in journal)


async def test_sigkill_mid_run_is_resumed_by_another_worker(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    config = write_config(tmp_path, grace=5)
    event = Event.new("test.sleep", "home", source="test", data={"seconds": 0.7, "steps": 3})
    await services.queue.publish(event)
    first = start_worker(procs, config, redis_url, prefix, "first")
    await eventually(lambda: step_done(services, "home", event.id, "sleep-1"))
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert await services.state.recorded("home", event.id) is None, "killed before recording"

    start_worker(procs, config, redis_url, prefix, "second")
    record = await eventually(lambda: services.state.recorded("home", event.id))

    assert record.outcome == "ok"
    assert record.worker == "second"
    assert record.attempt == 2
    history = await services.state.history("home", 10)
    assert [r.run_id for r in history] == [event.id], "exactly one recorded result"
    journal = await services.state.journal("home", event.id)
    phases = [(e.worker, e.step, e.phase) for e in journal]
    assert ("second", ":run", "resumed") in phases
    # The step finished before the kill is not run again; the rest are run by the second.
    assert [p for p in phases if p[1] == "sleep-1"] == [
        ("first", "sleep-1", "start"),
        ("first", "sleep-1", "done"),
    ]
    assert ("second", "sleep-3", "done") in phases
    assert phases[-1] == ("second", ":playbook", "done")
    stats = await services.queue.stats()
    assert stats["pending"] == 0 and stats["lag"] == 0


async def test_sigterm_lets_the_current_run_finish_and_exits_zero(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    config = write_config(tmp_path, grace=10)
    event = Event.new("test.sleep", "home", source="test", data={"seconds": 0.5, "steps": 2})
    await services.queue.publish(event)
    worker = start_worker(procs, config, redis_url, prefix, "w")
    await eventually(lambda: step_done(services, "home", event.id, "sleep-1"))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    record = await services.state.recorded("home", event.id)
    assert record is not None and record.outcome == "ok" and record.attempt == 1


async def test_sigterm_hands_back_a_run_longer_than_the_grace_period(
    services: Services,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    config = write_config(tmp_path, grace=0.5)
    event = Event.new("test.sleep", "home", source="test", data={"seconds": 2, "steps": 2})
    await services.queue.publish(event)
    worker = start_worker(procs, config, redis_url, prefix, "leaving", capture_logs=True)
    await eventually(lambda: step_done(services, "home", event.id, "sleep-1"))
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - began < 3, "shutdown overran the grace period"
    assert await services.state.recorded("home", event.id) is None
    stderr = (worker.stderr.read() if worker.stderr else b"").decode()
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("handed back 1 unfinished run" in rec["msg"] for rec in logs)

    start_worker(procs, config, redis_url, prefix, "successor")
    record = await eventually(lambda: services.state.recorded("home", event.id))
    assert record.worker == "successor" and record.outcome == "ok"
    journal = await services.state.journal("home", event.id)
    assert [e.worker for e in journal if e.step == "sleep-1" and e.phase == "done"] == ["leaving"]

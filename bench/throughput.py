"""Queue throughput: how fast ONE worker process drains N pre-published no-op events.

For each contender the same private Redis is flushed, N jobs are queued, and then one worker
process is started. The rate is counted from the first moment the worker has taken work to
the moment every job is finished (recorded and acknowledged), polling one cheap command every
5 ms; the process start-up time is reported beside it.

- tunnelwarden: ``tunnelwarden worker`` (the real console script, default settings unless a
  variant says otherwise) on ``test.noop`` events with distinct idempotency keys, spread
  round-robin over 50 sites (one site's runs are serialised by its lock, by design). Each
  event goes the whole way: dedup check, site state, handler, site lock, journal, the
  ``noop`` playbook's plan (converged), the run record (MULTI with the history entry), ack.
- saq / arq: see bench.peers.
- ceiling: a synchronous redis-py loop on the same stream of the same events: XREADGROUP
  COUNT 100 pipelined with the XACK of the previous batch (one round trip per 100 events),
  and the naive 1-event loop (XREADGROUP COUNT 1 + XACK: two round trips per event).
"""

from __future__ import annotations

import asyncio
import bisect
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from bench import peers
from bench.common import (
    SITES,
    BenchError,
    PrivateRedis,
    clean_env,
    publish_noops,
    stop_process,
    tunnelwarden_script,
)
from bot.keys import Keys

PREFIX = "bench"
KEYS = Keys(PREFIX)
POLL_S = 0.005
XADD_ARGS = ["XADD", "rb", "*", "f", "v"]


@dataclass
class Drain:
    name: str
    n: int
    rate: float  # events/s from the first work taken until all finished
    drain_s: float
    startup_s: float  # process start until the first work was taken
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_ms_per_job: float = 0.0  # the worker process, user + system
    redis_cpu_ms_per_job: float = 0.0


Probe = Callable[[redis.Redis], tuple[bool, int]]  # (work taken yet?, jobs not finished)


def _measure(
    name: str,
    server: PrivateRedis,
    n: int,
    cmd: list[str],
    env: dict[str, str],
    probe: Probe,
    *,
    burst: bool,
    timeout: float,
) -> Drain:
    client = server.client()
    log = (server.directory / f"{name.replace(' ', '_')}.log").open("wb")
    spawned = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=server.directory, stdout=log, stderr=log)
    cpu = _Cpu(proc.pid, server.proc.pid)
    try:
        first: float | None = None
        remaining_at_first = n
        deadline = spawned + timeout
        while True:
            started, remaining = probe(client)
            now = time.perf_counter()
            if first is None and started:
                first, remaining_at_first = now, remaining
                cpu.start()
            if first is not None and remaining == 0:
                cpu.stop()
                break
            if proc.poll() is not None:  # a burst worker may finish between two probes
                if first is not None and probe(client)[1] == 0:
                    now = time.perf_counter()
                    break
                raise BenchError(f"{name}: worker exited with {proc.returncode}; see {log.name}")
            if now > deadline:
                raise BenchError(f"{name}: {remaining} of {n} jobs left after {timeout:.0f}s")
            time.sleep(POLL_S)
        end = now
        if burst:
            proc.wait(30)
            code = proc.returncode
        else:
            code = stop_process(proc)
        if code != 0:
            raise BenchError(f"{name}: worker exited with {code}; see {log.name}")
    finally:
        stop_process(proc, 5)
        log.close()
        client.close()
    drain_s = end - first
    result = Drain(name, n, remaining_at_first / drain_s, drain_s, first - spawned)
    result.cpu_ms_per_job, result.redis_cpu_ms_per_job = cpu.per_job(remaining_at_first)
    return result


class _Cpu:
    """CPU seconds (user + system) of the worker and of redis-server during the drain."""

    def __init__(self, worker: int, server: int) -> None:
        import psutil

        self.procs = [psutil.Process(worker), psutil.Process(server)]
        self.begin = [0.0, 0.0]
        self.end = [0.0, 0.0]

    @staticmethod
    def _seconds(proc: Any) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self.begin = [self._seconds(p) for p in self.procs]

    def stop(self) -> None:
        self.end = [self._seconds(p) for p in self.procs]

    def per_job(self, jobs: int) -> tuple[float, float]:
        """CPU ms per job; NaN when the worker was gone before it could be read."""
        if self.end == [0.0, 0.0]:
            return float("nan"), float("nan")
        worker, server = (
            1000 * (e - b) / max(jobs, 1) for b, e in zip(self.begin, self.end, strict=True)
        )
        return worker, server


def stream_probe(ids: list[bytes], keys: Keys = KEYS) -> Probe:
    """Unfinished = delivered-but-unacknowledged + not yet delivered (Redis 6.2 has no lag).

    Fails fast when the worker notes an error against an entry (it would retry, then
    dead-letter it, long after): a benchmark of a broken worker is broken.
    """
    order = sorted(_id_key(i) for i in ids)

    def probe(client: redis.Redis) -> tuple[bool, int]:
        pipe = client.pipeline(transaction=False)
        pipe.xinfo_groups(keys.stream)
        pipe.hgetall(keys.errors)
        pipe.xlen(keys.dead)
        groups, errors, dead = pipe.execute()
        if errors or dead:
            first = next(iter(errors.values()), b"").decode(errors="replace")[:500]
            raise BenchError(f"the worker failed on an event ({dead} dead letters): {first}")
        group = next(g for g in groups if _text(g["name"]) == keys.group)
        last = _id_key(group["last-delivered-id"])
        undelivered = len(order) - bisect.bisect_right(order, last)
        return last != (0, 0), int(group["pending"]) + undelivered

    return probe


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _prepare_stream(server: PrivateRedis, n: int) -> list[bytes]:
    server.flush()
    client = server.client()
    client.xgroup_create(KEYS.stream, KEYS.group, id="0", mkstream=True)
    ids = publish_noops(client, KEYS.stream, n)
    client.close()
    return ids


def tunnelwarden_env(server: PrivateRedis, **settings: str) -> dict[str, str]:
    return clean_env(
        TUNNELWARDEN_REDIS_URL=server.url,
        TUNNELWARDEN_REDIS__PREFIX=PREFIX,
        TUNNELWARDEN_LOG__FORMAT="json",
        **{f"TUNNELWARDEN_{k.upper()}": v for k, v in settings.items()},
    )


def _check_recorded(server: PrivateRedis, n: int, name: str) -> None:
    client = server.client()
    try:
        recorded = sum(int(client.xlen(KEYS.history(f"site{s:02d}"))) for s in range(SITES))
        dead = int(client.xlen(KEYS.dead))
    finally:
        client.close()
    if recorded != n or dead:
        raise BenchError(f"{name}: {recorded} of {n} runs recorded, {dead} dead letters")


def tunnelwarden(
    server: PrivateRedis, n: int, name: str = "tunnelwarden", **settings: str
) -> Drain:
    ids = _prepare_stream(server, n)
    result = _measure(
        name,
        server,
        n,
        [tunnelwarden_script(), "worker"],
        tunnelwarden_env(server, **settings),
        stream_probe(ids),
        burst=False,
        timeout=max(120.0, n / 20),
    )
    _check_recorded(server, n, name)
    result.extra = dict(settings)
    return result


def saq(server: PrivateRedis, n: int, concurrency: int = 10) -> Drain:
    server.flush()
    asyncio.run(peers.enqueue_saq(server.url, n))

    def probe(client: redis.Redis) -> tuple[bool, int]:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"saq:{peers.SAQ_QUEUE}:active")
        pipe.zcard(f"saq:{peers.SAQ_QUEUE}:incomplete")
        active, remaining = pipe.execute()
        return active > 0 or remaining < n, int(remaining)

    cmd = [sys.executable, "-m", "bench.peers", "saq", server.url, f"--concurrency={concurrency}"]
    result = _measure("saq", server, n, cmd, clean_env(), probe, burst=True, timeout=300)
    result.extra = {"concurrency": concurrency}
    return result


def arq(server: PrivateRedis, n: int, max_jobs: int = 10, poll_delay: float = 0.5) -> Drain:
    server.flush()
    asyncio.run(peers.enqueue_arq(server.url, n))

    def probe(client: redis.Redis) -> tuple[bool, int]:
        remaining = int(client.zcard(peers.ARQ_QUEUE))
        return remaining < n, remaining  # a job leaves the set when it finishes

    cmd = [
        sys.executable,
        "-m",
        "bench.peers",
        "arq",
        server.url,
        f"--concurrency={max_jobs}",
        f"--poll-delay={poll_delay}",
    ]
    name = "arq" if poll_delay == 0.5 else f"arq poll_delay={poll_delay:g}"
    result = _measure(name, server, n, cmd, clean_env(), probe, burst=True, timeout=600)
    result.extra = {"max_jobs": max_jobs, "poll_delay": poll_delay}
    return result


def ceiling(server: PrivateRedis, n: int) -> dict[str, float]:
    """Raw stream rates from one synchronous redis-py client (hiredis) on the same events."""
    server.flush()
    client = server.client()
    stream, group = "ceiling", "g"
    try:
        t0 = time.perf_counter()
        publish_noops(client, stream, n)
        xadd_s = time.perf_counter() - t0
        client.xgroup_create(stream, group, id="0")
        t0 = time.perf_counter()
        done, to_ack = 0, list[bytes]()
        while done < n or to_ack:
            pipe = client.pipeline(transaction=False)
            if to_ack:
                pipe.xack(stream, group, *to_ack)
            pipe.xreadgroup(group, "c", {stream: ">"}, count=100)
            reply = pipe.execute()[-1]
            to_ack = [entry_id for entry_id, _ in reply[0][1]] if reply else []
            done += len(to_ack)
        batched_s = time.perf_counter() - t0
        naive_n = min(n, 5000)
        client.xgroup_create(stream, "naive", id="0")
        t0 = time.perf_counter()
        for _ in range(naive_n):
            one: Any = client.xreadgroup("naive", "c", {stream: ">"}, count=1)
            client.xack(stream, "naive", one[0][1][0][0])
        naive_s = time.perf_counter() - t0
    finally:
        client.close()
    return {
        "xadd_pipelined": n / xadd_s,
        "drain_batched": n / batched_s,
        "drain_one_by_one": naive_n / naive_s,
    }


def redis_benchmark(server: PrivateRedis, n: int = 200_000) -> dict[str, float]:
    """The server's own figure for XADD (``redis-benchmark -P 16``), if the tool is present."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return {}
    server.flush()
    out: dict[str, float] = {}
    for label, args in (("xadd_p16", ["-P", "16"]), ("xadd_p1_c1", ["-c", "1"])):
        count = n if label == "xadd_p16" else n // 10
        run = subprocess.run(
            [tool, "-s", str(server.socket), "-n", str(count), *args, "-q", *XADD_ARGS],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = re.findall(r"([\d.]+) requests per second", run.stdout)
        if found:
            out[label] = float(found[-1])
    return out


def round_trips(server: PrivateRedis, n: int) -> dict[str, Any]:
    """Redis round trips (client side) and commands (server side) per event of our worker."""
    ids = _prepare_stream(server, n)
    client = server.client()
    client.config_resetstat()
    rtt_file = server.directory / "rtt.count"
    rtt_file.unlink(missing_ok=True)
    env = tunnelwarden_env(server)
    env["BENCH_RTT_FILE"] = str(rtt_file)
    probe = stream_probe(ids)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.rtt_worker"],
        env=env,
        cwd=server.directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probes = 0
    try:
        deadline = time.monotonic() + max(120.0, n / 20)
        while probe(client)[1] > 0:
            probes += 1
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("round-trip count: the worker did not drain the stream")
            time.sleep(0.02)
        probes += 1
        stats = client.info("commandstats")
    finally:
        stop_process(proc)
        client.close()
    try:
        rtts = int(rtt_file.read_text())
    except (OSError, ValueError):
        raise BenchError("round-trip count: the worker wrote no count") from None
    commands = {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name.removeprefix("cmdstat_") not in ("xinfo", "config", "info", "client")
    }
    for ours in ("hgetall", "xlen"):  # each probe: XINFO GROUPS + HGETALL errors + XLEN dead
        commands[ours] = commands.get(ours, 0) - probes
    commands = {k: v for k, v in commands.items() if v > 0}
    total = sum(commands.values())
    return {
        "n": n,
        "round_trips_per_event": rtts / n,
        "commands_per_event": total / n,
        "commands": {k: round(v / n, 2) for k, v in sorted(commands.items(), key=lambda x: -x[1])},
    }

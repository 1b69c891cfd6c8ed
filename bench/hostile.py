"""Hostile traffic on the public listener: does the bot stay responsive?

``tunnelwarden run`` (50 sites) on the bench Redis. Ten connections keep sending the request
line that used to freeze the event loop (``GET /nic/update?q=`` + 8,100 letters + a control
character: quadratic redaction of every log line, an ERROR traceback each); meanwhile the admin
listener's ``/healthz`` is timed every 20 ms. The peer is the same bot with no attack (``idle``),
measured in the same run: the ratio says what the flood costs a probe.

    python bench/hostile.py [--quick]
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PrivateRedis, percentile, private_redis
from bench.footprint import Bot

ATTACK = b"GET /nic/update?q=" + b"A" * 8100 + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n"


def _probe(port: int, seconds: float) -> list[float]:
    """/healthz round trips (ms), one every 20 ms, for ``seconds``."""
    out: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        began = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            resp.read()
        out.append((time.perf_counter() - began) * 1000)
        time.sleep(0.02)
    return out


def _attacker(port: int, until: float, sent: list[int]) -> None:
    n = 0
    while time.perf_counter() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(ATTACK)
                s.recv(1024)
            n += 1
        except OSError:
            time.sleep(0.01)
    sent.append(n)


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "samples": len(samples),
    }


def measure(server: PrivateRedis, seconds: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="twbench-hostile-") as tmp:
        server.flush()
        bot = Bot(server, Path(tmp))
        try:
            bot.wait_ready()
            idle = _probe(bot.port, seconds)
            until = time.perf_counter() + seconds
            sent: list[int] = []
            threads = [
                threading.Thread(target=_attacker, args=(bot.public_port, until, sent))
                for _ in range(10)
            ]
            for t in threads:
                t.start()
            flood = _probe(bot.port, seconds)
            for t in threads:
                t.join()
        finally:
            bot.stop()
    idle_s, flood_s = _summary(idle), _summary(flood)
    return {
        "connections": 10,
        "attack_requests": sum(sent),
        "seconds": seconds,
        "idle": idle_s,
        "flood": flood_s,
        "p99_ratio": round(flood_s["p99_ms"] / idle_s["p99_ms"], 2) if idle_s["p99_ms"] else None,
    }


if __name__ == "__main__":
    with private_redis() as srv:
        print(json.dumps(measure(srv, 2.0 if "--quick" in sys.argv[1:] else 5.0), indent=2))

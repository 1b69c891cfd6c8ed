"""Hardening (issue 9), the remaining checks: the two listeners and the admin token against a
real ``tunnelwarden run``, the no-persistence warning where people read it, the bounded
waiting connection pool (plain URL and Sentinel) when it runs dry, and the device drivers on
the process's one redactor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.app import open_services
from bot.config import Settings
from bot.embedded import find_redis_server
from bot.http import Health, create_admin_app, start_http
from bot.redact import process_redactor
from bot.redisconn import from_url
from bot.services import Services
from playbooks.devices.common import DeviceUnavailable, Reply
from playbooks.devices.rras import PypsrpTransport
from playbooks.devices.sonicwall import SonicWall
from tests.conftest import make_settings, start_private_redis, tunnelwarden
from tests.helpers import eventually, free_port
from tests.test_redis_urls import BASE, servers, start, wait_port

__all__ = ["servers"]

TOKEN = "admin-Token-7f3c9e1d5b"
PUSH_PASSWORD = "push-Pass-2c81"


@pytest.fixture
def bare_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server with neither AOF nor RDB."""
    directory = tmp_path / "redis"
    directory.mkdir()
    proc, url = start_private_redis(directory)
    yield url
    proc.terminate()
    proc.wait(10)


def run_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    env.update(
        {
            "TUNNELWARDEN_REDIS__URL": redis_url,
            "TUNNELWARDEN_REDIS__STATE_DIR": str(tmp_path / "state"),
            "TUNNELWARDEN_HTTP__PORT": str(free_port()),
            "TUNNELWARDEN_ADMIN__PORT": str(free_port()),
            "TUNNELWARDEN_ADMIN__TOKEN": TOKEN,
            "TUNNELWARDEN_WORKER__BLOCK_MS": "100",
            "TUNNELWARDEN_LOG__LEVEL": "DEBUG",
            "TUNNELWARDEN_LOG__FORMAT": "text",
            "TUNNELWARDEN_SITES__HOME__DESCRIPTION": "a site",
            "TUNNELWARDEN_SITES__HOME__PUSH__HOSTNAME": "home.vpn.example.test",
            "TUNNELWARDEN_SITES__HOME__PUSH__USERNAME": "home",
            "TUNNELWARDEN_SITES__HOME__PUSH__PASSWORD": PUSH_PASSWORD,
        }
    )
    return env


async def status_of(url: str, token: str | None = None, method: str = "GET") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, url, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


def spawn(command: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*tunnelwarden(), command], env=env, stderr=subprocess.PIPE, cwd=cwd)


async def ready(admin: str) -> bool:
    return await status_of(f"{admin}/readyz") == 200


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code, (proc.stderr.read() if proc.stderr else b"").decode()


async def test_public_listener_hides_admin_routes_and_the_admin_token_is_enforced(
    tmp_path: Path, bare_redis: str
) -> None:
    env = run_env(tmp_path, bare_redis)
    public = f"http://127.0.0.1:{env['TUNNELWARDEN_HTTP__PORT']}"
    admin = f"http://127.0.0.1:{env['TUNNELWARDEN_ADMIN__PORT']}"
    proc = spawn("run", env, tmp_path)
    try:
        await eventually(lambda: ready(admin), within=20)
        for path in ("/metrics", "/readyz", "/healthz", "/runs/home/any-run"):
            assert await status_of(public + path) == 404, path
            assert await status_of(public + path, TOKEN) == 404, path
        assert await status_of(f"{public}/nic/update") == 401  # the public face is there
        assert await status_of(f"{public}/nic/update", method="POST") == 405  # GET only
        for path in ("/metrics", "/runs/home/any-run"):
            assert await status_of(admin + path) == 401, path
            assert await status_of(admin + path, "wrong-" + TOKEN) == 401, path
            assert await status_of(admin + path, TOKEN[:-1]) == 401, path
        assert await status_of(f"{admin}/metrics", TOKEN) == 200
        assert await status_of(f"{admin}/runs/home/any-run", TOKEN) == 404  # past the token
        assert await status_of(f"{admin}/healthz") == 200  # the probes stay open
    finally:
        code, logs = stop(proc)
    assert code == 0, logs[-3000:]
    assert "admin: listening" in logs
    assert TOKEN not in logs, "the admin token was logged"
    assert PUSH_PASSWORD not in logs


async def test_a_redis_without_persistence_is_warned_about_in_the_log_and_in_status(
    tmp_path: Path, bare_redis: str
) -> None:
    env = run_env(tmp_path, bare_redis)
    admin = f"http://127.0.0.1:{env['TUNNELWARDEN_ADMIN__PORT']}"
    proc = spawn("run", env, tmp_path)
    try:
        await eventually(lambda: ready(admin), within=20)
        status = await asyncio.to_thread(
            subprocess.run,
            [*tunnelwarden(), "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
    finally:
        code, logs = stop(proc)
    assert code == 0, logs[-3000:]
    assert "redis has no persistence (neither AOF nor RDB)" in logs
    assert status.returncode == 0, status.stderr
    warned = " ".join(status.stderr.split())  # rich may wrap the line
    assert "warning: Redis keeps nothing on disk (no AOF, no RDB)" in warned, status.stderr


async def _hold(client: Redis, key: str, n: int, seconds: int) -> list[asyncio.Task[object]]:
    """Take every connection of the pool with blocking commands that end after ``seconds``."""
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(client.blpop([f"{key}:{i}"], timeout=seconds)) for i in range(n)
    ]

    async def all_taken() -> bool:
        pool = client.connection_pool
        return len(pool._in_use_connections) >= n  # type: ignore[attr-defined]

    await eventually(all_taken, within=10)
    return tasks


async def _exhaust_and_recover(client: Redis, key: str) -> None:
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == 4 and pool.timeout == 0.2
    held = await _hold(client, key, 4, 2)
    with pytest.raises(RedisConnectionError, match="No connection available"):
        await client.ping()  # waits pool_timeout for a connection, then a clear error
    await asyncio.gather(*held)  # the blocking commands end: connections come back
    assert await client.ping() is True, "the pool works again"


def small_pool(settings: Settings) -> Settings:
    settings.redis.max_connections = 4
    settings.redis.pool_timeout = 0.2
    return settings


async def test_an_exhausted_pool_times_out_cleanly_and_admin_answers_503(
    tmp_path: Path, prefix: str, redis_url: str
) -> None:
    settings = small_pool(make_settings(prefix, tmp_path))
    client = from_url(redis_url, settings.redis)
    services = Services.build(settings, client)
    health = Health(services, None)
    runner, port = await start_http(create_admin_app(services, health), "127.0.0.1", 0)
    run_url = f"http://127.0.0.1:{port}/runs/home/any-run"
    try:
        await _exhaust_and_recover(client, f"{prefix}:hold")
        held = await _hold(client, f"{prefix}:hold2", 4, 2)
        assert await status_of(run_url) == 503, "a clear busy answer, not a 500"
        await asyncio.gather(*held)
        assert await status_of(run_url) == 404, "answers again once connections are free"
    finally:
        await runner.cleanup()
        await client.aclose()


async def test_the_sentinel_pool_is_bounded_and_waits(
    servers: list[subprocess.Popen[bytes]], tmp_path: Path, prefix: str
) -> None:
    binary = find_redis_server()
    assert binary
    master, sentinel = free_port(), free_port()
    start(servers, binary, "--port", str(master), "--dir", str(tmp_path), *BASE)
    wait_port(master, servers[-1])
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor twmaster 127.0.0.1 {master} 1\n"
    )
    start(servers, binary, str(conf), "--sentinel")
    wait_port(sentinel, servers[-1])
    settings = small_pool(make_settings(prefix, tmp_path))
    client = from_url(f"redis+sentinel://127.0.0.1:{sentinel}/twmaster/0", settings.redis)
    try:
        await _exhaust_and_recover(client, f"{prefix}:hold")
    finally:
        await client.aclose()


async def test_device_drivers_use_the_process_redactor(
    tmp_path: Path, prefix: str, redis_url: str
) -> None:
    settings = make_settings(prefix, tmp_path)
    async with open_services(settings, redis_url) as services:
        assert process_redactor() is services.redact
        firewall = SonicWall("http://127.0.0.1:9", "admin", "sonic-Pass-4821", name="fw")
        winrm = PypsrpTransport("127.0.0.1", "vpnadmin", "winrm-Pass-9134", ssl=False)
        # The drivers' secrets are masked everywhere the process writes (logs, chat...) ...
        assert services.redact("sonic-Pass-4821 winrm-Pass-9134") == "*** ***"
        # ... and a secret the process learns later is masked in the drivers' messages.
        services.redact.add("learnt-Later-5573")
        assert firewall.scrub("device said learnt-Later-5573") == "device said ***"
        assert winrm._redact("winrm said learnt-Later-5573") == "winrm said ***"


def test_device_retry_after_goes_through_the_one_parser() -> None:
    """A device's Retry-After is read by ``bot.retry.parse_retry_after``: delta-seconds and
    HTTP-dates, any header case; garbage means no hint."""
    firewall = SonicWall("http://127.0.0.1:9", "admin", "sonic-Pass-4821", name="fw")
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    dated = firewall.fail(Reply(503, {"retry-after": in_an_hour}, b""), "GET /x")
    assert isinstance(dated, DeviceUnavailable)
    assert dated.retry_after is not None and 3000 < dated.retry_after <= 3600
    assert firewall.fail(Reply(429, {"Retry-After": "7"}, b""), "GET /x").retry_after == 7.0
    assert firewall.fail(Reply(503, {"Retry-After": "soon"}, b""), "GET /x").retry_after is None

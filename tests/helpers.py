"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.services import Services


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 15.0, every: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def done_run(services: Services, site: str, key: str) -> str | None:
    """The run id that handled ``key``, as the record script stored it (its done key)."""
    value = await services.redis.get(services.keys.done(site, key))
    return None if value is None else value.decode()

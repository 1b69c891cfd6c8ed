"""``tcp`` probe: up when a TCP connection to ``target`` opens within the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bot.probes.models import TcpProbe
from bot.probes.result import ProbeResult, from_os_error

__all__ = ["probe_tcp"]


async def probe_tcp(spec: TcpProbe) -> ProbeResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            _, writer = await asyncio.open_connection(spec.host, spec.port)
    except TimeoutError:
        return ProbeResult.down(
            "timeout", f"no TCP connection to {spec.target} in {spec.timeout:g}s"
        )
    except OSError as exc:
        return from_os_error(exc, spec.target)
    latency = time.perf_counter() - started
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    return ProbeResult.up(latency, f"connected to {spec.target} in {latency * 1000:.1f} ms")

"""``probe(spec)``: run one probe of any kind; never raises, always returns in time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.probes.dns import probe_dns
from bot.probes.http import probe_http
from bot.probes.icmp import probe_icmp
from bot.probes.ikev2 import probe_ikev2
from bot.probes.models import AnyProbe
from bot.probes.result import ProbeResult
from bot.probes.tcp import probe_tcp

__all__ = ["GRACE", "ProbeResult", "probe"]

log = logging.getLogger(__name__)

#: Seconds a probe may overrun its ``timeout`` (closing sockets, scheduling) before it is cut.
GRACE = 1.0

_RUNNERS: dict[str, Callable[[Any], Awaitable[ProbeResult]]] = {
    "tcp": probe_tcp,
    "http": probe_http,
    "icmp": probe_icmp,
    "dns": probe_dns,
    "ikev2": probe_ikev2,
}


async def probe(spec: AnyProbe) -> ProbeResult:
    """Run ``spec`` once. Network faults become failed results; so does a bug, logged."""
    try:
        async with asyncio.timeout(spec.timeout + GRACE):
            return await _RUNNERS[spec.kind](spec)
    except TimeoutError:
        return ProbeResult.down("timeout", f"{spec.kind} probe {spec.name!r} overran its timeout")
    except Exception as exc:
        log.exception("probe %r (%s) failed unexpectedly", spec.name, spec.kind)
        return ProbeResult.down("error", f"{type(exc).__name__}: {exc}")

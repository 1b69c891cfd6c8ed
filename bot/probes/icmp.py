"""``icmp`` probe: one echo request over an unprivileged ping socket (``icmplib``).

Linux allows ``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`` only to groups inside the sysctl
``net.ipv4.ping_group_range`` (empty, ``1 0``, on many distributions). Where it is not allowed
the probe answers ``reason="permission"`` and says how to enable it; it never needs root.
"""

from __future__ import annotations

import asyncio

import icmplib  # type: ignore[import-untyped]

from bot.probes.models import IcmpProbe
from bot.probes.result import ProbeResult

__all__ = ["PERMISSION_HINT", "probe_icmp"]

PERMISSION_HINT = (
    "unprivileged ICMP (ping) sockets are not allowed for this process's group: widen the sysctl "
    'net.ipv4.ping_group_range (e.g. sysctl -w net.ipv4.ping_group_range="0 2147483647", or '
    'docker run --sysctl net.ipv4.ping_group_range="0 2147483647") or grant CAP_NET_RAW'
)


async def probe_icmp(spec: IcmpProbe) -> ProbeResult:
    try:
        async with asyncio.timeout(spec.timeout + 0.5):
            host = await icmplib.async_ping(
                spec.target, count=1, timeout=spec.timeout, privileged=False
            )
    except icmplib.SocketPermissionError:
        return ProbeResult.down("permission", PERMISSION_HINT)
    except PermissionError:
        return ProbeResult.down("permission", PERMISSION_HINT)
    except icmplib.NameLookupError:
        return ProbeResult.down("resolve_failed", f"cannot resolve {spec.target}")
    except TimeoutError:
        return ProbeResult.down("timeout", f"no echo reply from {spec.target} in {spec.timeout:g}s")
    except (icmplib.ICMPLibError, OSError) as exc:
        return ProbeResult.down("error", f"ping {spec.target}: {exc}")
    if not host.is_alive:
        return ProbeResult.down("timeout", f"no echo reply from {spec.target} in {spec.timeout:g}s")
    latency = float(host.avg_rtt) / 1000.0
    return ProbeResult.up(latency, f"echo reply from {host.address} in {latency * 1000:.1f} ms")

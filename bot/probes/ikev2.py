"""``ikev2`` probe: one IKE_SA_INIT to ``target``; up on any valid IKEv2 answer for our SPI.

Answers that refuse us (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, COOKIE, ...) still prove the
IKE service alive. The socket is connected, so an ICMP port-unreachable comes back as
``ConnectionRefusedError``: the host is up but nothing listens on the IKE port. Datagrams with
another SPI, or that are no IKEv2 response at all, are ignored until the timeout.

Each request leaves a half-open SA on the responder until it expires; strongSwan stops answering
a peer with 5 of them, so probe a target at most every 30-60 s (see ``Ikev2Probe.warnings``).
"""

from __future__ import annotations

import asyncio
import time

from bot.probes import ike
from bot.probes.models import Ikev2Probe
from bot.probes.result import ProbeResult, from_os_error

__all__ = ["probe_ikev2"]


class _Exchange(asyncio.DatagramProtocol):
    """Waits for the first datagram that answers our SPI, or a socket error."""

    def __init__(self, spi_i: bytes) -> None:
        self.spi_i = spi_i
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ignored = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        description = ike.describe_reply(data, self.spi_i)
        if description is None:
            self.ignored += 1
        elif not self.answer.done():
            self.answer.set_result(description)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def probe_ikev2(spec: Ikev2Probe) -> ProbeResult:
    request = ike.build_sa_init()
    exchange = _Exchange(request[:8])
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    transport: asyncio.DatagramTransport | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: exchange, remote_addr=(spec.host, spec.port)
            )
            transport.sendto(request)
            description = await exchange.answer
    except TimeoutError:
        ignored = f" ({exchange.ignored} unrelated datagrams ignored)" if exchange.ignored else ""
        return ProbeResult.down(
            "timeout", f"no IKEv2 answer from {spec.target} in {spec.timeout:g}s{ignored}"
        )
    except ConnectionRefusedError:
        return ProbeResult.down(
            "ike_down",
            f"host up, IKE down (port unreachable): {spec.target}",
            time.perf_counter() - started,
        )
    except OSError as exc:
        return from_os_error(exc, spec.target)
    finally:
        if transport is not None:
            transport.close()
    latency = time.perf_counter() - started
    return ProbeResult.up(
        latency, f"IKEv2 answer from {spec.target} in {latency * 1000:.1f} ms: {description}"
    )

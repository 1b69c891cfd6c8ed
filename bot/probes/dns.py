"""``dns`` probe: ask one configured server (never the system resolver) for a name.

Up when the server answers NOERROR with a record of the asked type (CNAME chains followed) and,
if ``expect`` is set, one record's text contains it. UDP, with TCP when the answer is truncated.
"""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from bot.probes.models import DnsProbe
from bot.probes.result import ProbeResult, from_os_error

__all__ = ["probe_dns"]


async def probe_dns(spec: DnsProbe) -> ProbeResult:
    asked = f"{spec.query} {spec.type} @{spec.server}"
    query = dns.message.make_query(spec.query, dns.rdatatype.from_text(spec.type))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            response, _ = await dns.asyncquery.udp_with_fallback(
                query, spec.server_host, timeout=spec.timeout, port=spec.server_port
            )
    except (TimeoutError, dns.exception.Timeout):
        return ProbeResult.down("timeout", f"no DNS answer for {asked} in {spec.timeout:g}s")
    except OSError as exc:
        return from_os_error(exc, f"DNS server {spec.server}")
    except dns.exception.DNSException as exc:
        return ProbeResult.down("dns_error", f"{asked}: bad answer: {exc}")
    latency = time.perf_counter() - started

    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return ProbeResult.down("nxdomain", f"{asked}: NXDOMAIN (no such name)", latency)
    if rcode != dns.rcode.NOERROR:
        return ProbeResult.down("dns_error", f"{asked}: {dns.rcode.to_text(rcode)}", latency)
    if not isinstance(response, dns.message.QueryMessage):
        return ProbeResult.down("dns_error", f"{asked}: the reply is not a query response", latency)
    try:
        answer = response.resolve_chaining().answer
    except dns.exception.DNSException as exc:
        return ProbeResult.down("dns_error", f"{asked}: {exc}", latency)
    if answer is None or len(answer) == 0:
        return ProbeResult.down(
            "no_answer", f"{asked}: the name has no {spec.type} record", latency
        )
    texts = [rdata.to_text() for rdata in answer]
    shown = ", ".join(texts[:4]) + (", ..." if len(texts) > 4 else "")
    if spec.expect is not None and not any(spec.expect in text for text in texts):
        return ProbeResult.down(
            "unexpected_answer", f"{asked}: {shown} does not contain {spec.expect!r}", latency
        )
    return ProbeResult.up(latency, f"{asked}: {shown} in {latency * 1000:.1f} ms")

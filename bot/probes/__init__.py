"""Probes: is a target reachable right now? One config model and one coroutine per kind.

Example::

    from bot.probes import parse_probe, probe

    spec = parse_probe({"name": "kms", "kind": "tcp", "target": "10.1.0.4:1688"})
    result = await probe(spec)  # ProbeResult(ok=..., latency_s=..., reason="ok", detail="...")
"""

from bot.probes.models import (
    PROBE_ADAPTER,
    AnyProbe,
    DnsProbe,
    HttpProbe,
    IcmpProbe,
    Ikev2Probe,
    ProbeConfigError,
    ProbeSpec,
    TcpProbe,
    parse_probe,
)
from bot.probes.result import REASONS, ProbeResult, Reason
from bot.probes.run import probe

__all__ = [
    "PROBE_ADAPTER",
    "REASONS",
    "AnyProbe",
    "DnsProbe",
    "HttpProbe",
    "IcmpProbe",
    "Ikev2Probe",
    "ProbeConfigError",
    "ProbeResult",
    "ProbeSpec",
    "Reason",
    "TcpProbe",
    "parse_probe",
    "probe",
]

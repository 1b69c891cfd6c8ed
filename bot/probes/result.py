"""What one probe run found: :class:`ProbeResult`, plus the mapping of socket errors to reasons."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["REASONS", "ProbeResult", "Reason", "from_os_error"]

Reason = Literal[
    "ok",
    "timeout",  # nothing came back within the probe's timeout
    "refused",  # TCP RST / ICMP port unreachable
    "reset",  # the peer dropped the connection mid-exchange
    "host_unreachable",  # no route / host unreachable
    "resolve_failed",  # the target's host name does not resolve
    "unexpected_status",  # HTTP status outside ``expect``
    "body_mismatch",  # HTTP body does not match ``body_match``
    "tls_error",  # certificate not trusted, handshake failed, CA file unreadable
    "nxdomain",  # DNS: the name does not exist
    "no_answer",  # DNS: the name exists but has no record of the type
    "unexpected_answer",  # DNS: answer does not contain ``expect``
    "dns_error",  # DNS: SERVFAIL, REFUSED, malformed reply, ...
    "ike_down",  # IKEv2: host up, UDP port closed
    "permission",  # ICMP: the kernel does not allow unprivileged ping sockets
    "error",  # anything else (message in ``detail``)
]
REASONS: tuple[Reason, ...] = get_args(Reason)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One run of one probe. ``latency_s`` is set whenever the target answered at all."""

    ok: bool
    latency_s: float | None
    reason: Reason
    detail: str

    @classmethod
    def up(cls, latency_s: float, detail: str) -> ProbeResult:
        return cls(True, latency_s, "ok", detail)

    @classmethod
    def down(cls, reason: Reason, detail: str, latency_s: float | None = None) -> ProbeResult:
        return cls(False, latency_s, reason, detail)


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def from_os_error(exc: OSError, what: str) -> ProbeResult:
    """A failed result for a socket error; ``what`` names the target (``"10.0.0.4:1688"``)."""
    if isinstance(exc, socket.gaierror):
        return ProbeResult.down("resolve_failed", f"cannot resolve {what}: {exc.strerror or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult.down("refused", f"{what} refused the connection")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return ProbeResult.down("reset", f"{what} reset the connection")
    if isinstance(exc, TimeoutError):
        return ProbeResult.down("timeout", f"no answer from {what}")
    if exc.errno in _UNREACHABLE:
        return ProbeResult.down("host_unreachable", f"{what}: {exc.strerror or exc}")
    return ProbeResult.down("error", f"{what}: {exc.strerror or exc}")

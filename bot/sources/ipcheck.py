"""Decide whether a detected address may become a VPN gateway address.

Every source (echo services, router push, TR-064) funnels through `check_ip` so that a bogus
detection (private, CGNAT, bogon, garbage) can never reach the Azure Local Network Gateway.
Bad input never raises: callers get an `IpCheck` with a machine-readable reason and a message
that can be shown to an operator as is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Family = Literal["v4", "v6"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IpReason(StrEnum):
    """Why an address was accepted or rejected (stable codes for logs, metrics and chat)."""

    OK = "ok"
    MALFORMED = "malformed"
    WRONG_FAMILY = "wrong_family"
    UNSPECIFIED = "unspecified"
    THIS_NETWORK = "this_network"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    CGNAT = "cgnat"
    LINK_LOCAL = "link_local"
    SITE_LOCAL = "site_local"
    MULTICAST = "multicast"
    BROADCAST = "broadcast"
    DOCUMENTATION = "documentation"
    BENCHMARK = "benchmark"
    IETF_PROTOCOL = "ietf_protocol"
    SIX_TO_FOUR = "6to4"
    TEREDO = "teredo"
    NAT64 = "nat64"
    IPV4_MAPPED = "ipv4_mapped"
    DISCARD = "discard"
    RESERVED = "reserved"


_MESSAGES: dict[IpReason, str] = {
    IpReason.OK: "public unicast address",
    IpReason.MALFORMED: "not an IP address",
    IpReason.WRONG_FAMILY: "address family does not match what was asked for",
    IpReason.UNSPECIFIED: "unspecified address (0.0.0.0 / ::): the source has no address",
    IpReason.THIS_NETWORK: "0.0.0.0/8 'this network' is not a routable destination",
    IpReason.LOOPBACK: "loopback address: the source reported the host itself",
    IpReason.PRIVATE: (
        "private address (RFC 1918 / ULA fc00::/7): the site is behind another NAT "
        "and this is not its public address"
    ),
    IpReason.CGNAT: (
        "carrier-grade NAT address (100.64.0.0/10, RFC 6598): a site behind CGNAT has no "
        "public IPv4 of its own and cannot host the tunnel endpoint; ask the ISP for a public "
        "IPv4 or use IPv6"
    ),
    IpReason.LINK_LOCAL: "link-local address (169.254.0.0/16 / fe80::/10) is not routable",
    IpReason.SITE_LOCAL: "deprecated IPv6 site-local address (fec0::/10) is not routable",
    IpReason.MULTICAST: "multicast address cannot be a tunnel endpoint",
    IpReason.BROADCAST: "limited broadcast address 255.255.255.255",
    IpReason.DOCUMENTATION: (
        "documentation range (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, "
        "3fff::/20): only allowed in demo/simulator mode"
    ),
    IpReason.BENCHMARK: "benchmarking range (198.18.0.0/15 / 2001:2::/48) is not routable",
    IpReason.IETF_PROTOCOL: "IETF protocol assignment range (192.0.0.0/24 / 2001::/23)",
    IpReason.SIX_TO_FOUR: "6to4 address (2002::/16 or relay 192.88.99.0/24): a transition "
    "mechanism, not the site's native address",
    IpReason.TEREDO: "Teredo tunnel address (2001::/32): a transition mechanism, not the "
    "site's native address",
    IpReason.NAT64: "NAT64 address (64:ff9b::/96, 64:ff9b:1::/48): a translated IPv4, not "
    "the site's own address",
    IpReason.IPV4_MAPPED: "IPv4-mapped IPv6 address (::ffff:0:0/96): report the plain IPv4 instead",
    IpReason.DISCARD: "discard-only prefix 100::/64",
    IpReason.RESERVED: "reserved or otherwise non-global address",
}

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Ordered: the first match wins, so more specific special ranges come before broader ones.
_V4_TABLE: tuple[tuple[ipaddress.IPv4Network, IpReason], ...] = (
    (_V4("0.0.0.0/32"), IpReason.UNSPECIFIED),
    (_V4("0.0.0.0/8"), IpReason.THIS_NETWORK),
    (_V4("127.0.0.0/8"), IpReason.LOOPBACK),
    (_V4("10.0.0.0/8"), IpReason.PRIVATE),
    (_V4("172.16.0.0/12"), IpReason.PRIVATE),
    (_V4("192.168.0.0/16"), IpReason.PRIVATE),
    (_V4("100.64.0.0/10"), IpReason.CGNAT),
    (_V4("169.254.0.0/16"), IpReason.LINK_LOCAL),
    (_V4("192.0.0.0/24"), IpReason.IETF_PROTOCOL),
    (_V4("192.0.2.0/24"), IpReason.DOCUMENTATION),
    (_V4("198.51.100.0/24"), IpReason.DOCUMENTATION),
    (_V4("203.0.113.0/24"), IpReason.DOCUMENTATION),
    (_V4("198.18.0.0/15"), IpReason.BENCHMARK),
    (_V4("192.88.99.0/24"), IpReason.SIX_TO_FOUR),
    (_V4("224.0.0.0/4"), IpReason.MULTICAST),
    (_V4("255.255.255.255/32"), IpReason.BROADCAST),
    (_V4("240.0.0.0/4"), IpReason.RESERVED),
)

_V6_TABLE: tuple[tuple[ipaddress.IPv6Network, IpReason], ...] = (
    (_V6("::/128"), IpReason.UNSPECIFIED),
    (_V6("::1/128"), IpReason.LOOPBACK),
    (_V6("::ffff:0:0/96"), IpReason.IPV4_MAPPED),
    (_V6("64:ff9b::/96"), IpReason.NAT64),
    (_V6("64:ff9b:1::/48"), IpReason.NAT64),
    (_V6("100::/64"), IpReason.DISCARD),
    (_V6("2001:db8::/32"), IpReason.DOCUMENTATION),
    (_V6("3fff::/20"), IpReason.DOCUMENTATION),
    (_V6("2001::/32"), IpReason.TEREDO),
    (_V6("2001:2::/48"), IpReason.BENCHMARK),
    (_V6("2001::/23"), IpReason.IETF_PROTOCOL),
    (_V6("2002::/16"), IpReason.SIX_TO_FOUR),
    (_V6("fc00::/7"), IpReason.PRIVATE),
    (_V6("fe80::/10"), IpReason.LINK_LOCAL),
    (_V6("fec0::/10"), IpReason.SITE_LOCAL),
    (_V6("ff00::/8"), IpReason.MULTICAST),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


@dataclass(frozen=True, slots=True)
class IpCheck:
    """Outcome of `check_ip`: `ok`, a stable `reason` code and a human `message`.

    `ip`/`family` are set whenever the input parsed, even if rejected, so callers can log it.
    """

    ok: bool
    reason: IpReason
    message: str
    ip: IPAddress | None = None
    family: Family | None = None

    @property
    def normalized(self) -> str | None:
        """Canonical text form (compressed IPv6) used for comparisons and storage."""
        return None if self.ip is None else str(self.ip)


def _reject(reason: IpReason, ip: IPAddress | None, detail: str = "") -> IpCheck:
    message = _MESSAGES[reason]
    if detail:
        message = f"{detail}: {message}"
    family: Family | None = None
    if ip is not None:
        family = "v4" if ip.version == 4 else "v6"
    return IpCheck(ok=False, reason=reason, message=message, ip=ip, family=family)


def _classify(ip: IPAddress) -> IpReason:
    if isinstance(ip, ipaddress.IPv4Address):
        for net4, reason in _V4_TABLE:
            if ip in net4:
                return reason
        return IpReason.OK if ip.is_global else IpReason.RESERVED
    for net6, reason in _V6_TABLE:
        if ip in net6:
            return reason
    if ip not in _V6_GLOBAL_UNICAST or not ip.is_global:
        return IpReason.RESERVED
    return IpReason.OK


def check_ip(
    candidate: object,
    *,
    family: Family | None = None,
    allow_documentation: bool = False,
) -> IpCheck:
    """Validate `candidate` (text or an ipaddress object) as a public unicast gateway address.

    `allow_documentation=True` lets the RFC 5737 / RFC 3849 / RFC 9637 documentation ranges
    through, because the simulator, demos and tests use them as stand-ins for public IPs.
    Never raises.
    """
    ip: IPAddress
    if isinstance(candidate, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = candidate
    elif isinstance(candidate, str):
        if not candidate or len(candidate) > 64 or candidate != candidate.strip():
            return _reject(IpReason.MALFORMED, None, _shorten(candidate))
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            return _reject(IpReason.MALFORMED, None, _shorten(candidate))
    else:
        return _reject(IpReason.MALFORMED, None, type(candidate).__name__)

    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return _reject(IpReason.MALFORMED, None, f"{_shorten(str(ip))} has a zone index")
    got: Family = "v4" if ip.version == 4 else "v6"
    if family is not None and got != family:
        return _reject(IpReason.WRONG_FAMILY, ip, f"{ip} is IP{got}, expected IP{family}")

    reason = _classify(ip)
    if reason is IpReason.DOCUMENTATION and allow_documentation:
        return IpCheck(
            ok=True,
            reason=IpReason.OK,
            message="documentation address accepted (demo/simulator mode)",
            ip=ip,
            family=got,
        )
    if reason is not IpReason.OK:
        return _reject(reason, ip, str(ip))
    return IpCheck(ok=True, reason=IpReason.OK, message=_MESSAGES[IpReason.OK], ip=ip, family=got)


def _shorten(text: str, limit: int = 40) -> str:
    """Quote untrusted input safely for messages (bounded length, repr-escaped)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")

"""Configuration of one probe (``[[sites.NAME.probes]]``): a union discriminated on ``kind``.

Example (TOML)::

    [[sites.home.probes]]
    name = "kms"
    kind = "tcp"
    target = "10.1.0.4:1688"
    through_tunnel = true

    [[sites.home.probes]]
    name = "portal"
    kind = "http"
    url = "https://vpn.example.net/health"
    expect = "200-299,401"

    [[sites.home.probes]]
    name = "dc1"
    kind = "dns"
    query = "dc1.corp.internal"    # the DNS name to look up (``name`` is the probe's own name)
    type = "A"
    server = "10.1.0.10:53"
    expect = "10.1."

    [[sites.home.probes]]
    name = "ike"
    kind = "ikev2"
    target = "vpn.example.net:500"

Use :func:`parse_probe` to validate a mapping: its :class:`ProbeConfigError` is one line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import dns.rdatatype
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "PROBE_ADAPTER",
    "AnyProbe",
    "DnsProbe",
    "HttpProbe",
    "IcmpProbe",
    "Ikev2Probe",
    "ProbeConfigError",
    "ProbeSpec",
    "TcpProbe",
    "join_host_port",
    "one_line_error",
    "parse_probe",
    "parse_status_ranges",
    "split_host_port",
]

KINDS = ("tcp", "http", "icmp", "dns", "ikev2")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_STATUS_RE = re.compile(r"^(\d{3})(?:\s*-\s*(\d{3}))?$")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
IKE_MIN_INTERVAL = 30.0


class ProbeConfigError(ValueError):
    """A probe's configuration is invalid; the message is one line."""


# ------------------------------------------------------------------------------- helpers
def _check_host(host: str, original: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOSTNAME_RE.match(host):
        raise ValueError(f"{original!r}: {host!r} is neither an IP address nor a host name")
    return host


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, or a bare host/IPv6 when ``default_port`` is given."""
    text = value.strip()
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a bare host name, IPv4 or IPv6 address
        host, port_text = text, None
    if not host:
        raise ValueError(f"{value!r}: missing host")
    host = _check_host(host, value)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{value!r}: missing port (write host:port)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``"200-299,401"`` -> ``((200, 299), (401, 401))``; ValueError with a hint otherwise."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        match = _STATUS_RE.match(part.strip())
        if not match:
            raise ValueError(
                f"bad status code or range {part.strip()!r} in {text!r} (write e.g. '200-299,401')"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if not 100 <= low <= high <= 599:
            raise ValueError(f"bad status range {part.strip()!r}: codes are 100-599, low to high")
        ranges.append((low, high))
    return tuple(ranges)


# -------------------------------------------------------------------------------- models
class _Probe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    interval: float = Field(30.0, gt=0, description="seconds between runs")
    timeout: float = Field(5.0, gt=0, description="seconds one run may take")
    fail_after: int = Field(3, ge=1, description="consecutive failures before 'failed'")
    recover_after: int = Field(2, ge=1, description="consecutive successes before 'recovered'")
    through_tunnel: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a probe name: 1-63 of a-z, 0-9, '-', '_', starting with a "
                "letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _timing(self) -> _Probe:
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must not exceed interval ({self.interval:g}s)"
            )
        return self

    def warnings(self) -> list[str]:
        """Accepted but questionable settings, as human sentences (empty when all is well)."""
        return []


class TcpProbe(_Probe):
    """Connect to ``target`` ("host:port"); up when the TCP handshake completes."""

    kind: Literal["tcp"]
    target: str

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return join_host_port(*split_host_port(value))

    @property
    def host(self) -> str:
        return split_host_port(self.target)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.target)[1]


class HttpProbe(_Probe):
    """Request ``url``; up when the status is in ``expect`` (and the body matches, if asked).

    Redirects are not followed: a 301 is judged against ``expect`` like any other status.
    """

    kind: Literal["http"]
    url: str
    method: str = "GET"
    expect: str = "200-299"
    verify_tls: bool = True
    ca_file: Path | None = None
    body_match: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r}: use an http:// or https:// URL with a host")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in HTTP_METHODS:
            raise ValueError(f"method {value!r}: use one of {', '.join(HTTP_METHODS)}")
        return value.upper()

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str) -> str:
        parse_status_ranges(value)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA file {str(value)!r} does not exist")
        return value

    @field_validator("body_match")
    @classmethod
    def _body_match(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"body_match {value!r} is not a regular expression: {exc}"
                ) from None
        return value

    def accepts_status(self, status: int) -> bool:
        return any(low <= status <= high for low, high in parse_status_ranges(self.expect))

    def warnings(self) -> list[str]:
        if self.ca_file is not None and not self.verify_tls:
            return [f"ca_file {str(self.ca_file)!r} is ignored because verify_tls = false"]
        return []


class IcmpProbe(_Probe):
    """One echo request to ``target`` over an unprivileged ping socket."""

    kind: Literal["icmp"]
    target: str

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _check_host(value.strip().strip("[]"), value)


class DnsProbe(_Probe):
    """Ask ``server`` (an IP, never the system resolver) for ``query``/``type``."""

    kind: Literal["dns"]
    query: str
    type: str = "A"
    server: str
    expect: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _hint_query(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "query" not in data and "." in str(data.get("name", "")):
            raise ValueError(
                "put the DNS name to look up in `query`; `name` is the probe's own name"
            )
        return data

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not HOSTNAME_RE.match(value):
            raise ValueError(f"query {value!r} is not a DNS name")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        try:
            rdtype = dns.rdatatype.from_text(value.upper())
        except dns.rdatatype.UnknownRdatatype:
            raise ValueError(
                f"unknown DNS record type {value!r} (e.g. A, AAAA, CNAME, TXT)"
            ) from None
        if dns.rdatatype.is_metatype(rdtype):
            raise ValueError(f"{value!r} is a meta type, not a record type")
        return value.upper()

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        host, port = split_host_port(value, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{value!r}: use an IP address (the probe asks that server only, "
                "without the system resolver)"
            ) from None
        return join_host_port(host, port)

    @property
    def server_host(self) -> str:
        return split_host_port(self.server)[0]

    @property
    def server_port(self) -> int:
        return split_host_port(self.server)[1]


class Ikev2Probe(_Probe):
    """Send one IKE_SA_INIT to ``target`` (port 500 by default); up on any valid IKEv2 answer."""

    kind: Literal["ikev2"]
    interval: float = Field(60.0, gt=0, description="seconds between runs")
    target: str

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return join_host_port(*split_host_port(value, 500))

    @property
    def host(self) -> str:
        return split_host_port(self.target)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.target)[1]

    def warnings(self) -> list[str]:
        if self.interval < IKE_MIN_INTERVAL:
            return [
                f"interval {self.interval:g}s: each IKEv2 probe leaves a half-open SA on the "
                "responder; use 60s (strongSwan ignores a peer after 5)"
            ]
        return []


AnyProbe = TcpProbe | HttpProbe | IcmpProbe | DnsProbe | Ikev2Probe
ProbeSpec = Annotated[AnyProbe, Field(discriminator="kind")]
PROBE_ADAPTER: TypeAdapter[AnyProbe] = TypeAdapter(ProbeSpec)


# ------------------------------------------------------------------------------- errors
def one_line_error(exc: ValidationError) -> str:
    """Pydantic's multi-line report as ``"field: message; field: message"``."""
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [str(item) for item in err["loc"]]
        if loc and loc[0] in KINDS:  # the discriminator's tag is noise here
            loc = loc[1:]
        kind = err["type"]
        if kind == "union_tag_not_found":
            msg = f"missing `kind` (one of {', '.join(KINDS)})"
        elif kind == "union_tag_invalid":
            msg = f"unknown kind {err['input'].get('kind')!r} (one of {', '.join(KINDS)})"
        elif kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        where = ".".join(loc)
        parts.append(f"{where}: {msg}" if where else msg)
    return " ".join("; ".join(parts).split())


def parse_probe(data: Mapping[str, Any]) -> AnyProbe:
    """Validate one probe table; :class:`ProbeConfigError` (one line, naming the probe) if bad."""
    try:
        return PROBE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        name = data.get("name") if isinstance(data, Mapping) else None
        label = f"probe {name!r}" if isinstance(name, str) else "probe"
        raise ProbeConfigError(f"{label}: {one_line_error(exc)}") from None

"""Site responders simulator: the targets the probes look at, on loopback only.

Each simulated site has responders of four kinds:

- ``tcp``: a listener that accepts and closes (a KMS or SSTP port);
- ``http``: answers every path with a chosen status and body (e.g. 401), optionally after a
  delay, optionally over TLS with a throw-away CA (``ca_file`` in the listing);
- ``ikev2``: a UDP IKEv2 responder answering IKE_SA_INIT, by ``mode``: ``accept`` (SA, KE,
  Nonce), ``no_proposal`` (only N(NO_PROPOSAL_CHOSEN)), ``invalid_ke`` (N(INVALID_KE_PAYLOAD)
  asking for group 2), ``cookie`` (N(COOKIE)), ``wrong_spi`` (garbage and an answer for another
  SPI only), ``silent`` (reads, never answers) or ``closed`` (socket closed: the kernel answers
  ICMP port unreachable);
- ``dns``: a UDP DNS server for its ``records`` (NXDOMAIN for other names, CNAMEs followed).

A responder that is down (``up = false``) refuses TCP connections (listener closed) or stays
silent on UDP. Responders with ``behind_tunnel = true`` are also down while their site's tunnel
is: the site's manual switch (``PUT /_sim/sites/{site}/tunnel``) is off, or the callable tied to
the site (``SitesSim.tie(site, is_up)``, e.g. ``lambda: world.connection_status(name) ==
"Connected"``) returns False. Tied state is polled every ``poll_interval`` seconds and checked
again on every request, so the switch takes effect at once for UDP and HTTP and within one poll
for TCP listeners.

Config (TOML or JSON, same structure)::

    [[sites]]
    name = "home"

    [[sites.responders]]
    name = "kms"
    kind = "tcp"
    behind_tunnel = true

    [[sites.responders]]
    name = "portal"
    kind = "http"
    status = 401
    body = "Unauthorized"

    [[sites.responders]]
    name = "vpn"
    kind = "ikev2"
    mode = "no_proposal"

    [[sites.responders]]
    name = "dns"
    kind = "dns"
    behind_tunnel = true
    records = [{ name = "dc1.corp.internal", type = "A", value = "10.1.0.10" }]

``port`` (default 0 = any free port) pins a responder's port.

Control API (JSON, no authentication; the server only listens on loopback)::

    GET   /_sim/responders                    every responder: site, name, kind, port, up, ...
    GET   /_sim/responders/{site}/{name}
    PATCH /_sim/responders/{site}/{name}      {"up": false} | {"mode": "closed"} | {"status": 500}
    GET   /_sim/sites                         [{name, tunnel_up, tied, tunnel_is_up}]
    PUT   /_sim/sites/{site}/tunnel           {"up": false}

Errors come back as ``{"error": "..."}`` with 400 (bad input) or 404 (unknown thing).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import ssl
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.probes import ike
from bot.probes.models import join_host_port

__all__ = [
    "DEFAULT_CONFIG",
    "DnsRecord",
    "DnsSpec",
    "HttpSpec",
    "IkeSpec",
    "Responder",
    "SitesConfig",
    "SitesSim",
    "TcpSpec",
    "load_sites_config",
    "main",
    "start_sites_sim",
]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _require_loopback(host: str) -> None:
    # Responders answer anyone and the control API has no authentication: never off-box.
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        address = ""
    if address not in LOOPBACK:
        raise ValueError(f"the site responders only bind to 127.0.0.1 or ::1, not {host!r}")


# ------------------------------------------------------------------------------- config
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ResponderSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    port: int = Field(0, ge=0, le=65535, description="0 = any free port")
    up: bool = True
    behind_tunnel: bool = False


class TcpSpec(_ResponderSpec):
    kind: Literal["tcp"] = "tcp"


class HttpSpec(_ResponderSpec):
    kind: Literal["http"] = "http"
    status: int = Field(200, ge=100, le=599)
    body: str = "ok"
    content_type: str = "text/plain"
    delay: float = Field(0.0, ge=0, description="seconds before answering")
    tls: bool = False


IkeMode = Literal["accept", "no_proposal", "invalid_ke", "cookie", "wrong_spi", "silent", "closed"]


class IkeSpec(_ResponderSpec):
    kind: Literal["ikev2"] = "ikev2"
    mode: IkeMode = "accept"


class DnsRecord(_Strict):
    name: str
    type: str = "A"
    value: str
    ttl: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _parses(self) -> DnsRecord:
        try:
            dns.name.from_text(self.name)
            dns.rdata.from_text(dns.rdataclass.IN, self.rdtype, self.value)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"record {self.name} {self.type} {self.value!r}: {exc}") from None
        return self

    @property
    def rdtype(self) -> dns.rdatatype.RdataType:
        return dns.rdatatype.from_text(self.type.upper())


class DnsSpec(_ResponderSpec):
    kind: Literal["dns"] = "dns"
    records: list[DnsRecord] = Field(default_factory=list)


AnySpec = TcpSpec | HttpSpec | IkeSpec | DnsSpec
ResponderSpec = Annotated[AnySpec, Field(discriminator="kind")]


class SiteSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    tunnel_up: bool = True
    responders: list[ResponderSpec] = Field(default_factory=list)

    @field_validator("responders")
    @classmethod
    def _unique(cls, value: list[AnySpec]) -> list[AnySpec]:
        names = [r.name for r in value]
        if len(names) != len(set(names)):
            raise ValueError(f"responder names repeat: {sorted(names)}")
        return value


class SitesConfig(_Strict):
    sites: list[SiteSpec] = Field(default_factory=list)

    @field_validator("sites")
    @classmethod
    def _unique(cls, value: list[SiteSpec]) -> list[SiteSpec]:
        names = [s.name for s in value]
        if len(names) != len(set(names)):
            raise ValueError(f"site names repeat: {sorted(names)}")
        return value


DEFAULT_CONFIG = SitesConfig.model_validate(
    {
        "sites": [
            {
                "name": "home",
                "responders": [
                    {"name": "kms", "kind": "tcp", "behind_tunnel": True},
                    {"name": "portal", "kind": "http", "status": 401, "body": "Unauthorized"},
                    {"name": "vpn", "kind": "ikev2", "mode": "accept"},
                    {
                        "name": "dns",
                        "kind": "dns",
                        "behind_tunnel": True,
                        "records": [
                            {"name": "dc1.corp.internal", "type": "A", "value": "10.1.0.10"}
                        ],
                    },
                ],
            }
        ]
    }
)


def load_sites_config(path: str | Path) -> SitesConfig:
    """Parse a ``.toml`` or ``.json`` responders file."""
    p = Path(path)
    raw = p.read_bytes()
    data: Any = tomllib.loads(raw.decode()) if p.suffix.lower() == ".toml" else json.loads(raw)
    return SitesConfig.model_validate(data)


# -------------------------------------------------------------------------------- sites
class Site:
    """A site's tunnel switch: the manual flag, and optionally a tied ``is_up()`` callable."""

    def __init__(self, name: str, tunnel_up: bool = True) -> None:
        self.name = name
        self.tunnel_up = tunnel_up
        self.is_up: Callable[[], bool] | None = None
        self._hook_failing = False

    def tunnel_is_up(self) -> bool:
        if not self.tunnel_up:
            return False
        if self.is_up is None:
            return True
        try:
            up = bool(self.is_up())
        except Exception:  # a broken hook means "down", logged once, never a dead simulator
            if not self._hook_failing:
                log.exception("tunnel hook of site %r failed; the tunnel counts as down", self.name)
            self._hook_failing = True
            return False
        self._hook_failing = False
        return up

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tunnel_up": self.tunnel_up,
            "tied": self.is_up is not None,
            "tunnel_is_up": self.tunnel_is_up(),
        }


# ---------------------------------------------------------------------------- responders
class Responder:
    """One simulated target. Subclasses open/close their socket and answer requests."""

    FIXED: ClassVar[frozenset[str]] = frozenset({"name", "kind", "port"})

    def __init__(self, site: Site, spec: AnySpec, host: str) -> None:
        self.site = site
        self.spec: AnySpec = spec
        self.host = host
        self.port = spec.port
        self.hits = 0  # connections, requests or datagrams received
        self.is_open = False
        self.error: str | None = None  # why the socket could not be (re)opened

    @property
    def key(self) -> tuple[str, str]:
        return self.site.name, self.spec.name

    def serving(self) -> bool:
        """Up, and (if behind the tunnel) the site's tunnel is up."""
        return self.spec.up and (not self.spec.behind_tunnel or self.site.tunnel_is_up())

    def wants_socket(self) -> bool:
        """TCP-based responders close their listener while down (the peer sees a refusal)."""
        return self.serving()

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def sync(self) -> None:
        """Open or close the socket to match :meth:`wants_socket`."""
        want = self.wants_socket()
        if want and not self.is_open:
            await self.open()
            self.is_open = True
        elif not want and self.is_open:
            await self.close()
            self.is_open = False

    async def shutdown(self) -> None:
        if self.is_open:
            await self.close()
            self.is_open = False

    async def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a control-API change (``{"up": false}``, ``{"mode": "silent"}``, ...)."""
        fixed = sorted(set(changes) & self.FIXED)
        if fixed:
            raise ValueError(f"cannot change {', '.join(fixed)} at run time")
        self.spec = type(self.spec).model_validate({**self.spec.model_dump(), **changes})
        await self.sync()

    def describe(self) -> dict[str, Any]:
        return {
            "site": self.site.name,
            **self.spec.model_dump(exclude={"port"}),
            "host": self.host,
            "port": self.port,
            "serving": self.serving(),
            "open": self.is_open,
            "hits": self.hits,
            "error": self.error,
        }


class TcpResponder(Responder):
    def __init__(self, site: Site, spec: TcpSpec, host: str) -> None:
        super().__init__(site, spec, host)
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._accepted, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accepted(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        if not self.serving():  # went down since the last sync: reset
            writer.transport.abort()
            return
        writer.close()


class HttpResponder(Responder):
    FIXED = Responder.FIXED | {"tls"}

    def __init__(self, site: Site, spec: HttpSpec, host: str, tls_dir: Path) -> None:
        super().__init__(site, spec, host)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ssl: ssl.SSLContext | None = None
        self.ca_file: Path | None = None
        if spec.tls:
            self._ssl, self.ca_file = _make_tls(tls_dir / f"{site.name}-{spec.name}")

    async def open(self) -> None:
        if self._runner is None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True
        )
        await self._site.start()
        addresses: list[Any] = list(self._runner.addresses)
        self.port = int(addresses[0][1])

    async def close(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def shutdown(self) -> None:
        await super().shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        spec = self.spec
        assert isinstance(spec, HttpSpec)
        if spec.delay:
            await asyncio.sleep(spec.delay)
        if not self.serving():  # down (kept-alive connection, or since the last sync): reset
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        return web.Response(status=spec.status, text=spec.body, content_type=spec.content_type)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ca_file": str(self.ca_file) if self.ca_file else None}


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, Any, asyncio.DatagramTransport], None]) -> None:
        self.handle = handle
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython 3.11's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            try:
                self.handle(data, addr, self.transport)
            except Exception:
                log.exception("site responder failed on a datagram from %s", addr)


class _UdpResponder(Responder):
    """UDP responders keep their socket while down and stay silent instead."""

    def __init__(self, site: Site, spec: AnySpec, host: str) -> None:
        super().__init__(site, spec, host)
        self._transport: asyncio.DatagramTransport | None = None

    def wants_socket(self) -> bool:
        return True

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._datagram), local_addr=(self.host, self.port)
        )
        self.port = int(self._transport.get_extra_info("sockname")[1])

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)  # let the loop drop the socket before anyone rebinds

    def _datagram(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        self.hits += 1
        if not self.serving():
            return
        for reply in self.answer(data):
            transport.sendto(reply, addr)

    def answer(self, data: bytes) -> list[bytes]:
        raise NotImplementedError


class IkeResponder(_UdpResponder):
    def wants_socket(self) -> bool:
        assert isinstance(self.spec, IkeSpec)
        return self.spec.mode != "closed"

    def answer(self, data: bytes) -> list[bytes]:
        assert isinstance(self.spec, IkeSpec)
        try:
            request = ike.parse_message(data)
        except ike.IkeParseError:
            return []
        if request.exchange != ike.EXCHANGE_IKE_SA_INIT or request.is_response:
            return []
        spi = request.spi_i
        mode = self.spec.mode
        if mode == "accept":
            return [ike.build_sa_init_reply(request)]
        if mode == "no_proposal":
            return [ike.build_notify_reply(spi, ike.NotifyType.NO_PROPOSAL_CHOSEN)]
        if mode == "invalid_ke":
            return [ike.build_notify_reply(spi, ike.NotifyType.INVALID_KE_PAYLOAD, b"\x00\x02")]
        if mode == "cookie":
            return [ike.build_notify_reply(spi, ike.NotifyType.COOKIE, os.urandom(24))]
        if mode == "wrong_spi":
            other = bytes(b ^ 0xFF for b in spi)
            return [
                b"\x00 not an IKE message",
                ike.build_notify_reply(other, ike.NotifyType.NO_PROPOSAL_CHOSEN),
                spi + b"\x00" * 20,  # our SPI, but no valid message
            ]
        return []  # silent


class DnsResponder(_UdpResponder):
    def answer(self, data: bytes) -> list[bytes]:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return []
        return [self.respond(query).to_wire()]

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        assert isinstance(self.spec, DnsSpec)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name
        for hop in range(8):  # follow CNAMEs inside our own records
            records = [r for r in self.spec.records if dns.name.from_text(r.name) == name]
            if not records:
                if hop == 0:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            wanted = [r for r in records if r.rdtype == question.rdtype]
            if wanted:
                response.answer.append(_rrset(name, wanted))
                break
            cnames = [r for r in records if r.rdtype == dns.rdatatype.CNAME]
            if not cnames:
                break  # the name exists, without this type: NOERROR, empty answer
            response.answer.append(_rrset(name, cnames[:1]))
            name = dns.name.from_text(cnames[0].value)
        return response


def _rrset(name: dns.name.Name, records: list[DnsRecord]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(
        name, records[0].ttl, dns.rdataclass.IN, records[0].rdtype, [r.value for r in records]
    )


def _make_tls(stem: Path) -> tuple[ssl.SSLContext, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/::1/localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnelwarden sim CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = stem.with_name(stem.name + "-ca.pem")
    chain = stem.with_name(stem.name + "-server.pem")
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    return context, ca_file


# ----------------------------------------------------------------------------- the sim
class SitesSim:
    """Running responders plus the ``/_sim/`` control API. Use :func:`start_sites_sim`."""

    def __init__(
        self,
        config: SitesConfig,
        host: str = "127.0.0.1",
        *,
        poll_interval: float = 0.1,
    ) -> None:
        _require_loopback(host)
        self.host = host
        self.poll_interval = poll_interval
        self.control_port = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="tw-sites-")
        self.sites: dict[str, Site] = {}
        self.responders: dict[tuple[str, str], Responder] = {}
        for site_spec in config.sites:
            site = Site(site_spec.name, site_spec.tunnel_up)
            self.sites[site.name] = site
            for spec in site_spec.responders:
                responder = self._make(site, spec)
                self.responders[responder.key] = responder
        self._control: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None

    def _make(self, site: Site, spec: AnySpec) -> Responder:
        if isinstance(spec, TcpSpec):
            return TcpResponder(site, spec, self.host)
        if isinstance(spec, HttpSpec):
            return HttpResponder(site, spec, self.host, Path(self._tmp.name))
        if isinstance(spec, IkeSpec):
            return IkeResponder(site, spec, self.host)
        return DnsResponder(site, spec, self.host)

    # -- lifecycle
    async def start(self, control_port: int = 0) -> None:
        try:
            for responder in self.responders.values():
                await responder.open()  # always once, so that port 0 becomes a fixed port
                responder.is_open = True
            await self.sync()
            runner = web.AppRunner(_control_app(self), access_log=None)
            await runner.setup()
            self._control = runner
            await web.TCPSite(runner, self.host, control_port).start()
            addresses: list[Any] = list(runner.addresses)
            self.control_port = int(addresses[0][1])
        except BaseException:
            await self.close()
            raise
        self._poller = asyncio.create_task(self._poll(), name="sites-sim-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        for responder in self.responders.values():
            with contextlib.suppress(Exception):
                await responder.shutdown()
        self._tmp.cleanup()

    async def __aenter__(self) -> SitesSim:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.sync()
            except OSError:
                pass  # logged once per responder by sync()
            except Exception:
                log.exception("site responders: sync failed")

    async def sync(self) -> None:
        """Apply up/down and tunnel state to every socket now (the poller does it too).

        A socket that cannot be reopened (its port taken meanwhile) raises :class:`OSError`
        here after the others were synced; the poller logs it once and keeps trying.
        """
        failed: list[OSError] = []
        for responder in self.responders.values():
            try:
                await responder.sync()
            except OSError as exc:
                failed.append(exc)
                if responder.error != str(exc):
                    log.error("site responder %s/%s: %s", *responder.key, exc)
                responder.error = str(exc)
            else:
                responder.error = None
        if failed:
            raise failed[0]

    # -- access and control
    def responder(self, site: str, name: str) -> Responder:
        try:
            return self.responders[(site, name)]
        except KeyError:
            raise KeyError(f"no responder {site}/{name}") from None

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(f"no site {name!r}") from None

    def port(self, site: str, name: str) -> int:
        return self.responder(site, name).port

    @property
    def ports(self) -> dict[str, dict[str, int]]:
        """``{site: {responder: port}}``."""
        out: dict[str, dict[str, int]] = {}
        for (site, name), responder in self.responders.items():
            out.setdefault(site, {})[name] = responder.port
        return out

    @property
    def control_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.control_port}/_sim"

    def tie(self, site: str, is_up: Callable[[], bool] | None) -> None:
        """Make ``behind_tunnel`` responders of ``site`` follow ``is_up()`` (None unties)."""
        self.site(site).is_up = is_up

    async def set_tunnel(self, site: str, up: bool) -> None:
        """Flip the site's manual tunnel switch (ANDed with a tied ``is_up``)."""
        self.site(site).tunnel_up = up
        await self.sync()

    async def set_state(self, site: str, name: str, **changes: Any) -> dict[str, Any]:
        """Change one responder (``up=False``, ``mode="closed"``, ``status=500``, ...)."""
        responder = self.responder(site, name)
        await responder.update(changes)
        return responder.describe()

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.responders.values()]

    def __iter__(self) -> Iterator[Responder]:
        return iter(self.responders.values())


# ------------------------------------------------------------------------- control API
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            return web.json_response({"error": f"{where}: {first['msg']}"}, status=400)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except OSError as exc:  # a port that was given up meanwhile is taken
            return web.json_response({"error": f"cannot reopen: {exc}"}, status=409)

    return wrapped


async def _json_body(request: web.Request) -> dict[str, Any]:
    data = await request.json() if request.can_read_body else {}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _control_app(sim: SitesSim) -> web.Application:
    async def list_responders(_: web.Request) -> web.StreamResponse:
        return web.json_response(sim.describe())

    async def get_responder(request: web.Request) -> web.StreamResponse:
        responder = sim.responder(request.match_info["site"], request.match_info["name"])
        return web.json_response(responder.describe())

    async def patch_responder(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        described = await sim.set_state(
            request.match_info["site"], request.match_info["name"], **body
        )
        return web.json_response(described)

    async def list_sites(_: web.Request) -> web.StreamResponse:
        return web.json_response([s.describe() for s in sim.sites.values()])

    async def put_tunnel(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body.get("up"), bool):
            raise ValueError('expected {"up": true|false}')
        await sim.set_tunnel(request.match_info["site"], body["up"])
        return web.json_response(sim.site(request.match_info["site"]).describe())

    app = web.Application()
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_sim/responders", list_responders),
        ("GET", "/_sim/responders/{site}/{name}", get_responder),
        ("PATCH", "/_sim/responders/{site}/{name}", patch_responder),
        ("GET", "/_sim/sites", list_sites),
        ("PUT", "/_sim/sites/{site}/tunnel", put_tunnel),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
    return app


# --------------------------------------------------------------------------- entry points
async def start_sites_sim(
    config: SitesConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    control_port: int = 0,
    tunnels: Mapping[str, Callable[[], bool]] | None = None,
    poll_interval: float = 0.1,
) -> SitesSim:
    """Start every responder and the control API; ``await sim.close()`` (or ``async with``).

    ``config`` is a :class:`SitesConfig`, its dict form, or a ``.toml``/``.json`` path
    (default :data:`DEFAULT_CONFIG`); ``tunnels`` ties sites to ``is_up()`` callables.
    """
    _require_loopback(host)
    if config is None:
        parsed = DEFAULT_CONFIG
    elif isinstance(config, SitesConfig):
        parsed = config
    elif isinstance(config, str | Path):
        parsed = load_sites_config(config)
    else:
        parsed = SitesConfig.model_validate(config)
    sim = SitesSim(parsed, host, poll_interval=poll_interval)
    for site, is_up in (tunnels or {}).items():
        sim.tie(site, is_up)
    await sim.start(control_port)
    return sim


async def follow_arm(
    sim: SitesSim, arm_url: str, ties: Mapping[str, str], every: float = 0.5
) -> None:
    """Tie each ``site`` to ``connection`` of the ARM simulator at ``arm_url``: its
    behind-the-tunnel responders are up only while that connection reports Connected
    (read from ``/_sim/tunnels/detail``, which costs no ARM budget). Runs until cancelled."""
    import aiohttp

    status: dict[str, str] = {}

    def up(connection: str) -> Callable[[], bool]:
        return lambda: status.get(connection.lower()) == "Connected"

    for site, connection in ties.items():
        sim.tie(site, up(connection))
    url = f"{arm_url.rstrip('/')}/_sim/tunnels/detail"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    rows = await resp.json()
                status.clear()
                status.update(
                    {
                        str(r["id"]).rsplit("/", 1)[-1].lower(): str(r["connectionStatus"])
                        for r in rows
                    }
                )
            except Exception as exc:  # ARM simulator away: everything behind a tunnel is down
                status.clear()
                log.warning("sites: cannot read tunnels from %s: %s", url, exc)
            await asyncio.sleep(every)


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    config_path: str | Path | None = None,
    *,
    arm_url: str | None = None,
    ties: Mapping[str, str] | None = None,
) -> None:
    """Run the responders until cancelled (entry point for ``tunnelwarden sim sites``);
    with ``arm_url``, ``ties`` (site -> connection) follow that ARM simulator's tunnels."""
    sim = await start_sites_sim(config_path, host=host, control_port=port)
    follower = (
        asyncio.create_task(follow_arm(sim, arm_url, ties or {})) if arm_url and ties else None
    )
    try:
        for responder in sim:
            spec = responder.spec
            extra = ""
            if isinstance(spec, HttpSpec):
                extra = f" status {spec.status}" + (" (TLS)" if spec.tls else "")
            elif isinstance(spec, IkeSpec):
                extra = f" mode {spec.mode}"
            behind = " behind the tunnel" if spec.behind_tunnel else ""
            print(
                f"{responder.site.name}/{spec.name}: {spec.kind} on "
                f"{join_host_port(host, responder.port)}"
                f"{extra}{behind}",
                flush=True,
            )
        print(f"site responders control API on {sim.control_url}/responders", flush=True)
        for site, connection in (ties or {}).items():
            print(f"{site}: behind-the-tunnel responders follow {connection} at {arm_url}")
        await asyncio.Event().wait()
    finally:
        if follower is not None:
            follower.cancel()
        await sim.close()

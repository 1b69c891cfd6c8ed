"""Poll a FRITZ!Box over TR-064 / IGD for its external addresses and WAN link state.

Uses `fritzconnection` and the same SOAP actions as its `FritzStatus`:
`GetExternalIPAddress` (IPv4), `X_AVM_DE_GetExternalIPv6Address` (IPv6), `GetStatusInfo`
(connection status and uptime) and `GetCommonLinkProperties` (physical link). FritzStatus uses
the IGD services `WANIPConn1` / `WANCommonIFC1` (from `igddesc.xml`, no login needed); boxes with
UPnP status disabled or cable/PPP setups only offer the TR-064 services `WANPPPConnection1` /
`WANIPConnection1` / `WANCommonInterfaceConfig1` (from `tr64desc.xml`, HTTP digest login), so
each value is read from the first listed service that exists and answers.

fritzconnection is blocking (requests) and building a connection inspects the whole API, so one
connection is built lazily, reused, and all calls run in a worker thread, one at a time. A
router is only a hint: CGNAT/DS-Lite boxes report a 100.64/10 address (rejected by `ipcheck`),
so cross-check with echo consensus before touching Azure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.sources.ipcheck import Family, IpCheck, check_ip
from bot.sources.models import FritzConfig as FritzConfig  # re-exported, lives in `models`

log = logging.getLogger(__name__)

FRITZ_DEFAULT_USERNAME = "dslf-config"  # fritzconnection's default for FRITZ!OS < 7.24
_NO_ADDRESS = frozenset({"", "0.0.0.0", "::"})


class Tr064(Protocol):
    """The part of `fritzconnection.FritzConnection` this module uses."""

    services: dict[str, Any]

    def call_action(self, service_name: str, action_name: str, **kwargs: Any) -> dict[str, Any]:
        """Run one SOAP action."""
        ...


Connect = Callable[[FritzConfig], Tr064]


@dataclass(frozen=True, slots=True)
class AddressReading:
    """One family's answer: `ip` (normalized) only when `check` accepted it."""

    raw: str
    check: IpCheck
    service: str

    @property
    def ip(self) -> str | None:
        return self.check.normalized if self.check.ok else None


@dataclass(frozen=True, slots=True)
class FritzReading:
    """Result of one poll. `None` means "not known this time", never "false"."""

    ipv4: AddressReading | None
    ipv6: AddressReading | None
    linked: bool | None
    connected: bool | None
    uptime_s: int | None
    connection_service: str | None
    uptime_reset: bool
    errors: tuple[str, ...]

    @property
    def reachable(self) -> bool:
        """The box answered at least one query."""
        return any(
            v is not None for v in (self.ipv4, self.ipv6, self.linked, self.connected)
        ) or bool(self.connection_service)


def connect_fritzconnection(config: FritzConfig) -> Tr064:
    """Build a real `FritzConnection` (blocking, slow: reads all descriptions and SCPDs)."""
    from fritzconnection import FritzConnection  # type: ignore[import-untyped]

    fc: Tr064 = FritzConnection(
        address=config.address,
        port=config.port,
        # explicit values, so fritzconnection never falls back to FRITZ_* environment variables
        user=config.username or FRITZ_DEFAULT_USERNAME,
        password=config.password.get_secret_value(),
        timeout=config.timeout_s,
        use_tls=config.use_tls,
        use_cache=False,
    )
    return fc


def _has(fc: Tr064, service: str, action: str) -> bool:
    svc = fc.services.get(service)
    if svc is None:
        return False
    try:
        return action in svc.actions
    except Exception:  # malformed SCPD
        return False


def _present(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return None if text in _NO_ADDRESS else text


class FritzSource:
    """Async facade over one FRITZ!Box; `poll()` never raises for router/network errors."""

    def __init__(self, config: FritzConfig, *, connect: Connect = connect_fritzconnection) -> None:
        self._config = config
        self._connect = connect
        self._fc: Tr064 | None = None
        self._lock = asyncio.Lock()
        self._last_uptime: int | None = None
        self._inflight: asyncio.Future[FritzReading] | None = None

    async def _drain(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])

    async def poll(self) -> FritzReading:
        """Read addresses and link state. A cancelled poll's worker thread is waited for by
        the next call, so two threads never share the connection."""
        async with self._lock:
            await self._drain()
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._poll_sync))
            return await asyncio.shield(self._inflight)

    async def close(self) -> None:
        """Drop the connection (closes fritzconnection's requests session when present)."""
        async with self._lock:
            await self._drain()
            fc, self._fc = self._fc, None
            session = getattr(fc, "session", None)
            if session is not None:
                await asyncio.to_thread(session.close)

    # --- blocking part, runs in a worker thread ---------------------------------------

    def _poll_sync(self) -> FritzReading:
        errors: list[str] = []
        if self._fc is None:
            try:
                self._fc = self._connect(self._config)
            except Exception as exc:
                return self._failed(f"connect: {_describe(exc)}")
        fc = self._fc

        def call(service: str, action: str) -> dict[str, Any] | None:
            try:
                return fc.call_action(service, action)
            except Exception as exc:
                errors.append(f"{service}.{action}: {_describe(exc)}")
                if _is_transport_error(exc):
                    self._fc = None  # rebuild next poll (box rebooted, address changed, ...)
                return None

        ipv4: AddressReading | None = None
        connected: bool | None = None
        uptime: int | None = None
        conn_service: str | None = None
        for service in self._config.ipv4_services:
            if not _has(fc, service, "GetExternalIPAddress"):
                continue
            result = call(service, "GetExternalIPAddress")
            raw = _present(result.get("NewExternalIPAddress") if result else None)
            if raw is None:
                continue
            ipv4 = self._reading(raw, "v4", service)
            conn_service = service
            break
        status_services = [conn_service] if conn_service else list(self._config.ipv4_services)
        for service in status_services:
            if not _has(fc, service, "GetStatusInfo"):
                continue
            status = call(service, "GetStatusInfo")
            if status is None:
                continue
            connected = status.get("NewConnectionStatus") == "Connected"
            raw_uptime = status.get("NewUptime")
            uptime = raw_uptime if isinstance(raw_uptime, int) else None
            conn_service = conn_service or service
            break

        ipv6: AddressReading | None = None
        if self._config.ipv6:
            for service in self._config.ipv6_services:
                if not _has(fc, service, "X_AVM_DE_GetExternalIPv6Address"):
                    continue
                result = call(service, "X_AVM_DE_GetExternalIPv6Address")
                raw = _present(result.get("NewExternalIPv6Address") if result else None)
                if raw is not None:
                    ipv6 = self._reading(raw, "v6", service)
                    break

        linked: bool | None = None
        for service in self._config.link_services:
            if not _has(fc, service, "GetCommonLinkProperties"):
                continue
            props = call(service, "GetCommonLinkProperties")
            if props is not None:
                linked = props.get("NewPhysicalLinkStatus") == "Up"
                break

        reset = uptime is not None and self._last_uptime is not None and uptime < self._last_uptime
        if uptime is not None:
            self._last_uptime = uptime
        if conn_service is None and ipv6 is None and linked is None and not errors:
            errors.append("no usable WAN service found on the box")
        return FritzReading(
            ipv4, ipv6, linked, connected, uptime, conn_service, reset, tuple(errors)
        )

    def _reading(self, raw: str, family: Family, service: str) -> AddressReading:
        check = check_ip(raw, family=family, allow_documentation=self._config.allow_documentation)
        return AddressReading(raw=raw, check=check, service=service)

    def _failed(self, error: str) -> FritzReading:
        log.warning("FRITZ!Box %s: %s", self._config.address, error)
        return FritzReading(None, None, None, None, None, None, False, (error,))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _is_transport_error(exc: BaseException) -> bool:
    """Connection-level failures (vs. SOAP faults) mean the cached connection may be stale."""
    import requests

    if isinstance(exc, requests.RequestException | OSError):
        return True
    return "Unable to get a connection" in str(exc)

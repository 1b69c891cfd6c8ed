"""Windows RRAS driver: site-to-site interfaces over PowerShell remoting (WinRM/PSRP).

    transport = PypsrpTransport("rras01.corp.example", "CORP\\svc-tw", password,
                                ca_file="/etc/tw/rras-ca.pem")
    rras = Rras(transport)
    iface = await rras.interface("Azure")                 # Get-VpnS2SInterface -Name Azure
    await rras.set_destination("Azure", "20.50.1.10")     # Set-VpnS2SInterface ... -Force
    await rras.connect("Azure")                           # Connect-VpnS2SInterface -Name Azure

Remoting sits behind :class:`PsTransport` - one cmdlet with named parameters in, plain
objects out - so the driver can be exercised without a Windows host:
:class:`PypsrpTransport` is the real one, :class:`RecordedPsTransport` answers from recorded
``Get-VpnS2SInterface`` objects and records the calls it got.

Parameters are always *bound* (pypsrp ``add_cmdlet(...).add_parameter(name, value)``, sent
as PSRP command arguments), never formatted into script text, so an interface name such as
``x; Remove-Item C:\\`` stays a string value. Only the four cmdlets below may be invoked and
parameter names must be plain identifiers. Cmdlets that would ask for confirmation get
``-Force`` (``Set-``, ``Disconnect-VpnS2SInterface``); ``Connect-VpnS2SInterface`` has no
``-Force`` and gets ``-Confirm:$false``. A remote prompt would hang the session.

``Set-VpnS2SInterface``: "if the connection is already connected, the changes take effect
after disconnection" - a new destination needs :meth:`Rras.disconnect` then
:meth:`Rras.connect`.

Transport: WinRM over HTTPS (5986) with certificate verification (``ca_file`` for a private
CA), ``auth="negotiate"`` (Kerberos, else NTLM; ``"kerberos"`` needs ``pypsrp[kerberos]``),
and a JEA endpoint (``configuration_name``, default ``TunnelWarden``) that exposes only
these cmdlets - see ``docs/devices.md`` for the role capability and session configuration
files. pypsrp is synchronous, so each call runs in a thread (``asyncio.to_thread``).

Not verified here (no PSRP server can run in this environment): the exact deserialized
shape of the CIM objects over a real JEA session (the parser takes properties from both the
adapted and extended property sets and accepts ``RetryInterval`` as well as the formatted
``RetryInterval(s)``), and the error records RRAS emits for an unreachable peer.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from bot.redact import Redactor, process_redactor
from playbooks.devices.common import (
    AccessDenied,
    AuthenticationFailed,
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    DeviceUnreachable,
    NotFound,
    PermanentDeviceError,
    ProtocolError,
    RequestRejected,
    TlsVerificationFailed,
    secret,
)

__all__ = [
    "ALLOWED_CMDLETS",
    "RECORDED_INTERFACES",
    "PsTransport",
    "PypsrpTransport",
    "RecordedPsTransport",
    "RemoteCommandFailed",
    "Rras",
    "S2SInterface",
    "build_command",
    "to_plain",
]

log = logging.getLogger("tunnelwarden.devices.rras")

ALLOWED_CMDLETS = frozenset(
    {
        "Get-VpnS2SInterface",
        "Connect-VpnS2SInterface",
        "Set-VpnS2SInterface",
        "Disconnect-VpnS2SInterface",
    }
)
PARAMETER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9-]+$"
)


class PsTransport(Protocol):
    """Runs one cmdlet remotely with bound parameters; returns its output as plain dicts."""

    async def invoke(self, cmdlet: str, params: dict[str, object]) -> list[dict[str, object]]: ...


class RemoteCommandFailed(PermanentDeviceError):
    """The cmdlet ran and reported errors (its error records are in ``errors``)."""

    default_code = "RemoteCommandFailed"

    def __init__(self, message: str, *, errors: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = errors or []


def check_command(cmdlet: str, params: Mapping[str, object]) -> None:
    if cmdlet not in ALLOWED_CMDLETS:
        raise ValueError(f"cmdlet {cmdlet!r} is not one this driver may run")
    for name, value in params.items():
        if not PARAMETER_NAME.match(name):
            raise ValueError(f"invalid parameter name {name!r}")
        if not isinstance(value, str | bool | int) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"parameter {name!r}: unsupported value type {type(value).__name__}")


def build_command(ps: Any, cmdlet: str, params: Mapping[str, object]) -> Any:
    """Add ``cmdlet`` with its parameters *bound* to a pypsrp ``PowerShell``; returns it.

    A ``True`` for a switch parameter is bound as ``-Switch:$true``; lists become arrays.
    """
    check_command(cmdlet, params)
    ps.add_cmdlet(cmdlet)
    for name, value in params.items():
        ps.add_parameter(name, list(value) if isinstance(value, list) else value)
    return ps


def to_plain(value: Any) -> Any:
    """A deserialized PowerShell object as plain Python (dicts, lists, str, numbers)."""
    from pypsrp.complex_objects import ComplexObject, GenericComplexObject

    if isinstance(value, GenericComplexObject):
        props: dict[str, Any] = {}
        for source in (value.adapted_properties, value.extended_properties):
            for key, item in source.items():
                props.setdefault(str(key), to_plain(item))
        if not props and value.property_sets:
            return [to_plain(v) for v in value.property_sets]
        if not props:
            return str(value)
        return props
    if isinstance(value, ComplexObject):
        return str(value)  # enums and other typed values: their ToString
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class S2SInterface:
    """A site-to-site interface as ``Get-VpnS2SInterface`` shows it."""

    name: str
    destination: tuple[str, ...]
    connection_state: str
    admin_status: bool
    protocol: str | None = None
    authentication_method: str | None = None
    last_error: int | None = None
    number_of_tries: int | None = None
    retry_interval: int | None = None
    raw: Mapping[str, object] = field(repr=False, compare=False, default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.connection_state.lower() == "connected"

    @classmethod
    def from_object(cls, obj: Mapping[str, object]) -> S2SInterface:
        destination = obj.get("Destination")
        if isinstance(destination, str):
            dests: tuple[str, ...] = (destination,)
        elif isinstance(destination, list | tuple):
            dests = tuple(str(d) for d in destination)
        else:
            dests = ()
        admin = obj.get("AdminStatus")
        return cls(
            name=str(obj.get("Name", "")),
            destination=dests,
            connection_state=str(obj.get("ConnectionState") or "Unknown"),
            admin_status=admin if isinstance(admin, bool) else str(admin).lower() == "true",
            protocol=_opt_str(obj.get("Protocol")),
            authentication_method=_opt_str(obj.get("AuthenticationMethod")),
            last_error=_opt_int(obj.get("LastError")),
            number_of_tries=_opt_int(obj.get("NumberOfTries")),
            retry_interval=_opt_int(obj.get("RetryInterval", obj.get("RetryInterval(s)"))),
            raw=dict(obj),
        )


def _opt_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _opt_int(value: object) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def valid_destination(value: str) -> str:
    """An IP address or DNS name, as ``-Destination`` takes (anything else is refused)."""
    candidate = value.strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if HOSTNAME.match(candidate):
        return candidate
    raise ValueError(f"not an IP address or host name: {value!r}")


class Rras:
    """An RRAS server's site-to-site interfaces, through a :class:`PsTransport`."""

    kind = "rras"

    def __init__(self, transport: PsTransport, *, name: str = "rras") -> None:
        self.transport = transport
        self.name = name

    def __repr__(self) -> str:
        return f"Rras(name={self.name!r})"

    async def _run(self, cmdlet: str, params: dict[str, object]) -> list[dict[str, object]]:
        check_command(cmdlet, params)
        log.debug("%s: %s %s", self.name, cmdlet, sorted(params))
        return await self.transport.invoke(cmdlet, params)

    def _one(self, output: list[dict[str, object]], what: str) -> S2SInterface:
        found = [o for o in output if isinstance(o, Mapping) and "Name" in o]
        if len(found) != 1:
            raise ProtocolError(f"{what} returned {len(found)} interfaces", device=self.name)
        return S2SInterface.from_object(found[0])

    async def interface(self, name: str) -> S2SInterface:
        """``Get-VpnS2SInterface -Name <name>``."""
        output = await self._run("Get-VpnS2SInterface", {"Name": name})
        return self._one(output, f"Get-VpnS2SInterface {name!r}")

    async def connect(self, name: str) -> S2SInterface:
        """``Connect-VpnS2SInterface -Name <name> -PassThru -Confirm:$false``."""
        output = await self._run(
            "Connect-VpnS2SInterface", {"Name": name, "PassThru": True, "Confirm": False}
        )
        log.info("%s: Connect-VpnS2SInterface %r", self.name, name)
        return self._one(output, f"Connect-VpnS2SInterface {name!r}")

    async def set_destination(self, name: str, destination: str) -> S2SInterface:
        """``Set-VpnS2SInterface -Name <name> -Destination @(<ip>) -Force -PassThru``."""
        params: dict[str, object] = {
            "Name": name,
            "Destination": [valid_destination(destination)],
            "Force": True,
            "PassThru": True,
        }
        output = await self._run("Set-VpnS2SInterface", params)
        log.info("%s: Set-VpnS2SInterface %r -Destination %s", self.name, name, destination)
        if not output:  # PassThru should return it; read it back otherwise
            return await self.interface(name)
        return self._one(output, f"Set-VpnS2SInterface {name!r}")

    async def disconnect(self, name: str) -> None:
        """``Disconnect-VpnS2SInterface -Name <name> -Force`` (it prompts without -Force)."""
        await self._run("Disconnect-VpnS2SInterface", {"Name": name, "Force": True})
        log.info("%s: Disconnect-VpnS2SInterface %r", self.name, name)


class PypsrpTransport:
    """PSRP over WinRM (HTTPS) with pypsrp, one runspace pool per call, in a thread."""

    def __init__(
        self,
        host: str,
        username: str,
        password: str | SecretStr,
        *,
        port: int = 5986,
        ssl: bool = True,
        auth: str = "negotiate",
        verify_tls: bool = True,
        ca_file: str | Path | None = None,
        configuration_name: str = "TunnelWarden",
        operation_timeout: int = 20,
        connection_timeout: int = 30,
        read_timeout: int = 60,
        name: str | None = None,
        factories: tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]] | None = None,
        redact: Redactor | None = None,
    ) -> None:
        if not ssl and not _loopback(host):
            raise ValueError("WinRM without TLS is refused (use HTTPS, port 5986)")
        if auth not in ("negotiate", "ntlm", "kerberos", "credssp"):
            raise ValueError(f"unsupported WinRM auth {auth!r}")
        if ca_file is not None and not Path(ca_file).is_file():
            raise ValueError(f"ca_file {str(ca_file)!r} is not a readable file")
        self.host = host
        self.port = port
        self.ssl = ssl
        self.username = username
        self._password = secret(password)
        self.auth = auth
        # requests (under pypsrp) takes a CA bundle path where a bool is expected
        self.cert_validation: bool | str = (
            (str(ca_file) if ca_file else True) if verify_tls else False
        )
        self.configuration_name = configuration_name
        self.operation_timeout = operation_timeout
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout
        self.name = name or f"rras {host}"
        self._factories = factories
        # The process's one redactor (``Services.redact``), told the WinRM password.
        self._redact = redact or process_redactor()
        if self._password is not None:
            self._redact.add(self._password.get_secret_value(), username=username)
        if not verify_tls:
            log.warning("TLS certificate verification is off for WinRM to %s", host)

    def __repr__(self) -> str:
        return (
            f"PypsrpTransport(host={self.host!r}, port={self.port}, auth={self.auth!r}, "
            f"configuration_name={self.configuration_name!r})"
        )

    async def invoke(self, cmdlet: str, params: dict[str, object]) -> list[dict[str, object]]:
        check_command(cmdlet, params)
        return await asyncio.to_thread(self._invoke_sync, cmdlet, copy.deepcopy(params))

    def _classes(self) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        if self._factories is not None:
            return self._factories
        from pypsrp.powershell import PowerShell, RunspacePool
        from pypsrp.wsman import WSMan

        return WSMan, RunspacePool, PowerShell

    def _invoke_sync(self, cmdlet: str, params: dict[str, object]) -> list[dict[str, object]]:
        wsman_cls, pool_cls, ps_cls = self._classes()
        assert self._password is not None
        try:
            wsman = wsman_cls(
                self.host,
                port=self.port,
                username=self.username,
                password=self._password.get_secret_value(),
                ssl=self.ssl,
                auth=self.auth,
                cert_validation=self.cert_validation,
                connection_timeout=self.connection_timeout,
                read_timeout=self.read_timeout,
                operation_timeout=self.operation_timeout,
            )
            with (
                wsman,
                pool_cls(wsman, configuration_name=self.configuration_name) as pool,
            ):
                ps = build_command(ps_cls(pool), cmdlet, params)
                output = ps.invoke()
                if ps.had_errors:
                    errors = [self._redact(_error_text(e)) for e in ps.streams.error]
                    raise self._command_failed(cmdlet, errors)
        except DeviceError:
            raise
        except Exception as exc:
            raise self._classify(exc) from None
        plain = [to_plain(o) for o in output]
        return [o if isinstance(o, dict) else {"Value": o} for o in plain]

    def _command_failed(self, cmdlet: str, errors: list[str]) -> DeviceError:
        joined = "; ".join(errors)[:500] or "no error text"
        lowered = joined.lower()
        if "objectnotfound" in lowered or "not found" in lowered or "cannot find" in lowered:
            return NotFound(f"{cmdlet}: {joined}", device=self.name)
        if "access is denied" in lowered or "permissiondenied" in lowered:
            return AccessDenied(f"{cmdlet}: {joined}", device=self.name)
        return RemoteCommandFailed(f"{cmdlet}: {joined}", errors=errors, device=self.name)

    def _classify(self, exc: Exception) -> DeviceError:
        """A pypsrp/requests failure as a :class:`DeviceError` (secrets scrubbed)."""
        kind = type(exc).__name__
        text = self._redact(str(exc))[:300]
        mro = {c.__name__ for c in type(exc).__mro__}
        if "AuthenticationError" in mro:
            return AuthenticationFailed(f"WinRM authentication failed: {text}", device=self.name)
        if "WinRMTransportError" in mro:
            code = getattr(exc, "code", None)
            if code == 401:
                return AuthenticationFailed("WinRM authentication failed (401)", device=self.name)
            if isinstance(code, int) and code >= 500:
                return DeviceUnavailable(f"WinRM HTTP {code}", device=self.name, status=code)
            return RequestRejected(f"WinRM HTTP {code}", device=self.name, status=code)
        if "WSManFaultError" in mro:
            if "access is denied" in text.lower():
                endpoint = self.configuration_name
                return AccessDenied(
                    f"WinRM refused the session (JEA endpoint {endpoint!r}?): {text}",
                    device=self.name,
                )
            return RequestRejected(f"WSMan fault: {text}", device=self.name)
        if "SSLError" in mro:
            return TlsVerificationFailed(
                "the WinRM certificate does not verify; set ca_file", device=self.name
            )
        if mro & {"Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutError"}:
            return DeviceTimeout(f"WinRM timed out ({kind})", device=self.name)
        if mro & {"ConnectionError", "OSError"}:
            return DeviceUnreachable(f"WinRM connection failed ({kind}): {text}", device=self.name)
        return ProtocolError(f"PowerShell remoting failed ({kind}): {text}", device=self.name)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_text(record: Any) -> str:
    """The message of a pypsrp ``ErrorRecord`` (its exception's Message, else its category)."""
    exception = getattr(record, "exception", None)
    for source in (
        getattr(exception, "adapted_properties", None),
        getattr(exception, "extended_properties", None),
    ):
        if isinstance(source, dict) and source.get("Message"):
            message = str(source["Message"])
            break
    else:
        message = str(getattr(record, "details_message", None) or getattr(record, "message", ""))
    fq = getattr(record, "fq_error", None)
    return f"{message} ({fq})" if fq else message


# Recorded ``Get-VpnS2SInterface | Format-List -Property *`` objects (RemoteAccess module on
# Windows Server 2022), as PSRP delivers them: the first is the module documentation's own
# example interface, the second an IKEv2 PSK tunnel to an Azure VPN gateway.
RECORDED_INTERFACES: dict[str, dict[str, object]] = {
    "edge1": {
        "Name": "edge1",
        "Destination": ["131.107.0.2"],
        "AdminStatus": True,
        "ConnectionState": "Disconnected",
        "IPv4Subnet": ["10.0.0.0/24:100"],
        "IPv6Subnet": ["2001:db8:1::/48:100"],
        "Protocol": "Ikev2",
        "EncryptionType": "RequireEncryption",
        "AuthenticationMethod": "PSKOnly",
        "EapMethod": None,
        "Certificate": None,
        "UserName": None,
        "ResponderAuthenticationMethod": "PSKOnly",
        "NumberOfTries": 3,
        "RetryInterval(s)": 60,
        "SADataSizeForRenegotiation(KB)": 33553408,
        "SALifeTime(s)": 3600,
        "NetworkOutageTime(s)": 15,
        "IdleDisconnect(s)": 300,
        "InternalIPv4": True,
        "InternalIPv6": True,
        "PromoteAlternate": False,
        "LastError": 0,
        "UnReachabilityReasons": None,
    },
    "Azure": {
        "Name": "Azure",
        "Destination": ["20.50.1.10"],
        "AdminStatus": True,
        "ConnectionState": "Connected",
        "IPv4Subnet": ["10.20.0.0/16:100"],
        "IPv6Subnet": [],
        "Protocol": "Ikev2",
        "EncryptionType": "RequireEncryption",
        "AuthenticationMethod": "PSKOnly",
        "EapMethod": None,
        "Certificate": None,
        "UserName": None,
        "ResponderAuthenticationMethod": "PSKOnly",
        "NumberOfTries": 3,
        "RetryInterval(s)": 60,
        "SADataSizeForRenegotiation(KB)": 102400,
        "SALifeTime(s)": 27000,
        "NetworkOutageTime(s)": 0,
        "IdleDisconnect(s)": 0,
        "InternalIPv4": True,
        "InternalIPv6": False,
        "PromoteAlternate": False,
        "LastError": 0,
        "UnReachabilityReasons": None,
        "PSComputerName": "rras01.corp.example",
    },
}


class RecordedPsTransport:
    """A stand-in for a PSRP server: recorded interfaces, and every call it received.

    ``calls`` holds ``(cmdlet, params)`` exactly as the driver built them. Connecting
    succeeds when the interface is enabled and its destination is in ``reachable`` (all
    destinations by default); a new destination takes effect on the next connect.
    """

    def __init__(
        self,
        interfaces: Mapping[str, Mapping[str, object]] | None = None,
        *,
        reachable: set[str] | None = None,
    ) -> None:
        source = RECORDED_INTERFACES if interfaces is None else interfaces
        self.interfaces = {k: dict(copy.deepcopy(v)) for k, v in source.items()}
        self.reachable = reachable
        self.calls: list[tuple[str, dict[str, object]]] = []

    async def invoke(self, cmdlet: str, params: dict[str, object]) -> list[dict[str, object]]:
        check_command(cmdlet, params)
        self.calls.append((cmdlet, copy.deepcopy(params)))
        name = str(params.get("Name", ""))
        iface = self.interfaces.get(name)
        if iface is None:
            raise NotFound(
                f"{cmdlet}: The interface {name} could not be found. "
                "(ObjectNotFound: VpnS2SInterface)",
                device="recorded",
            )
        if cmdlet == "Get-VpnS2SInterface":
            return [copy.deepcopy(iface)]
        if cmdlet == "Set-VpnS2SInterface":
            if "Destination" in params:
                iface["Destination"] = list(params["Destination"])  # type: ignore[call-overload]
            return [copy.deepcopy(iface)] if params.get("PassThru") else []
        if cmdlet == "Disconnect-VpnS2SInterface":
            iface["ConnectionState"] = "Disconnected"
            return []
        # Connect-VpnS2SInterface
        destinations = [str(d) for d in iface.get("Destination") or []]  # type: ignore[attr-defined]
        ok = bool(iface.get("AdminStatus")) and any(
            self.reachable is None or d in self.reachable for d in destinations
        )
        if not ok:
            iface["ConnectionState"] = "Disconnected"
            iface["LastError"] = 809
            raise RemoteCommandFailed(
                f"{cmdlet}: The network connection between your computer and the VPN server "
                "could not be established because the remote server is not responding. (809)",
                device="recorded",
            )
        iface["ConnectionState"] = "Connected"
        iface["LastError"] = 0
        return [copy.deepcopy(iface)] if params.get("PassThru") else []

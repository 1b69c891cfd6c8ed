"""KEMP (Progress Kemp) LoadMaster driver: read and enable/disable real servers.

    lm = Kemp("https://lm.example", api_key=key, ca_file="/etc/tw/lm.pem")
    async with lm:
        vs = await lm.virtual_service("203.0.113.50", 500, "udp")     # showvs
        await lm.disable_real_server("10.0.0.11")                     # disablers (all VSs)
        await lm.set_real_server_enabled("203.0.113.50", 500, "udp", "10.0.0.11", 500, True)

Two wire formats, as the LoadMaster has them (``api=``):

- ``"v1"`` (default): ``/access/<command>`` with the parameters as an
  ``application/x-www-form-urlencoded`` POST body - the documented alternative to the query
  string that keeps an API key out of URLs and logs - and XML replies
  (``<Response stat=.. code="ok|fail">``). Auth: HTTP Basic or the ``apikey`` parameter.
- ``"v2"`` (LMOS >= 7.2.52): ``POST /accessv2`` with a JSON object ``{"cmd": ..., ...}``
  carrying ``apikey`` or ``apiuser``/``apipass``; JSON replies.

Commands used (parameter names from the RESTful API reference and the vendor's PowerShell
module): ``showvs`` (``vs`` address or index, ``port``, ``prot``), ``showrs``/``modrs``
(``vs``, ``port``, ``prot``, ``rs`` address or ``!<RsIndex>``, ``rsport``; ``modrs
enable=1|0`` enables or disables the real server in that one virtual service), and
``enablers``/``disablers`` (``rs`` address, optional ``port``), which act on the real server
in *every* virtual service - for an Always On VPN farm that means both IKE ports at once.

Not verified from documentation: the exact v2 reply layout and value types (the parser
accepts the v1 field names at top level with either ``"Y"``/``"N"`` or booleans); which
``Status`` a disabled real server reports (anything but ``Up`` counts as not serving); the
HTTP status codes of errors (the ``stat``/``code`` in the body are used when present).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr

from playbooks.devices.common import (
    AuthenticationFailed,
    DeviceConfigError,
    DeviceError,
    HttpDevice,
    NotFound,
    ProtocolError,
    Reply,
    RequestRejected,
    basic_auth,
    secret,
)

__all__ = ["Kemp", "RealServer", "VirtualService"]

log = logging.getLogger("tunnelwarden.devices.kemp")


@dataclass(frozen=True)
class RealServer:
    address: str
    port: int | None
    index: int | None
    vs_index: int | None
    enabled: bool
    status: str  # Up | Down | Disabled | ...
    weight: int | None = None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def up(self) -> bool:
        """Enabled and passing health checks: it takes traffic."""
        return self.enabled and self.status.lower() == "up"

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> RealServer:
        return cls(
            address=str(obj.get("Addr") or obj.get("DnsName") or ""),
            port=_int(obj.get("Port")),
            index=_int(obj.get("RsIndex", obj.get("RSIndex"))),
            vs_index=_int(obj.get("VSIndex", obj.get("VsIndex"))),
            enabled=_flag(obj.get("Enable")),
            status=str(obj.get("Status") or ("Up" if _flag(obj.get("Enable")) else "Disabled")),
            weight=_int(obj.get("Weight")),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class VirtualService:
    index: int | None
    address: str
    port: int | None
    protocol: str | None
    name: str | None
    status: str
    real_servers: tuple[RealServer, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def real_server(self, address: str, port: int | None = None) -> RealServer | None:
        for rs in self.real_servers:
            if rs.address == address and (port is None or rs.port == port):
                return rs
        return None

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> VirtualService:
        servers = obj.get("Rs") or []
        if isinstance(servers, Mapping):
            servers = [servers]
        return cls(
            index=_int(obj.get("Index")),
            address=str(obj.get("VSAddress") or ""),
            port=_int(obj.get("VSPort")),
            protocol=_str(obj.get("Protocol")),
            name=_str(obj.get("NickName")),
            status=str(obj.get("Status") or ""),
            real_servers=tuple(RealServer.from_api(s) for s in servers if isinstance(s, Mapping)),
            raw=dict(obj),
        )


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("y", "yes", "1", "true", "on")


def _xml_to_data(element: ET.Element) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        value = _xml_to_data(child)
        if child.tag in out:
            existing = out[child.tag]
            out[child.tag] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            out[child.tag] = value
    return out


class Kemp(HttpDevice):
    """A LoadMaster reached through its RESTful API."""

    kind = "kemp"

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | SecretStr | None = None,
        api_key: str | SecretStr | None = None,
        api: Literal["v1", "v2"] = "v1",
        verify_tls: bool = True,
        ca_file: str | Path | None = None,
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be 'v1' or 'v2', not {api!r}")
        self._api_key = secret(api_key)
        self._password = secret(password)
        if self._api_key is None and (username is None or self._password is None):
            raise DeviceConfigError("a LoadMaster needs api_key, or username and password")
        super().__init__(
            url,
            name=name,
            verify_tls=verify_tls,
            ca_file=ca_file,
            timeout=timeout,
            secrets=(self._api_key, self._password),
        )
        self.username = username
        self.api = api
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Kemp:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = self.new_session()
        return self._http

    # ------------------------------------------------------------------ wire formats
    async def command(self, cmd: str, params: Mapping[str, str | int]) -> dict[str, Any]:
        """Run one API command; returns its data (``{}`` for a plain success)."""
        clean = {k: str(v) for k, v in params.items()}
        if self.api == "v2":
            return await self._v2(cmd, clean)
        return await self._v1(cmd, clean)

    async def _v1(self, cmd: str, params: dict[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/xml"}
        if self._api_key is not None:
            params = {**params, "apikey": self._api_key.get_secret_value()}
        else:
            assert self.username is not None and self._password is not None
            headers.update(basic_auth(self.username, self._password))
        reply = await self.send(
            self._session(), "POST", f"/access/{cmd}", data=params, headers=headers
        )
        try:
            root = ET.fromstring(reply.body) if reply.body.strip().startswith(b"<") else None
        except ET.ParseError:
            root = None
        if root is None or root.tag != "Response":
            if reply.status >= 400:
                raise self.fail(reply, cmd)
            raise ProtocolError(f"{cmd}: the reply is not a LoadMaster response", device=self.name)
        if root.get("code") != "ok":
            error = root.findtext("Error") or ""
            raise self._command_error(cmd, reply, _int(root.get("stat")), error)
        success = root.find("Success")
        data = success.find("Data") if success is not None else None
        parsed = _xml_to_data(data) if data is not None else {}
        return parsed if isinstance(parsed, dict) else {}

    async def _v2(self, cmd: str, params: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = {**params, "cmd": cmd}
        if self._api_key is not None:
            body["apikey"] = self._api_key.get_secret_value()
        else:
            assert self.username is not None and self._password is not None
            body["apiuser"] = self.username
            body["apipass"] = self._password.get_secret_value()
        reply = await self.send(
            self._session(), "POST", "/accessv2", json=body, headers={"Accept": "application/json"}
        )
        data = reply.json()
        if not isinstance(data, dict):
            if reply.status >= 400:
                raise self.fail(reply, cmd)
            raise ProtocolError(f"{cmd}: the reply is not a JSON object", device=self.name)
        if data.get("status") != "ok" or reply.status >= 400:
            code = _int(data.get("code")) or reply.status
            raise self._command_error(cmd, reply, code, str(data.get("message", "")))
        return {k: v for k, v in data.items() if k not in ("code", "status", "message")}

    def _command_error(self, cmd: str, reply: Reply, stat: int | None, error: str) -> DeviceError:
        message = f"{cmd}: {self.scrub(error) or 'failed'}"
        status = stat or reply.status
        if status == 401 or reply.status == 401:
            return AuthenticationFailed(message, device=self.name, status=401)
        if reply.status >= 500 or status >= 500:
            return self.fail(reply, cmd, error)
        if "unknown" in error.lower() or "not found" in error.lower():
            return NotFound(message, device=self.name, status=status)
        return RequestRejected(message, device=self.name, status=status)

    # ------------------------------------------------------------------ operations
    async def virtual_service(
        self, vs: str, port: int | None = None, prot: str | None = None
    ) -> VirtualService:
        """A virtual service (by address + port + protocol, or by index) with its servers."""
        params: dict[str, str | int] = {"vs": vs}
        if port is not None:
            params["port"] = port
        if prot is not None:
            params["prot"] = prot
        data = await self.command("showvs", params)
        node = data.get("VS", data)
        if isinstance(node, list):
            node = node[0] if node else {}
        if not isinstance(node, Mapping):
            raise ProtocolError("showvs returned no virtual service", device=self.name)
        return VirtualService.from_api(node)

    async def real_server(
        self, vs: str, port: int | None, prot: str | None, rs: str, rsport: int | None = None
    ) -> RealServer:
        params = self._rs_params(vs, port, prot, rs, rsport)
        data = await self.command("showrs", params)
        node = data.get("Rs", data)
        if isinstance(node, list):
            node = node[0] if node else {}
        if not isinstance(node, Mapping) or not node:
            raise ProtocolError("showrs returned no real server", device=self.name)
        return RealServer.from_api(node)

    async def set_real_server_enabled(
        self,
        vs: str,
        port: int | None,
        prot: str | None,
        rs: str,
        rsport: int | None,
        enabled: bool,
    ) -> None:
        """Enable or disable real server ``rs`` in one virtual service (``modrs``)."""
        params = self._rs_params(vs, port, prot, rs, rsport)
        params["enable"] = 1 if enabled else 0
        await self.command("modrs", params)
        log.info("%s: real server %s %s in %s", self.name, rs, _verb(enabled), vs)

    async def enable_real_server(self, rs: str, port: int | None = None) -> None:
        """Enable real server ``rs`` in every virtual service (``enablers``)."""
        await self._global("enablers", rs, port)

    async def disable_real_server(self, rs: str, port: int | None = None) -> None:
        """Disable real server ``rs`` in every virtual service (``disablers``)."""
        await self._global("disablers", rs, port)

    async def _global(self, cmd: str, rs: str, port: int | None) -> None:
        params: dict[str, str | int] = {"rs": rs}
        if port is not None:
            params["port"] = port
        await self.command(cmd, params)
        log.info("%s: real server %s %s everywhere", self.name, rs, _verb(cmd == "enablers"))

    @staticmethod
    def _rs_params(
        vs: str, port: int | None, prot: str | None, rs: str, rsport: int | None
    ) -> dict[str, str | int]:
        params: dict[str, str | int] = {"vs": vs, "rs": rs}
        if port is not None:
            params["port"] = port
        if prot is not None:
            params["prot"] = prot
        if rsport is not None:
            params["rsport"] = rsport
        return params


def _verb(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"

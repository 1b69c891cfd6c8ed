"""Barracuda CloudGen Firewall driver (REST API): box and service state, service restarts.

    fw = Barracuda("https://cgf.example:8443", token=token, ca_file="/etc/tw/cgf.pem")
    async with fw:
        box = await fw.box_state()                 # GET  /rest/control/v1/box
        vpn = await fw.service("VPN")              # GET  /rest/control/v1/box/services/VPN
        await fw.restart_service("VPN")            # POST .../box/services/VPN/restart

Authentication is an ``X-API-Token`` header (preferred: create a token for a dedicated
administrator whose role allows REST API access, write access only if restarts are wanted)
or HTTP Basic. The REST API service listens on HTTPS (port configurable, 8443 is common);
plain HTTP is bound to the box's loopback only.

Restarting the VPN service drops *every* tunnel of the box, not only the broken one: the
playbook must treat it as destructive (approval or ``allow_destructive``).

Configuration transactions (``/rest/config/v1``): :meth:`Barracuda.transaction` opens one
(``POST begin`` -> token), yields the token for ``?token=`` calls, and commits on success or
rolls back on error. This follows a community client; the reply shapes are not in the
vendor documentation we found.

Not verified from documentation: any REST endpoint that lists, terminates or initiates an
individual IPsec tunnel (none found - "Terminate Tunnel" exists only in Firewall Admin);
the configuration-tree paths of site-to-site tunnel settings under ``/rest/config/v1`` (so
no method here changes them); the exact service name of the VPN service on a given box
(configurable, default ``VPN``); the status code of a successful control POST (any 2xx is
accepted) and the value set of ``state`` fields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr

from playbooks.devices.common import (
    DeviceConfigError,
    DeviceError,
    HttpDevice,
    ProtocolError,
    Reply,
    basic_auth,
    quote_segment,
    secret,
    shielded,
)

__all__ = ["Barracuda", "BoxState", "ServiceState"]

log = logging.getLogger("tunnelwarden.devices.barracuda")

CONTROL = "/rest/control/v1"
CONFIG = "/rest/config/v1"
HEADERS = {"Accept": "application/json"}


@dataclass(frozen=True)
class BoxState:
    server_state: str | None
    net_state: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> BoxState:
        return cls(
            server_state=_opt(obj.get("serverState")),
            net_state=_opt(obj.get("netState")),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str | None
    module: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def running(self) -> bool:
        return (self.state or "").lower() in ("running", "ok", "up", "started")

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> ServiceState:
        return cls(
            name=str(obj.get("name", "")),
            state=_opt(obj.get("state")),
            module=_opt(obj.get("moduleName")),
            raw=dict(obj),
        )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


class Barracuda(HttpDevice):
    """A CloudGen Firewall reached through its REST API."""

    kind = "barracuda"

    def __init__(
        self,
        url: str,
        *,
        token: str | SecretStr | None = None,
        username: str | None = None,
        password: str | SecretStr | None = None,
        verify_tls: bool = True,
        ca_file: str | Path | None = None,
        timeout: float = 30.0,
        name: str | None = None,
    ) -> None:
        self._token = secret(token)
        self._password = secret(password)
        if self._token is None and (username is None or self._password is None):
            raise DeviceConfigError("a Barracuda needs token, or username and password")
        super().__init__(
            url,
            name=name,
            verify_tls=verify_tls,
            ca_file=ca_file,
            timeout=timeout,
            secrets=(self._token, self._password),
        )
        self.username = username
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Barracuda:
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

    def _auth(self) -> dict[str, Any]:
        if self._token is not None:
            return {"headers": {**HEADERS, "X-API-Token": self._token.get_secret_value()}}
        assert self.username is not None and self._password is not None
        return {"headers": {**HEADERS, **basic_auth(self.username, self._password)}}

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        reply = await self.send(self._session(), method, path, **self._auth(), **kwargs)
        if reply.status >= 400:
            raise self.fail(reply, what, _message(reply))
        return reply.json()

    # ------------------------------------------------------------------ control API
    async def box_state(self) -> BoxState:
        body = await self._call("GET", f"{CONTROL}/box", "read box state")
        if not isinstance(body, dict):
            raise ProtocolError("box state is not a JSON object", device=self.name)
        return BoxState.from_api(body)

    async def services(self) -> list[ServiceState]:
        body = await self._call(
            "GET", f"{CONTROL}/box/services", "list services", params={"expand": "true"}
        )
        items = body.get("services") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ProtocolError("service list has no 'services' array", device=self.name)
        return [ServiceState.from_api(i if isinstance(i, dict) else {"name": i}) for i in items]

    async def service(self, name: str) -> ServiceState:
        path = f"{CONTROL}/box/services/{quote_segment(name)}"
        body = await self._call("GET", path, f"read service {name!r}")
        if not isinstance(body, dict):
            raise ProtocolError(f"service {name!r} state is not a JSON object", device=self.name)
        return ServiceState.from_api({"name": name, **body})

    async def restart_service(self, name: str) -> None:
        """Restart service ``name``. For the VPN service this drops every tunnel of the box."""
        await self._service_action(name, "restart")

    async def start_service(self, name: str) -> None:
        await self._service_action(name, "start")

    async def stop_service(self, name: str) -> None:
        await self._service_action(name, "stop")

    async def _service_action(self, name: str, action: Literal["restart", "start", "stop"]) -> None:
        path = f"{CONTROL}/box/services/{quote_segment(name)}/{action}"
        await self._call("POST", path, f"{action} service {name!r}")
        log.warning("%s: %s of service %r requested", self.name, action, name)

    # ------------------------------------------------------------------ config API
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[str]:
        """A configuration transaction: yields its token; commit on success, else roll back."""
        body = await self._call("POST", f"{CONFIG}/begin", "begin configuration transaction")
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError("begin returned no transaction token", device=self.name)
        try:
            yield token
        except BaseException:
            await shielded(self._rollback(token))
            raise
        await self._call(
            "POST", f"{CONFIG}/commit", "commit configuration", params={"token": token}
        )
        log.info("%s: configuration transaction committed", self.name)

    async def _rollback(self, token: str) -> None:
        try:
            await self._call("POST", f"{CONFIG}/rollback", "roll back", params={"token": token})
        except DeviceError as exc:
            log.warning("%s: rollback of a configuration transaction failed: %s", self.name, exc)


def _message(reply: Reply) -> str:
    body = reply.json()
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return reply.text().strip()

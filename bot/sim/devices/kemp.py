"""A KEMP (Progress Kemp) LoadMaster API simulator: virtual services and their real servers.

Two front ends over one world, as the LoadMaster has them:

- **API v1** ``/access/<command>`` (GET query or POST form parameters; XML replies
  ``<Response stat="200" code="ok"><Success>...</Success></Response>``, errors
  ``<Response stat="422" code="fail"><Error>...</Error></Response>``). Authentication is
  HTTP Basic or an ``apikey`` parameter.
- **API v2** ``POST /accessv2`` with a JSON object ``{"cmd": ..., <parameters>}`` carrying
  ``apikey`` or ``apiuser``/``apipass``; JSON replies with ``code``, ``status`` and
  ``message`` plus the command's data.

Commands modelled (parameter names as in the RESTful API reference and the vendor's
PowerShell module): ``listvs``; ``showvs`` (``vs`` = address or index, ``port``, ``prot``);
``showrs`` and ``modrs`` (``vs``, ``port``, ``prot``, ``rs`` = address or ``!<RsIndex>``,
``rsport``; ``modrs`` takes ``enable`` = 1/0 and ``weight``); ``enablers`` and
``disablers`` (``rs`` = real server address, optional ``port``), which enable or disable a
real server in every virtual service.

A real server reads ``Status`` ``Up``/``Down`` from its health (``PUT
/_sim/realservers/{address}`` ``{"healthy": false}``) and ``Disabled`` when not enabled;
``Enable`` is ``Y``/``N``.

Control API (``/_sim/``): ``GET /_sim/state``, ``/_sim/counters`` (``DELETE`` resets),
``PUT /_sim/realservers/{address}`` ``{"healthy": bool, "port"?: int}``, faults.

Not verified from documentation (the simulator's choices): the exact API v2 reply layout and
value types (here: the v1 fields at top level, numbers as JSON numbers, ``Enable`` as a
boolean); the HTTP status of errors (here equal to ``stat``: 422 for bad parameters, 401
"Unauthorized" for bad credentials); the ``Status`` a disabled real server reports
(``Disabled`` here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from bot.sim.devices.common import (
    Handler,
    SimDevice,
    add_sim_routes,
    fault_middleware,
    json_body,
    serve,
    url_for,
)

__all__ = [
    "KempDevice",
    "KempRealServer",
    "KempVirtualService",
    "create_app",
    "main",
    "start_kemp_sim",
]

OK_MESSAGE = "Command completed ok"


class CommandError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class KempRealServer:
    index: int
    addr: str
    port: int
    enable: bool = True
    healthy: bool = True
    weight: int = 1000
    forward: str = "nat"
    limit: int = 0
    critical: bool = False

    @property
    def status(self) -> str:
        if not self.enable:
            return "Disabled"
        return "Up" if self.healthy else "Down"


@dataclass
class KempVirtualService:
    index: int
    address: str
    port: int
    protocol: str
    name: str
    real_servers: list[KempRealServer] = field(default_factory=list)
    enable: bool = True

    @property
    def status(self) -> str:
        return "Up" if any(rs.status == "Up" for rs in self.real_servers) else "Down"


def default_services() -> list[KempVirtualService]:
    """An Always On VPN IKEv2 farm: UDP 500 and 4500 to two RRAS servers."""
    services: list[KempVirtualService] = []
    rs_index = 0
    for vs_index, port in enumerate((500, 4500), start=1):
        servers = []
        for addr in ("10.0.0.11", "10.0.0.12"):
            rs_index += 1
            servers.append(KempRealServer(rs_index, addr, port))
        services.append(
            KempVirtualService(
                vs_index, "203.0.113.50", port, "udp", f"AOVPN IKEv2 {port}", servers
            )
        )
    return services


@dataclass
class KempDevice(SimDevice):
    username: str = "bal"
    password: str = field(default="password", repr=False)
    api_keys: set[str] = field(default_factory=set, repr=False)
    services: list[KempVirtualService] = field(default_factory=default_services)

    kind = "kemp"

    def __post_init__(self) -> None:
        SimDevice.__init__(self)

    # ------------------------------------------------------------------ auth
    def authorize(self, header: str, params: dict[str, str]) -> None:
        key = params.get("apikey")
        if key is not None:
            if any(hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys):
                return
            self.count("auth_failures")
            raise CommandError(401, "Unauthorized")
        user, password = params.get("apiuser"), params.get("apipass")
        if user is None:
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() == "basic":
                try:
                    user, _, password = (
                        base64.b64decode(encoded, validate=True).decode().partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    user = None
        if (
            user is not None
            and password is not None
            and hmac.compare_digest(user.encode(), self.username.encode())
            and hmac.compare_digest(password.encode(), self.password.encode())
        ):
            return
        self.count("auth_failures")
        raise CommandError(401, "Unauthorized")

    # ------------------------------------------------------------------ lookups
    def find_vs(self, params: dict[str, str]) -> KempVirtualService:
        vs = params.get("vs")
        if not vs:
            raise CommandError(422, "Missing parameter: vs")
        port, prot = params.get("port"), (params.get("prot") or "").lower()
        for service in self.services:
            if vs.isdigit() and not port and int(vs) == service.index:
                return service
            if (
                service.address == vs
                and (not port or str(service.port) == port)
                and (not prot or service.protocol == prot)
            ):
                return service
        raise CommandError(422, "Unknown VS")

    def find_rs(self, service: KempVirtualService, params: dict[str, str]) -> KempRealServer:
        rs = params.get("rs")
        if not rs:
            raise CommandError(422, "Missing parameter: rs")
        rsport = params.get("rsport")
        for server in service.real_servers:
            if rs.startswith("!") and rs[1:].isdigit() and int(rs[1:]) == server.index:
                return server
            if server.addr == rs and (not rsport or str(server.port) == rsport):
                return server
        raise CommandError(422, "Unknown real server")

    # ------------------------------------------------------------------ commands
    def run(self, cmd: str, params: dict[str, str]) -> dict[str, Any] | None:
        """Execute a command; returns its data (``None`` for plain success)."""
        self.count(f"cmd:{cmd}")
        if cmd == "listvs":
            return {"VS": [vs_data(s) for s in self.services]}
        if cmd == "showvs":
            return vs_data(self.find_vs(params))
        if cmd == "showrs":
            return {
                "Rs": [rs_data(self.find_vs(params), self.find_rs(self.find_vs(params), params))]
            }
        if cmd == "modrs":
            service = self.find_vs(params)
            server = self.find_rs(service, params)
            if "enable" in params:
                server.enable = parse_flag(params["enable"])
                self.count("rs_enabled" if server.enable else "rs_disabled")
            if "weight" in params:
                if not params["weight"].isdigit():
                    raise CommandError(422, "Invalid weight")
                server.weight = int(params["weight"])
            return None
        if cmd in ("enablers", "disablers"):
            rs = params.get("rs")
            if not rs:
                raise CommandError(422, "Missing parameter: rs")
            port = params.get("port")
            matched = [
                server
                for service in self.services
                for server in service.real_servers
                if server.addr == rs and (not port or str(server.port) == port)
            ]
            if not matched:
                raise CommandError(422, "Unknown real server")
            for server in matched:
                server.enable = cmd == "enablers"
            self.count("rs_enabled" if cmd == "enablers" else "rs_disabled", len(matched))
            return None
        raise CommandError(422, f"Unknown command: {cmd}")

    def set_health(self, addr: str, healthy: bool, port: int | None = None) -> int:
        matched = 0
        for service in self.services:
            for server in service.real_servers:
                if server.addr == addr and (port is None or server.port == port):
                    server.healthy = healthy
                    matched += 1
        if not matched:
            raise KeyError(f"no real server {addr}")
        return matched

    def dump(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "services": [vs_data(s) for s in self.services],
            "counters": self.counter_snapshot(),
        }

    def render_error(self, status: int, message: str) -> web.StreamResponse:
        return xml_reply(status, error=message)


def parse_flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "y", "yes", "true", "on"):
        return True
    if lowered in ("0", "n", "no", "false", "off"):
        return False
    raise CommandError(422, f"Invalid value for enable: {value}")


def rs_data(service: KempVirtualService, server: KempRealServer) -> dict[str, Any]:
    return {
        "Status": server.status,
        "VSIndex": service.index,
        "RsIndex": server.index,
        "Addr": server.addr,
        "Port": server.port,
        "Forward": server.forward,
        "Weight": server.weight,
        "Limit": server.limit,
        "Enable": "Y" if server.enable else "N",
        "Critical": "Y" if server.critical else "N",
    }


def vs_data(service: KempVirtualService) -> dict[str, Any]:
    return {
        "Status": service.status,
        "Index": service.index,
        "VSAddress": service.address,
        "VSPort": service.port,
        "Protocol": service.protocol,
        "NickName": service.name,
        "Enable": "Y" if service.enable else "N",
        "NumberOfRSs": len(service.real_servers),
        "Rs": [rs_data(service, rs) for rs in service.real_servers],
    }


def to_xml(value: Any, tag: str) -> str:
    if isinstance(value, list):
        return "".join(to_xml(item, tag) for item in value)
    if isinstance(value, dict):
        inner = "".join(to_xml(v, k) for k, v in value.items())
        return f"<{tag}>{inner}</{tag}>"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def xml_reply(
    status: int, *, data: dict[str, Any] | None = None, error: str | None = None
) -> web.Response:
    head = '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
    if error is not None:
        body = f'<Response stat="{status}" code="fail"><Error>{escape(error)}</Error></Response>'
    elif data is None:
        body = f'<Response stat="200" code="ok"><Success>{OK_MESSAGE}</Success></Response>'
    else:
        inner = "".join(to_xml(v, k) for k, v in data.items())
        body = f'<Response stat="200" code="ok"><Success><Data>{inner}</Data></Success></Response>'
    return web.Response(
        text=head + body, status=status, content_type="text/xml", charset="ISO-8859-1"
    )


def _json_typed(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_typed(v) for v in value]
    if isinstance(value, dict):
        return {
            k: (v == "Y") if k in ("Enable", "Critical") else _json_typed(v)
            for k, v in value.items()
        }
    return value


DEVICE_KEY = web.AppKey("kemp", KempDevice)


def create_app(device: KempDevice) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_sim/"):
            device.count("requests")
        return await handler(request)

    app = web.Application(middlewares=[count, fault_middleware(device)])
    app[DEVICE_KEY] = device

    async def access_v1(request: web.Request) -> web.StreamResponse:
        params = {k: v for k, v in request.query.items()}
        if request.method == "POST":
            form = await request.post()
            params.update({k: str(v) for k, v in form.items()})
        try:
            device.authorize(request.headers.get("Authorization", ""), params)
        except CommandError:
            return web.Response(
                text="Unauthorized",
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="LoadMaster"'},
            )
        try:
            data = device.run(request.match_info["cmd"], params)
        except CommandError as exc:
            return xml_reply(exc.status, error=exc.message)
        return xml_reply(200, data=data)

    async def access_v2(request: web.Request) -> web.StreamResponse:
        try:
            body = await json_body(request)
        except ValueError:
            return _v2_error(400, "Invalid JSON")
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
        for k, v in body.items():  # numbers and booleans as the v1 strings
            if isinstance(v, bool):
                params[k] = "1" if v else "0"
            elif isinstance(v, int | float):
                params[k] = str(v)
        try:
            device.authorize(request.headers.get("Authorization", ""), params)
        except CommandError as exc:
            return _v2_error(exc.status, exc.message)
        cmd = params.pop("cmd", "")
        for secret in ("apikey", "apiuser", "apipass"):
            params.pop(secret, None)
        try:
            data = device.run(cmd, params)
        except CommandError as exc:
            return _v2_error(exc.status, exc.message)
        return web.json_response(
            {"code": 200, "message": OK_MESSAGE, "status": "ok", **_json_typed(data or {})}
        )

    app.router.add_route("GET", "/access/{cmd}", access_v1)
    app.router.add_route("POST", "/access/{cmd}", access_v1)
    app.router.add_route("POST", "/accessv2", access_v2)
    add_sim_routes(app, device, _control_routes(device))
    return app


def _v2_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message, "status": "fail"}, status=status)


def _control_routes(device: KempDevice) -> list[tuple[str, str, Handler]]:
    async def put_rs(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        healthy = body.get("healthy")
        if not isinstance(healthy, bool):
            raise ValueError('expected {"healthy": true|false}')
        port = body.get("port")
        device.set_health(request.match_info["address"], healthy, int(port) if port else None)
        return web.json_response(device.dump()["services"])

    return [("PUT", "/_sim/realservers/{address}", put_rs)]


async def start_kemp_sim(
    device: KempDevice, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    return await serve(create_app(device), host, port)


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    username: str = "bal",
    password: str = "password",
    api_key: str | None = None,
) -> None:
    """Run the KEMP simulator until cancelled."""
    device = KempDevice(
        username=username, password=password, api_keys={api_key} if api_key else set()
    )
    runner, actual = await start_kemp_sim(device, host, port)
    print(
        f"KEMP LoadMaster simulator on {url_for(host, actual)} (control: /_sim/state)", flush=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

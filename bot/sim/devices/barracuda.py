"""A Barracuda CloudGen Firewall REST API simulator: box and service state, VPN restarts.

Device API (JSON; Barracuda Campus "REST API" and the F-Series developer documentation, plus
the paths the vendor's PowerShell module and community clients call):

    GET  /rest/control/v1/box                          box health (serverState, ...)
    GET  /rest/control/v1/box/services[?expand=true]   {"services": [names | objects]}
    GET  /rest/control/v1/box/services/{service}       one service's state
    POST /rest/control/v1/box/services/{service}/restart|start|stop
    POST /rest/config/v1/begin                         {"token": ...} opens a config transaction
    POST /rest/config/v1/commit?token=...              commits it
    POST /rest/config/v1/rollback?token=...            drops it

Authentication is HTTP Basic (an administrator with REST API rights) or an ``X-API-Token``
header; read-only tokens/users get 403 on anything that changes state. Errors come back as
``{"code": <status>, "message": ...}``.

World model: the box carries site-to-site tunnels (seen only through ``/_sim/``: the REST
API documents no endpoint that lists, terminates or initiates IPsec tunnels). Restarting the
VPN service drops *every* tunnel of the box; the service reads ``restarting`` for
``restart_duration`` seconds, then the tunnels whose peers are reachable come back.

Control API (``/_sim/``)::

    GET   /_sim/state | /_sim/counters            DELETE /_sim/counters
    GET   /_sim/tunnels                           {name: {"peer", "state", "peer_reachable"}}
    PUT   /_sim/tunnels/{name}                    {"peer_reachable": false} (creates it if new,
                                                   with "peer")
    PATCH /_sim/config                            {"restart_duration": 0}
    GET|POST|DELETE /_sim/faults[/{id}]

Not verified from documentation (the simulator's choices): the exact fields of box and
service state beyond those community clients read (``serverState``, ``procState``,
``diskState``, ``netState``, ...; ``name``, ``moduleName``, ``state``, ``processes``,
``fileDescriptors``, ``memory``, ``info``) and their values (here ``OK``/``running``); the
status of a successful control POST (here 204); the 401/403 split and bodies; the name of
the VPN service (here ``VPN``); the replies of ``/rest/config/v1`` (``begin`` returning
``{"token"}`` is from a community client; ``commit``/``rollback`` answer 204 here). No
configuration resources (site-to-site tunnel settings) are modelled: none are documented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.sim.devices.common import (
    Handler,
    SimDevice,
    add_sim_routes,
    fault_middleware,
    json_body,
    serve,
    url_for,
)

__all__ = ["BarracudaDevice", "BarracudaSettings", "create_app", "main", "start_barracuda_sim"]

CONTROL = "/rest/control/v1"
CONFIG = "/rest/config/v1"
REALM = "CloudGen Firewall REST API"


class BarracudaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    restart_duration: float = Field(default=0.0, ge=0, description="seconds a restart takes")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SimTunnel:
    peer: str
    state: str = "active"  # active | down
    peer_reachable: bool = True


DEFAULT_SERVICES: tuple[tuple[str, str], ...] = (
    ("boxfw", "boxfw"),
    ("control", "control"),
    ("event", "event"),
    ("log", "log"),
    ("NGFW", "fw"),
    ("VPN", "vpn"),
)


@dataclass
class BarracudaDevice(SimDevice):
    """The simulated box: credentials, services, tunnels, configuration transactions."""

    username: str = "admin"
    password: str = field(default="password", repr=False)
    tokens: dict[str, bool] = field(default_factory=dict, repr=False)  # token -> may write
    read_only_users: set[str] = field(default_factory=set)
    vpn_service: str = "VPN"
    tunnels: dict[str, SimTunnel] = field(default_factory=dict)
    settings: BarracudaSettings = field(default_factory=BarracudaSettings)
    clock: Callable[[], float] = time.monotonic

    kind = "barracuda"

    def __post_init__(self) -> None:
        SimDevice.__init__(self)
        if not self.tunnels:
            self.tunnels = {
                "AZURE-S2S": SimTunnel("203.0.113.10"),
                "SONICWALL-BRANCH": SimTunnel("198.51.100.77"),
            }
        self.services: dict[str, dict[str, Any]] = {
            name: {
                "name": name,
                "moduleName": module,
                "state": "running",
                "processes": 2,
                "fileDescriptors": 40,
                "memory": 24_576,
                "info": "",
            }
            for name, module in DEFAULT_SERVICES
        }
        if self.vpn_service not in self.services:
            self.services[self.vpn_service] = {**self.services["VPN"], "name": self.vpn_service}
        self.restarting_until: dict[str, float] = {}
        self.transactions: set[str] = set()
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ world
    def evaluate(self) -> None:
        now = self.clock()
        for name, until in list(self.restarting_until.items()):
            if now >= until:
                del self.restarting_until[name]
                self.services[name]["state"] = "running"
        vpn_up = self.services[self.vpn_service]["state"] == "running"
        for name, tunnel in self.tunnels.items():
            wanted = "active" if vpn_up and tunnel.peer_reachable else "down"
            if tunnel.state != wanted:
                tunnel.state = wanted
                self._event(name, f"tunnel_{'up' if wanted == 'active' else 'down'}")

    def _event(self, tunnel: str, event: str) -> None:
        self.count(event)
        self.events.append({"seq": len(self.events) + 1, "tunnel": tunnel, "event": event})

    def service_action(self, name: str, action: str) -> None:
        if name not in self.services:
            raise ApiError(404, f"Service '{name}' not found.")
        self.count(f"{action}s:{name}")
        if action == "stop":
            self.services[name]["state"] = "stopped"
        elif action == "start":
            self.services[name]["state"] = "running"
        else:
            self.services[name]["state"] = "restarting"
            self.restarting_until[name] = self.clock() + self.settings.restart_duration
            if name == self.vpn_service:
                for tunnel_name, tunnel in self.tunnels.items():
                    if tunnel.state == "active":
                        tunnel.state = "down"
                        self._event(tunnel_name, "tunnel_dropped")
        self.evaluate()

    def box_state(self) -> dict[str, Any]:
        return {
            "serverState": "OK",
            "procState": "OK",
            "diskState": "OK",
            "systemState": "OK",
            "netState": "OK",
            "licState": "OK",
            "eventOperativeState": "OK",
            "eventSecurityState": "OK",
            "boxnetActivationRequired": False,
            "hasBoxnet": True,
            "hasKernel": True,
        }

    def dump(self) -> dict[str, Any]:
        self.evaluate()
        return {
            "kind": self.kind,
            "settings": self.settings.model_dump(),
            "services": copy.deepcopy(self.services),
            "tunnels": self.tunnel_dump(),
            "transactions": len(self.transactions),
            "counters": self.counter_snapshot(),
            "events": list(self.events),
        }

    def tunnel_dump(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"peer": t.peer, "state": t.state, "peer_reachable": t.peer_reachable}
            for name, t in self.tunnels.items()
        }

    def render_error(self, status: int, message: str) -> web.StreamResponse:
        return web.json_response({"code": status, "message": message}, status=status)

    # ------------------------------------------------------------------ auth
    def authorize(self, request: web.Request, *, write: bool) -> None:
        token = request.headers.get("X-API-Token")
        if token is not None:
            allowed = next(
                (
                    w
                    for t, w in self.tokens.items()
                    if hmac.compare_digest(t.encode(), token.encode())
                ),
                None,
            )
            if allowed is None:
                self.count("auth_failures")
                raise ApiError(401, "Invalid API token.")
            if write and not allowed:
                self.count("forbidden")
                raise ApiError(403, "The API token has no write access.")
            return
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            self.count("auth_failures")
            raise ApiError(401, "Authentication required.")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        good = hmac.compare_digest(user.encode(), self.username.encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )
        if not good:
            self.count("auth_failures")
            raise ApiError(401, "Invalid credentials.")
        if write and user in self.read_only_users:
            self.count("forbidden")
            raise ApiError(403, "The administrator has no write access to the REST API.")


DEVICE_KEY = web.AppKey("barracuda", BarracudaDevice)


def create_app(device: BarracudaDevice) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/_sim/"):
            device.count("requests")
            device.evaluate()
        try:
            return await handler(request)
        except ApiError as exc:
            response = device.render_error(exc.status, exc.message)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            return response

    app = web.Application(middlewares=[errors, fault_middleware(device)])
    app[DEVICE_KEY] = device

    async def box(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=False)
        return web.json_response(device.box_state())

    async def services(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=False)
        if request.query.get("expand", "false").lower() == "true":
            return web.json_response({"services": copy.deepcopy(list(device.services.values()))})
        return web.json_response({"services": list(device.services)})

    async def service(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=False)
        name = request.match_info["service"]
        if name not in device.services:
            raise ApiError(404, f"Service '{name}' not found.")
        return web.json_response(copy.deepcopy(device.services[name]))

    async def service_action(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=True)
        device.service_action(request.match_info["service"], request.match_info["action"])
        return web.Response(status=204)

    async def begin(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=True)
        token = secrets.token_hex(16)
        device.transactions.add(token)
        device.count("config_begin")
        return web.json_response({"token": token})

    async def finish(request: web.Request) -> web.StreamResponse:
        device.authorize(request, write=True)
        token = request.query.get("token", "")
        if token not in device.transactions:
            raise ApiError(404, "Unknown or expired configuration transaction.")
        device.transactions.discard(token)
        device.count(f"config_{request.match_info['verb']}")
        return web.Response(status=204)

    async def not_found(request: web.Request) -> web.StreamResponse:
        raise ApiError(404, f"Resource '{request.path}' not found.")

    for method, path, handler in [
        ("GET", f"{CONTROL}/box", box),
        ("GET", f"{CONTROL}/box/services", services),
        ("GET", CONTROL + "/box/services/{service}", service),
        ("POST", CONTROL + "/box/services/{service}/{action:restart|start|stop}", service_action),
        ("POST", f"{CONFIG}/begin", begin),
        ("POST", CONFIG + "/{verb:commit|rollback}", finish),
    ]:
        app.router.add_route(method, path, handler)
    app.router.add_route("*", "/rest/{tail:.*}", not_found)
    add_sim_routes(app, device, _control_routes(device))
    return app


def _control_routes(device: BarracudaDevice) -> list[tuple[str, str, Handler]]:
    async def tunnels(_: web.Request) -> web.StreamResponse:
        device.evaluate()
        return web.json_response(device.tunnel_dump())

    async def put_tunnel(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        name = request.match_info["name"]
        if name not in device.tunnels:
            device.tunnels[name] = SimTunnel(str(body.get("peer") or "192.0.2.1"), state="down")
        if "peer_reachable" in body:
            if not isinstance(body["peer_reachable"], bool):
                raise ValueError("peer_reachable must be true or false")
            device.tunnels[name].peer_reachable = body["peer_reachable"]
        device.evaluate()
        return web.json_response(device.tunnel_dump())

    async def get_config(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.settings.model_dump())

    async def patch_config(request: web.Request) -> web.StreamResponse:
        merged = {**device.settings.model_dump(), **(await json_body(request))}
        device.settings = BarracudaSettings.model_validate(merged)
        return web.json_response(device.settings.model_dump())

    return [
        ("GET", "/_sim/tunnels", tunnels),
        ("PUT", "/_sim/tunnels/{name}", put_tunnel),
        ("GET", "/_sim/config", get_config),
        ("PATCH", "/_sim/config", patch_config),
    ]


async def start_barracuda_sim(
    device: BarracudaDevice, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    return await serve(create_app(device), host, port)


async def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    username: str = "admin",
    password: str = "password",
    token: str | None = None,
) -> None:
    """Run the Barracuda simulator until cancelled."""
    device = BarracudaDevice(
        username=username, password=password, tokens={token: True} if token else {}
    )
    runner, actual = await start_barracuda_sim(device, host, port)
    print(f"Barracuda simulator on {url_for(host, actual)} (control: /_sim/state)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

"""What the device simulators share: loopback-only serving, fault injection, counters.

Every device simulator is an aiohttp application with two halves: the device's own API
(what a real appliance answers) and a ``/_sim/`` control API (no authentication, JSON in and
out) that changes the simulated world. Faults armed through ``POST /_sim/faults`` hit only
the device half:

- ``{"kind": "error", "status": 500, "count": 2}`` - the next two matching requests get that
  status with the device's own error body, and are not processed;
- ``{"kind": "timeout", "delay": 5, "count": 1}`` - the next matching request is held for
  ``delay`` seconds before it is processed (a client with a shorter timeout gives up first;
  the request may still take effect afterwards, exactly the "outcome unknown" case).

``method`` (default ``*``) and ``path`` (a regular expression searched in the URL path,
default ``.*``) narrow which requests a rule matches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[int, str], web.StreamResponse]

# Only these: a simulated appliance accepts any client and must never be reachable off-box.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})
SHUTDOWN_TIMEOUT = 0.5  # held (timeout-fault) requests are cut short at shutdown


class FaultKind(StrEnum):
    ERROR = "error"
    TIMEOUT = "timeout"


class DeviceFaultSpec(BaseModel):
    """A fault as asked for in ``POST /_sim/faults``."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    method: str = Field(default="*", description="HTTP method or '*'")
    path: str = Field(default=".*", description="regex searched in the URL path")
    count: int = Field(default=1, ge=1)
    status: int = Field(default=500, ge=400, le=599)
    delay: float = Field(default=5.0, ge=0, le=600)

    @field_validator("path")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        re.compile(value)
        return value

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class DeviceFault(DeviceFaultSpec):
    id: int
    remaining: int


class FaultBook:
    """Armed faults; each fires for its next ``count`` matching requests."""

    def __init__(self) -> None:
        self._rules: list[DeviceFault] = []
        self._ids = itertools.count(1)

    def add(self, spec: DeviceFaultSpec) -> DeviceFault:
        rule = DeviceFault(**spec.model_dump(), id=next(self._ids), remaining=spec.count)
        self._rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> DeviceFault | None:
        for rule in self._rules:
            if rule.method not in ("*", method.upper()):
                continue
            if not re.search(rule.path, path, re.IGNORECASE):
                continue
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._rules.remove(rule)
            return rule
        return None

    def rules(self) -> list[DeviceFault]:
        return list(self._rules)

    def clear(self) -> None:
        self._rules.clear()

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) != before


class SimDevice:
    """Base of a simulated appliance: its counters, faults and control-plane plumbing."""

    kind = "device"

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.faults = FaultBook()

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def counter_snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counters.items()))

    def dump(self) -> dict[str, Any]:  # pragma: no cover - every device overrides it
        raise NotImplementedError

    def render_error(self, status: int, message: str) -> web.StreamResponse:
        """An error response as this device formats them (overridden per device)."""
        return web.json_response({"error": message}, status=status)


def require_loopback(host: str) -> None:
    """Refuse to serve anywhere but 127.0.0.1 or ::1."""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"device simulators only bind to 127.0.0.1 or ::1, not {host!r} "
            "(they accept any client and must not be reachable from the network)"
        )


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on a loopback address; returns the runner and the bound port."""
    require_loopback(host)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses: list[Any] = list(runner.addresses)
    return runner, int(addresses[0][1])


def fault_middleware(device: SimDevice) -> Any:
    """Apply armed faults to the device API (never to ``/_sim/``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        rule = device.faults.take(request.method, request.path)
        if rule is None:
            return await handler(request)
        device.count("faults_fired")
        if rule.kind is FaultKind.TIMEOUT:
            await asyncio.sleep(rule.delay)
            return await handler(request)
        return device.render_error(rule.status, f"Injected fault {rule.id} (HTTP {rule.status}).")

    return middleware


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except (ValueError, TypeError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` when there is no body)."""
    if not request.can_read_body:
        return {}
    text = await request.text()
    if not text.strip():
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def add_sim_routes(
    app: web.Application, device: SimDevice, routes: list[tuple[str, str, Handler]]
) -> None:
    """Register the common ``/_sim/`` routes plus the device-specific ``routes``."""

    async def state(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.dump())

    async def counters(_: web.Request) -> web.StreamResponse:
        return web.json_response(device.counter_snapshot())

    async def reset_counters(_: web.Request) -> web.StreamResponse:
        device.counters.clear()
        return web.json_response({})

    async def list_faults(_: web.Request) -> web.StreamResponse:
        return web.json_response([r.model_dump() for r in device.faults.rules()])

    async def add_fault(request: web.Request) -> web.StreamResponse:
        rule = device.faults.add(DeviceFaultSpec.model_validate(await json_body(request)))
        return web.json_response(rule.model_dump(), status=201)

    async def clear_faults(_: web.Request) -> web.StreamResponse:
        device.faults.clear()
        return web.json_response([])

    async def delete_fault(request: web.Request) -> web.StreamResponse:
        if not device.faults.remove(int(request.match_info["id"])):
            raise KeyError(f"no fault {request.match_info['id']}")
        return web.json_response([r.model_dump() for r in device.faults.rules()])

    common: list[tuple[str, str, Handler]] = [
        ("GET", "/_sim/state", state),
        ("GET", "/_sim/counters", counters),
        ("DELETE", "/_sim/counters", reset_counters),
        ("GET", "/_sim/faults", list_faults),
        ("POST", "/_sim/faults", add_fault),
        ("DELETE", "/_sim/faults", clear_faults),
        ("DELETE", "/_sim/faults/{id}", delete_fault),
    ]
    for method, path, handler in [*common, *routes]:
        app.router.add_route(method, path, _guard(handler))


def field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise ValueError(f"missing field {name!r}")
    return body[name]

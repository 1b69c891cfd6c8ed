"""``kemp-real-server``: enable or disable a real server on a KEMP LoadMaster.

With a virtual service (from the parameters, else the device's ``virtual_service`` and
``vs_port``) the real server is changed in that one service (``modrs``). Without one the
global form acts on the real server in *every* virtual service (``enablers``/``disablers``)
- what an Always On VPN farm with a service per IKE port usually wants - and the plan reads
every service (``listvs``) to see where it is not yet as wanted.

Plan compares the real server's ``enabled`` (not its health: an enabled server that fails
its health check is enabled, it only takes no traffic until the check passes). Apply = one
step; verify = read again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from bot.config import KempDevice
from bot.models import Change, Plan
from bot.retry import PermanentError
from playbooks.base import Playbook, RunContext
from playbooks.devices.common import ProtocolError
from playbooks.devices.connect import DeviceParams, kemp, spec_of
from playbooks.devices.kemp import Kemp, RealServer, VirtualService


def _address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class RealServerParams(DeviceParams):
    server: str = Field(description="the real server's address")
    enabled: bool = Field(description="true: take traffic; false: take it out of rotation")
    port: int | None = Field(None, ge=1, le=65535, description="the real server's port")
    virtual_service: str | None = Field(
        None, description="the virtual service's address (default: the device's)"
    )
    vs_port: int | None = Field(None, ge=1, le=65535, description="the virtual service's port")
    protocol: Literal["tcp", "udp"] | None = Field(
        None, description="the virtual service's protocol (default: the device's)"
    )

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        checked = _address(value)
        assert checked is not None
        return checked

    @field_validator("virtual_service")
    @classmethod
    def _vip(cls, value: str | None) -> str | None:
        return _address(value)


@dataclass(frozen=True)
class Scope:
    """Where the change applies: one virtual service, or every one (global form)."""

    vs: str | None
    vs_port: int | None
    protocol: str

    def label(self, service: VirtualService | None = None) -> str:
        if service is not None:
            return f"vs {service.address}:{service.port}/{service.protocol or self.protocol}"
        if self.vs is None:
            return "every virtual service"
        port = f":{self.vs_port}" if self.vs_port is not None else ""
        return f"vs {self.vs}{port}/{self.protocol}"


def _scope(spec: KempDevice, params: RealServerParams) -> Scope:
    vs = params.virtual_service or spec.virtual_service
    vs_port = params.vs_port if params.vs_port is not None else spec.vs_port
    return Scope(vs, vs_port if vs is not None else None, params.protocol or spec.protocol)


def _rs_label(params: RealServerParams) -> str:
    return f"{params.server}:{params.port}" if params.port is not None else params.server


async def _all_services(lm: Kemp) -> list[VirtualService]:
    data = await lm.command("listvs", {})
    items = data.get("VS", [])
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise ProtocolError("listvs returned no VS list", device=lm.name)
    return [VirtualService.from_api(i) for i in items if isinstance(i, Mapping)]


async def _servers(
    lm: Kemp, scope: Scope, params: RealServerParams
) -> list[tuple[VirtualService, RealServer]]:
    """The real server in the scope's service(s); PermanentError when it is in none."""
    if scope.vs is not None:
        services = [await lm.virtual_service(scope.vs, scope.vs_port, scope.protocol)]
    else:
        services = await _all_services(lm)
    found = [
        (vs, rs)
        for vs in services
        for rs in vs.real_servers
        if rs.address == params.server and (params.port is None or rs.port == params.port)
    ]
    if not found:
        raise PermanentError(
            f"kemp {lm.name}: real server {_rs_label(params)} is not in {scope.label()}",
            "NotFound",
        )
    return found


def _state(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


class KempRealServer(Playbook[RealServerParams]):
    name = "kemp-real-server"
    summary = "Enable or disable a real server on a KEMP LoadMaster"
    params_model = RealServerParams

    async def plan(self, ctx: RunContext, params: RealServerParams) -> Plan:
        spec = spec_of(ctx, KempDevice, params.device)
        scope = _scope(spec, params)
        async with kemp(spec) as lm:
            found = await _servers(lm, scope, params)
        changes = [
            Change(
                target=f"kemp {spec.name} {scope.label(vs)} real server {rs.address}:{rs.port}",
                field="enabled",
                old=rs.enabled,
                new=params.enabled,
            )
            for vs, rs in found
            if rs.enabled != params.enabled
        ]
        return Plan(changes=changes)

    async def apply(self, ctx: RunContext, params: RealServerParams, plan: Plan) -> str:
        spec = spec_of(ctx, KempDevice, params.device)
        scope = _scope(spec, params)

        async def change() -> str:
            async with kemp(spec) as lm:
                if scope.vs is not None:
                    await lm.set_real_server_enabled(
                        scope.vs,
                        scope.vs_port,
                        scope.protocol,
                        params.server,
                        params.port,
                        params.enabled,
                    )
                elif params.enabled:
                    await lm.enable_real_server(params.server, params.port)
                else:
                    await lm.disable_real_server(params.server, params.port)
            return _state(params.enabled)

        await ctx.step("enable" if params.enabled else "disable", change)
        return (
            f"kemp {spec.name}: real server {_rs_label(params)} {_state(params.enabled)} "
            f"in {scope.label()}"
        )

    async def verify(self, ctx: RunContext, params: RealServerParams) -> str | None:
        spec = spec_of(ctx, KempDevice, params.device)
        scope = _scope(spec, params)
        async with kemp(spec) as lm:
            found = await _servers(lm, scope, params)
        wrong = [f"{scope.label(vs)}" for vs, rs in found if rs.enabled != params.enabled]
        if wrong:
            return (
                f"kemp {spec.name}: real server {_rs_label(params)} is still "
                f"{_state(not params.enabled)} in {', '.join(wrong)}"
            )
        return None

"""Windows RRAS playbooks: ``rras-status``, ``rras-connect``, ``rras-set-destination``.

They act on the site-to-site interface their device is configured with (``interface`` in
``[[sites.NAME.devices]]``), through PowerShell remoting to a JEA endpoint (see
``docs/devices.md``), or a recording of it.

- ``rras-status`` changes nothing: its plan has no changes and a note with the interface's
  state (a dry-run shows it; a run reports ``no_changes``).
- ``rras-connect``: converged while the interface is connected; apply =
  ``Connect-VpnS2SInterface``; verify = connected.
- ``rras-set-destination``: the destination must be a public address (the same rules as every
  other address parameter, ``bot.sources.ipcheck``). Plan = the destination differs; apply =
  ``Set-VpnS2SInterface -Destination``, then (RRAS applies it only after a disconnection)
  ``Disconnect-`` if it was connected, and ``Connect-VpnS2SInterface``, as journaled steps;
  verify = destination set and connected.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from bot.config import RrasDevice
from bot.models import Change, Plan
from bot.sources.ipcheck import check_ip
from playbooks.base import Playbook, RunContext
from playbooks.devices.connect import DeviceParams, rras, spec_of
from playbooks.devices.rras import S2SInterface


class StatusParams(DeviceParams):
    pass


class ConnectParams(DeviceParams):
    pass


class DestinationParams(DeviceParams):
    destination: str = Field(description="the new peer address (public IPv4 or IPv6)")

    @field_validator("destination")
    @classmethod
    def _public(cls, value: str, info: ValidationInfo) -> str:
        allow_doc = bool((info.context or {}).get("allow_documentation"))
        check = check_ip(value.strip(), allow_documentation=allow_doc)
        if not check.ok:
            raise ValueError(f"{value} is not usable ({check.reason}): {check.message}")
        return check.normalized or value.strip()


def where(spec: RrasDevice) -> str:
    return f"rras {spec.name} interface {spec.interface}"


def describe(iface: S2SInterface) -> str:
    """One line: state, destination, admin status, last error."""
    dest = ", ".join(iface.destination) or "(none)"
    admin = "enabled" if iface.admin_status else "disabled"
    error = f", last error {iface.last_error}" if iface.last_error else ""
    return f"{iface.connection_state}, destination {dest}, {admin}{error}"


async def read_interface(spec: RrasDevice) -> S2SInterface:
    return await rras(spec).interface(spec.interface)


class RrasStatus(Playbook[StatusParams]):
    name = "rras-status"
    summary = "Show an RRAS site-to-site interface's state (changes nothing)"
    params_model = StatusParams

    async def plan(self, ctx: RunContext, params: StatusParams) -> Plan:
        spec = spec_of(ctx, RrasDevice, params.device)
        iface = await read_interface(spec)
        return Plan(notes=[f"{where(spec)}: {describe(iface)}"])

    async def apply(self, ctx: RunContext, params: StatusParams, plan: Plan) -> str:
        return "nothing to change"  # the plan never has changes


class RrasConnect(Playbook[ConnectParams]):
    name = "rras-connect"
    summary = "Connect an RRAS site-to-site interface"
    params_model = ConnectParams

    async def plan(self, ctx: RunContext, params: ConnectParams) -> Plan:
        spec = spec_of(ctx, RrasDevice, params.device)
        iface = await read_interface(spec)
        if iface.connected:
            return Plan()
        return Plan(
            changes=[
                Change(
                    target=where(spec),
                    field="connectionState",
                    old=iface.connection_state,
                    new="Connected",
                )
            ]
        )

    async def apply(self, ctx: RunContext, params: ConnectParams, plan: Plan) -> str:
        spec = spec_of(ctx, RrasDevice, params.device)

        async def connect() -> str:
            return (await rras(spec).connect(spec.interface)).connection_state

        state = await ctx.step("connect", connect)
        return f"{where(spec)}: {state}"

    async def verify(self, ctx: RunContext, params: ConnectParams) -> str | None:
        spec = spec_of(ctx, RrasDevice, params.device)
        iface = await read_interface(spec)
        return None if iface.connected else f"{where(spec)} is {describe(iface)}"


class RrasSetDestination(Playbook[DestinationParams]):
    name = "rras-set-destination"
    summary = "Point an RRAS site-to-site interface at a new peer address and reconnect it"
    params_model = DestinationParams

    async def plan(self, ctx: RunContext, params: DestinationParams) -> Plan:
        spec = spec_of(ctx, RrasDevice, params.device)
        iface = await read_interface(spec)
        target = where(spec)
        if iface.destination != (params.destination,):
            return Plan(
                changes=[
                    Change(
                        target=target,
                        field="destination",
                        old=", ".join(iface.destination) or None,
                        new=params.destination,
                    )
                ]
            )
        if ctx.started() and "connect" not in ctx.done_steps():
            # Set before a crash or a fault: it takes effect only once reconnected.
            return Plan(
                changes=[
                    Change(
                        target=target,
                        field="connectionState",
                        old=iface.connection_state,
                        new=f"reconnected to {params.destination}",
                    )
                ]
            )
        return Plan()

    async def apply(self, ctx: RunContext, params: DestinationParams, plan: Plan) -> str:
        spec = spec_of(ctx, RrasDevice, params.device)
        device = rras(spec)

        async def set_destination() -> dict[str, bool]:
            before = await device.interface(spec.interface)
            await device.set_destination(spec.interface, params.destination)
            return {"was_connected": before.connected}

        async def disconnect() -> str:
            await device.disconnect(spec.interface)
            return "disconnected"

        async def connect() -> str:
            return (await device.connect(spec.interface)).connection_state

        done = await ctx.step("set-destination", set_destination)
        if done.get("was_connected"):
            await ctx.step("disconnect", disconnect)
        state = await ctx.step("connect", connect)
        return f"{where(spec)}: destination {params.destination}, {state}"

    async def verify(self, ctx: RunContext, params: DestinationParams) -> str | None:
        spec = spec_of(ctx, RrasDevice, params.device)
        iface = await read_interface(spec)
        if iface.destination != (params.destination,) or not iface.connected:
            return f"{where(spec)} is {describe(iface)}"
        return None

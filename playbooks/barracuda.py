"""``barracuda-restart-vpn``: restart a CloudGen Firewall's VPN service (destructive).

Restarting the VPN service drops **every** tunnel of the box, not only the broken one, so
the playbook is destructive: it runs only where the site's policy allows destructive
playbooks or a person confirmed it. The REST API documents no way to re-initiate a single
tunnel, and nothing about a restart is ever "converged": the plan reports the service's state
and the restart it would do.

The restart is sent at most once per run: its step's outcome may be unknown (the worker died
or the call failed after it went out), and then the resumed run does not send it again but
waits for the service to run. ``verify`` waits (up to ``timeout``) for the service to report
running again.
"""

from __future__ import annotations

import time

from pydantic import Field

from bot.config import BarracudaDevice
from bot.models import Change, Plan
from bot.retry import describe_error, is_transient, sample_until
from playbooks.base import Playbook, RunContext
from playbooks.devices.barracuda import ServiceState
from playbooks.devices.connect import DeviceParams, barracuda, spec_of


class RestartParams(DeviceParams):
    service: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="the service to restart (default: the device's configured VPN service)",
    )
    timeout: float = Field(
        120.0, ge=0, le=3600, description="seconds to wait for the service to run again"
    )
    interval: float = Field(2.0, gt=0, le=60, description="seconds between state reads")


def _service(spec: BarracudaDevice, params: RestartParams) -> str:
    return params.service or spec.service


class BarracudaRestartVpn(Playbook[RestartParams]):
    name = "barracuda-restart-vpn"
    summary = "Restart a Barracuda CloudGen Firewall's VPN service (drops every tunnel)"
    destructive = True
    params_model = RestartParams

    async def plan(self, ctx: RunContext, params: RestartParams) -> Plan:
        spec = spec_of(ctx, BarracudaDevice, params.device)
        name = _service(spec, params)
        async with barracuda(spec) as fw:
            state = await fw.service(name)
        return Plan(
            changes=[
                Change(
                    target=f"barracuda {spec.name}",
                    field=f"service {name}",
                    old=state.state or "unknown",
                    new="restarted",
                )
            ],
            notes=[f"restarting {name} drops every tunnel of {spec.name}"],
        )

    async def apply(self, ctx: RunContext, params: RestartParams, plan: Plan) -> str:
        spec = spec_of(ctx, BarracudaDevice, params.device)
        name = _service(spec, params)

        async def restart() -> str:
            async with barracuda(spec) as fw:
                await fw.restart_service(name)
            return "restarted"

        async def sent_before() -> str:
            return "sent before (outcome unknown); not repeated"

        done = await ctx.step("restart", restart, on_unknown=sent_before)
        return f"barracuda {spec.name} service {name}: restart {done}"

    async def verify(self, ctx: RunContext, params: RestartParams) -> str | None:
        spec = spec_of(ctx, BarracudaDevice, params.device)
        name = _service(spec, params)
        began = time.monotonic()
        last: list[ServiceState] = []
        async with barracuda(spec) as fw:

            async def read() -> ServiceState:
                state = await fw.service(name)
                last.append(state)
                return state

            waited = await sample_until(
                read,
                lambda s: s.running,
                within=params.timeout,
                every=params.interval,
                tolerate=is_transient,  # a box busy restarting may not answer every read
            )
        if waited.done:
            return None
        if waited.error is not None:
            state = f"unreadable ({describe_error(waited.error)[0]})"
        else:
            state = (last[-1].state if last else None) or "unknown"
        return (
            f"barracuda {spec.name} service {name} is still {state} after waiting "
            f"{time.monotonic() - began:.0f}s for it to run"
        )

"""``reset-gateway``: reboot the site's VPN gateway instance (destructive).

The gateway reset reboots a gateway instance and reapplies the cross-premises configuration
(``articles/vpn-gateway/reset-gateway.md``): it drops **every** tunnel of that gateway, not
only the site's, so it is destructive (the site's policy has to allow it, or a person confirms
it) and it comes last, after a connection reset. Active-active gateways reset one instance at a
time (``gateway_vip``); without one, Azure resets the primary. Converged (no call) while the
site's connection reports Connected. Like the connection reset, the POST is sent at most once
per run, and an unknown outcome is judged by reading the connection's status.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bot.models import Change, Plan
from bot.retry import PermanentError
from playbooks.azure.common import LRO_STATUS, NET, finish, network, target, text, wait_connected
from playbooks.azure.connection import WaitParams
from playbooks.base import Playbook, RunContext


class GatewayParams(WaitParams):
    gateway_vip: str | None = Field(
        None, description="active-active: the public IP of the instance to reset"
    )
    force: bool = Field(False, description="reset even when the connection reports Connected")


def _gateway_of(conn: Any) -> tuple[str, str]:
    """(resource group, name) of the connection's virtual network gateway."""
    ref = getattr(conn, "virtual_network_gateway1", None)
    gid = str(getattr(ref, "id", "") or "")
    parts = gid.split("/")
    lowered = [p.lower() for p in parts]
    try:
        rg = parts[lowered.index("resourcegroups") + 1]
        name = parts[lowered.index("virtualnetworkgateways") + 1]
    except (ValueError, IndexError):
        raise PermanentError(
            f"connection {getattr(conn, 'name', '?')} names no virtual network gateway",
            "NotConfigured",
        ) from None
    return rg, name


class ResetGateway(Playbook[GatewayParams]):
    name = "reset-gateway"
    summary = "Reset the site's VPN gateway (drops every tunnel of the gateway)"
    destructive = True
    params_model = GatewayParams
    permissions = (
        f"{NET}/connections/read",
        f"{NET}/virtualNetworkGateways/read",
        f"{NET}/virtualNetworkGateways/reset/action",
        *LRO_STATUS,
    )

    async def plan(self, ctx: RunContext, params: GatewayParams) -> Plan:
        t = target(ctx)
        client = await network(ctx)
        conn = await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
        status = text(conn.connection_status) or "Unknown"
        if status == "Connected" and not params.force:
            return Plan()
        rg, gateway = _gateway_of(conn)
        instance = f" instance {params.gateway_vip}" if params.gateway_vip else ""
        return Plan(
            changes=[
                Change(
                    target=f"gateway {gateway}{instance}",
                    field="reset",
                    old=f"connection {t.connection} {status}",
                    new="reset (every tunnel of the gateway drops)",
                )
            ],
            read={"gateway_rg": rg, "gateway": gateway},
        )

    async def apply(self, ctx: RunContext, params: GatewayParams, plan: Plan) -> str:
        t = target(ctx)
        rg, gateway = str(plan.read["gateway_rg"]), str(plan.read["gateway"])

        async def reset() -> str:
            from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

            client = await network(ctx)
            ops = client.virtual_network_gateways
            delay = ctx.services.settings.azure.polling_interval
            poller = await ops.begin_reset(
                rg,
                gateway,
                gateway_vip=params.gateway_vip,
                retry_status=0,  # never re-send the reset itself
                polling=AsyncARMPolling(delay),
            )

            async def get() -> Any:
                return await ops.get(rg, gateway)

            await finish(ctx, poller, get, f"gateway {gateway}")
            return "reset"

        async def sent_before() -> str:
            return "gateway reset sent before (outcome unknown); not repeated in this run"

        done = await ctx.step("reset-gateway", reset, on_unknown=sent_before)
        client = await network(ctx)
        up, status, waited = await wait_connected(client, t, params.timeout, params.interval)
        head = "gateway reset" if done == "reset" else "gateway reset earlier"
        return f"{head}; Connected after {waited:.1f}s" if up else f"{head}; still {status}"

    async def verify(self, ctx: RunContext, params: GatewayParams) -> str | None:
        from playbooks.azure.connection import _unless_connected

        return await _unless_connected(ctx, params)

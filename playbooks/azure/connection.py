"""``reset-connection`` and ``verify-tunnel``: bring a connection back, or prove it is back.

Both are converged when the connection reports ``Connected``: a healthy tunnel is never reset
by a repeated or late event. ``verify-tunnel`` changes nothing; when the tunnel is down it
waits, and if it stays down it says why (the connection's status against the LNG's address).

A reset restarts the tunnel, so it is sent at most once per run: the POST goes out without
azure-core's status retries (it would re-send a POST on 500/503/504), its operation is polled
with them, and if the outcome is unknown (a failure after sending, a crash) the run does not
send it again but waits and reads the connection's status. A reset ARM refused with 409
``AnotherOperationInProgress`` was not sent: the run waits for the running operation to
finish, plans again, and sends it then if the connection is still down.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.models import Change, Plan
from bot.retry import TransientError, describe_error, status_of
from playbooks.azure.common import (
    LRO_STATUS,
    NET,
    AzureTarget,
    finish,
    network,
    settled,
    target,
    text,
    tunnel_status,
    wait_connected,
)
from playbooks.base import Playbook, RunContext


class WaitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(120.0, ge=0, le=3600, description="seconds to wait for Connected")
    interval: float = Field(5.0, gt=0, le=300, description="seconds between status reads")


class VerifyParams(WaitParams):
    via: str | None = Field(
        None,
        max_length=64,
        description="a gateway instance's public IP: its tunnel must be Connected (active-"
        "active gateways; e.g. after a failback to the primary)",
    )


class ResetParams(WaitParams):
    force: bool = Field(False, description="reset even when the connection reports Connected")


async def _status(ctx: RunContext, t: AzureTarget, via: str | None = None) -> str:
    client = await network(ctx)
    conn = await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
    return tunnel_status(conn, via)


async def _unless_connected(
    ctx: RunContext, params: WaitParams, via: str | None = None
) -> str | None:
    """None if the connection (its tunnel ``via``) reports Connected, else why it is down."""
    t = target(ctx)
    status = await _status(ctx, t, via)
    if status == "Connected":
        return None
    return await _why_down(ctx, t, status, params.timeout, via)


async def _why_down(
    ctx: RunContext, t: AzureTarget, status: str, waited: float, via: str | None = None
) -> str:
    client = await network(ctx)
    lng = await client.local_network_gateways.get(t.resource_group, t.local_network_gateway)
    address = lng.gateway_ip_address or lng.fqdn or "(none)"
    what = f"connection {t.connection}" + (f" (its tunnel via {via})" if via else "")
    return (
        f"{what} is {status} after {waited:.0f}s; "
        f"lng {t.local_network_gateway} points at {address} "
        f"(provisioning {text(lng.provisioning_state) or 'unknown'})"
    )


class ResetRefused(TransientError):
    """ARM refused the reset (another operation on the connection was running): it was not
    sent, so a later try in the same run may send it."""


def busy(exc: BaseException) -> bool:
    """ARM's 409 AnotherOperationInProgress: the request was refused, nothing was done."""
    return status_of(exc) == 409 and describe_error(exc)[0] == "AnotherOperationInProgress"


def refused_only(ctx: RunContext, step: str) -> bool:
    """Every earlier try of ``step`` in this playbook ended refused (``ResetRefused``), so
    none of them reached the target (a crash or any other failure leaves it unknown)."""
    tries = [e for e in ctx.journal if e.playbook == ctx.index and e.step == step]
    if tries and tries[-1].phase == "resumed":
        tries = tries[:-1]  # this try (the step journals it before asking)
    began = [e for e in tries if e.phase in ("start", "resumed")]
    refused = [
        e
        for e in tries
        if e.phase == "failed" and str(e.data or "").startswith(f"{ResetRefused.__name__}:")
    ]
    return bool(began) and len(refused) == len(began) and tries[-1].phase == "failed"


class VerifyTunnel(Playbook[VerifyParams]):
    name = "verify-tunnel"
    summary = "Wait until the site's connection (or its tunnel via one gateway instance) is up"
    params_model = VerifyParams
    permissions = (f"{NET}/connections/read", f"{NET}/localNetworkGateways/read")

    async def plan(self, ctx: RunContext, params: VerifyParams) -> Plan:
        t = target(ctx)
        status = await _status(ctx, t, params.via)
        if status == "Connected":
            return Plan()
        where = f"connection {t.connection}" + (f" tunnel via {params.via}" if params.via else "")
        return Plan(
            changes=[Change(target=where, field="connectionStatus", old=status, new="Connected")]
        )

    async def apply(self, ctx: RunContext, params: VerifyParams, plan: Plan) -> str:
        t = target(ctx)
        client = await network(ctx)
        up, status, waited = await wait_connected(
            client, t, params.timeout, params.interval, via=params.via
        )
        return f"Connected after {waited:.1f}s" if up else f"still {status} after {waited:.0f}s"

    async def verify(self, ctx: RunContext, params: VerifyParams) -> str | None:
        return await _unless_connected(ctx, params, params.via)


class ResetConnection(Playbook[ResetParams]):
    name = "reset-connection"
    summary = "Reset the site's connection (Azure reset operation) and wait for Connected"
    params_model = ResetParams
    permissions = (
        f"{NET}/connections/read",
        f"{NET}/connections/resetconnection/action",
        f"{NET}/localNetworkGateways/read",
        *LRO_STATUS,
    )

    async def plan(self, ctx: RunContext, params: ResetParams) -> Plan:
        t = target(ctx)
        status = await _status(ctx, t)
        if status == "Connected" and not params.force:
            return Plan()
        return Plan(
            changes=[
                Change(target=f"connection {t.connection}", field="reset", old=status, new="reset")
            ]
        )

    async def apply(self, ctx: RunContext, params: ResetParams, plan: Plan) -> str:
        t = target(ctx)

        async def reset() -> str:
            from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

            client = await network(ctx)
            ops = client.virtual_network_gateway_connections
            delay = ctx.services.settings.azure.polling_interval

            # retry_status=0 applies to the POST only: the poller below has its own settings,
            # so its status reads keep azure-core's retries (a throttled poll is retried, the
            # reset is not re-sent).
            async def get() -> Any:
                return await ops.get(t.resource_group, t.connection)

            try:
                poller = await ops.begin_reset_connection(
                    t.resource_group, t.connection, retry_status=0, polling=AsyncARMPolling(delay)
                )
            except Exception as exc:
                if not busy(exc):
                    raise
                # Refused, so not sent: wait for the running operation, then plan again
                # (it may have brought the tunnel back), and send the reset then if needed.
                await settled(ctx, get, f"connection {t.connection}", after_write=True)
                raise ResetRefused(
                    f"connection {t.connection} was busy (AnotherOperationInProgress); "
                    "its operation finished, planning again"
                ) from exc

            await finish(ctx, poller, get, f"connection {t.connection}")
            return "reset"

        async def sent_before() -> str:
            if refused_only(ctx, "reset"):
                return await reset()  # every earlier try was refused by ARM: none went out
            return "reset sent before (outcome unknown); not repeated in this run"

        done = await ctx.step("reset", reset, on_unknown=sent_before)
        client = await network(ctx)
        up, status, waited = await wait_connected(client, t, params.timeout, params.interval)
        head = "reset" if done == "reset" else "reset earlier"
        return f"{head}; Connected after {waited:.1f}s" if up else f"{head}; still {status}"

    async def verify(self, ctx: RunContext, params: ResetParams) -> str | None:
        return await _unless_connected(ctx, params)

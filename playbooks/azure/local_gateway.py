"""``update-local-gateway``: make the site's Local Network Gateway point at its real address.

``in-place`` (default) rewrites the LNG's ``gatewayIpAddress`` (or ``fqdn``) with a PUT of
the gateway as it is, so its address space and BGP settings stay, and the connection stays
too: Azure documents that the tunnel re-establishes. ``recreate`` is the classic recipe for
when that does not bring the tunnel back: snapshot the connection (settings and shared key,
encrypted in the journal), delete it, update the LNG, create the connection again from the
snapshot. Every step is journaled, so a crash anywhere resumes and the connection is never
lost.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.models import Change, Plan
from bot.retry import PermanentError, TransientError
from playbooks.azure.common import (
    LRO_STATUS,
    NET,
    AzureTarget,
    finish,
    is_not_found,
    network,
    precondition_failed,
    target,
    text,
    writable_connection,
)
from playbooks.base import Playbook, RunContext


class LngParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str | None = Field(None, description="new public IPv4 address of the site")
    fqdn: str | None = Field(None, description="or a DNS name Azure resolves instead")
    strategy: Literal["in-place", "recreate"] = "in-place"

    @field_validator("ip")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            addr = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        if addr.version != 4:
            raise ValueError("Azure local network gateways take an IPv4 gatewayIpAddress")
        return str(addr)

    @model_validator(mode="after")
    def _one_address(self) -> LngParams:
        if (self.ip is None) == (self.fqdn is None):
            raise ValueError("give exactly one of ip or fqdn")
        return self


def _address(params: LngParams) -> tuple[str, str]:
    return ("gatewayIpAddress", params.ip) if params.ip else ("fqdn", params.fqdn or "")


class UpdateLocalGateway(Playbook[LngParams]):
    name = "update-local-gateway"
    summary = "Point the site's Local Network Gateway at its new IP (in-place or recreate)"
    params_model = LngParams
    permissions = (
        f"{NET}/localNetworkGateways/read",
        f"{NET}/localNetworkGateways/write",
        *LRO_STATUS,
        # strategy = "recreate":
        f"{NET}/connections/read",
        f"{NET}/connections/sharedkey/action",
        f"{NET}/connections/delete",
        f"{NET}/connections/write",
        f"{NET}/virtualNetworkGateways/read",
    )

    async def plan(self, ctx: RunContext, params: LngParams) -> Plan:
        t = target(ctx)
        client = await network(ctx)
        lng = await client.local_network_gateways.get(t.resource_group, t.local_network_gateway)
        current = lng.as_dict().get("properties", {})
        field, wanted = _address(params)
        changes: list[Change] = []
        if current.get(field) != wanted:
            changes.append(
                Change(
                    target=f"lng {t.local_network_gateway}",
                    field=field,
                    old=current.get(field),
                    new=wanted,
                )
            )
        notes: list[str] = []
        if params.strategy == "recreate":
            try:
                conn = await client.virtual_network_gateway_connections.get(
                    t.resource_group, t.connection
                )
                status = text(conn.connection_status) or "Unknown"
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                status = "missing"  # deleted by a run that crashed; its journal restores it
            if changes or status != "Connected":
                changes.append(
                    Change(
                        target=f"connection {t.connection}",
                        field="recreate",
                        old=status,
                        new="delete and re-create, settings preserved",
                    )
                )
            if ctx.services.journal_cipher is None:
                notes.append("recreate needs security.journal_key to keep the shared key safe")
        return Plan(changes=changes, notes=notes)

    async def apply(self, ctx: RunContext, params: LngParams, plan: Plan) -> str:
        t = target(ctx)
        if params.strategy == "in-place":
            result = await ctx.step("update-lng", lambda: self._put_address(ctx, t, params))
            return f"{result['field']} is {result['value']}"
        snapshot = await ctx.step("snapshot", lambda: _snapshot(ctx, t), secret=True)
        await ctx.step("delete-connection", lambda: _delete_connection(ctx, t))
        result = await ctx.step("update-lng", lambda: self._put_address(ctx, t, params))
        await ctx.step("create-connection", lambda: _create_connection(ctx, t, snapshot))
        return f"{result['field']} is {result['value']}; connection {t.connection} re-created"

    async def verify(self, ctx: RunContext, params: LngParams) -> str | None:
        t = target(ctx)
        client = await network(ctx)
        lng = await client.local_network_gateways.get(t.resource_group, t.local_network_gateway)
        props = lng.as_dict().get("properties", {})
        field, wanted = _address(params)
        if props.get(field) != wanted:
            return f"lng {t.local_network_gateway} {field} is {props.get(field)}, not {wanted}"
        if props.get("provisioningState") not in (None, "Succeeded"):
            return f"lng {t.local_network_gateway} is {props.get('provisioningState')}"
        if params.strategy == "recreate":
            try:
                await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
            except Exception as exc:
                if is_not_found(exc):
                    return f"connection {t.connection} does not exist after re-creation"
                raise
        return None

    async def _put_address(
        self, ctx: RunContext, t: AzureTarget, params: LngParams
    ) -> dict[str, Any]:
        from azure.mgmt.network.models import LocalNetworkGateway

        client = await network(ctx)
        ops = client.local_network_gateways
        lng = await ops.get(t.resource_group, t.local_network_gateway)
        field, wanted = _address(params)
        body = lng.as_dict()
        props = body.setdefault("properties", {})
        if props.get(field) != wanted:
            props[field] = wanted
            if field == "gatewayIpAddress":
                props.pop("fqdn", None)
            else:
                props.pop("gatewayIpAddress", None)
            for key in ("provisioningState", "resourceGuid"):
                props.pop(key, None)
            etag = body.pop("etag", None)
            headers = {"If-Match": etag} if etag else {}
            try:
                poller = await ops.begin_create_or_update(
                    t.resource_group,
                    t.local_network_gateway,
                    LocalNetworkGateway(body),
                    headers=headers,
                )
            except Exception as exc:
                if precondition_failed(exc):  # changed under us: read again, try again
                    raise TransientError(
                        f"lng {t.local_network_gateway} changed meanwhile"
                    ) from exc
                raise

            async def reread() -> Any:
                return await ops.get(t.resource_group, t.local_network_gateway)

            lng = await finish(poller, reread)
        return {"field": field, "value": lng.as_dict().get("properties", {}).get(field)}


async def _snapshot(ctx: RunContext, t: AzureTarget) -> dict[str, Any]:
    client = await network(ctx)
    ops = client.virtual_network_gateway_connections
    try:
        conn = await ops.get(t.resource_group, t.connection)
    except Exception as exc:
        if is_not_found(exc):
            raise PermanentError(
                f"connection {t.connection} not found: nothing to re-create", "ResourceNotFound"
            ) from exc
        raise
    key = await ops.get_shared_key(t.resource_group, t.connection)
    value = key.as_dict().get("value")
    if not isinstance(value, str) or not value:
        raise PermanentError(
            f"cannot read the shared key of {t.connection} (needs the RBAC action "
            "Microsoft.Network/connections/sharedKey/action); refusing to delete it",
            "SharedKeyUnreadable",
        )
    body = writable_connection(conn.as_dict())
    body["properties"]["sharedKey"] = value
    return body


async def _delete_connection(ctx: RunContext, t: AzureTarget) -> str:
    client = await network(ctx)
    try:
        poller = await client.virtual_network_gateway_connections.begin_delete(
            t.resource_group, t.connection
        )
        await poller.result()
    except Exception as exc:
        if is_not_found(exc):
            return "already gone"
        raise
    return "deleted"


async def _create_connection(ctx: RunContext, t: AzureTarget, body: dict[str, Any]) -> str:
    from azure.mgmt.network.models import VirtualNetworkGatewayConnection

    client = await network(ctx)
    ops = client.virtual_network_gateway_connections
    poller = await ops.begin_create_or_update(
        t.resource_group, t.connection, VirtualNetworkGatewayConnection(body)
    )

    async def reread() -> Any:
        return await ops.get(t.resource_group, t.connection)

    conn = await finish(poller, reread)
    return text(conn.as_dict().get("properties", {}).get("provisioningState")) or "Succeeded"

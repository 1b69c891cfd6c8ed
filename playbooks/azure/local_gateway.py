"""``update-local-gateway`` and ``recreate-connection``: point the site's LNG at its address.

``update-local-gateway`` rewrites the LNG's ``gatewayIpAddress`` (or ``fqdn``) with a PUT of
the gateway as ``plan()`` read it (``If-Match`` its ETag), so its address space and BGP
settings stay, and the connection stays too: Azure documents that the tunnel re-establishes.

``recreate-connection`` is the classic recipe for when that does not bring the tunnel back,
and it is **destructive** (the connection is deleted): snapshot the connection (settings and
shared key, encrypted in the journal), delete it (``If-Match`` the snapshot's ETag, so a
connection changed since is not deleted), update the LNG (when an address is given),
create the connection again from the snapshot. Every step is journaled, so a crash anywhere
resumes and the connection is never lost; it runs only where the site's policy allows
destructive playbooks or a person confirmed it.

Addresses pass the same rules as every other entry point (``bot.sources.ipcheck``): a private,
CGNAT or otherwise unusable address never reaches Azure, whoever asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bot.models import Change, Plan
from bot.retry import PermanentError, TransientError
from bot.sources.ipcheck import check_ip
from playbooks.azure.common import (
    LRO_STATUS,
    NET,
    AzureTarget,
    finish,
    is_not_found,
    network,
    precondition_failed,
    settled,
    target,
    text,
    writable_connection,
)
from playbooks.base import Playbook, RunContext

if TYPE_CHECKING:
    from azure.mgmt.network.types import LocalNetworkGateway as LngJson
    from azure.mgmt.network.types import VirtualNetworkGatewayConnection as ConnectionJson


def _public_ipv4(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    allow_doc = bool((info.context or {}).get("allow_documentation"))
    check = check_ip(value.strip(), family="v4", allow_documentation=allow_doc)
    if not check.ok:
        raise ValueError(f"{value} is not usable ({check.reason}): {check.message}")
    return check.normalized or value.strip()


class LngParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str | None = Field(None, description="the site's public IPv4 address")
    fqdn: str | None = Field(None, description="or a DNS name Azure resolves instead")

    @model_validator(mode="before")
    @classmethod
    def _no_strategy(cls, data: Any) -> Any:
        if isinstance(data, dict) and "strategy" in data:
            raise ValueError(
                "strategy: re-creating is its own playbook now: recreate-connection "
                "(destructive; needs allow_destructive or --confirm-destructive)"
            )
        return data

    @field_validator("ip")
    @classmethod
    def _ipv4(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _public_ipv4(value, info)

    @model_validator(mode="after")
    def _one_address(self) -> LngParams:
        if (self.ip is None) == (self.fqdn is None):
            raise ValueError("give exactly one of ip or fqdn")
        return self


class RecreateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str | None = Field(None, description="also point the LNG here (optional)")

    @field_validator("ip")
    @classmethod
    def _ipv4(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _public_ipv4(value, info)


def _address(params: LngParams) -> tuple[str, str]:
    return ("gatewayIpAddress", params.ip) if params.ip else ("fqdn", params.fqdn or "")


def _arm_json(model: Any) -> dict[str, Any]:
    """A resource as ARM sent it (camelCase, settings under ``properties``, read-only fields
    included): azure-mgmt-network's hybrid models (31.0+) are that JSON, the msrest models
    before them serialize to it (their ``as_dict()`` is flat snake_case)."""
    if hasattr(model, "serialize"):
        return dict(model.serialize(keep_readonly=True))
    return dict(model.as_dict())


def _current(lng: Any, field: str) -> str | None:
    value = lng.gateway_ip_address if field == "gatewayIpAddress" else lng.fqdn
    return None if value is None else str(value)


async def _plan_lng(ctx: RunContext, t: AzureTarget, field: str, wanted: str) -> Plan:
    """One GET of the LNG: the change (if any), and the body + ETag the PUT will send."""
    client = await network(ctx)
    ops = client.local_network_gateways

    async def get() -> Any:
        return await ops.get(t.resource_group, t.local_network_gateway)

    lng = await settled(ctx, get, f"lng {t.local_network_gateway}")
    current = _current(lng, field)
    state = text(lng.provisioning_state) or "Succeeded"
    name = f"lng {t.local_network_gateway}"
    if current == wanted and state != "Failed":
        return Plan()
    body = _arm_json(lng)
    if current == wanted:  # a failed update: re-PUT the same body to recover it
        change = Change(target=name, field="provisioningState", old=state, new="Succeeded")
    else:
        change = Change(target=name, field=field, old=current, new=wanted)
    return Plan(changes=[change], read={"lng": body, "etag": body.get("etag")})


async def _put_address(
    ctx: RunContext, t: AzureTarget, field: str, wanted: str, plan: Plan
) -> dict[str, Any]:
    """PUT the LNG as read, with the new address, If-Match the ETag read in plan().

    The body goes to the SDK as ARM JSON, which every azure-mgmt-network accepts."""
    client = await network(ctx)
    ops = client.local_network_gateways
    raw = plan.read.get("lng")
    body: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    props = dict(body.get("properties") or {})
    props[field] = wanted
    props.pop("fqdn" if field == "gatewayIpAddress" else "gatewayIpAddress", None)
    for key in ("provisioningState", "resourceGuid"):
        props.pop(key, None)
    body["properties"] = props
    for key in ("name", "type"):
        body.pop(key, None)
    etag = body.pop("etag", None)
    headers = {"If-Match": str(etag)} if etag else {}
    try:
        poller = await ops.begin_create_or_update(
            t.resource_group,
            t.local_network_gateway,
            cast("LngJson", body),
            headers=headers,
            polling=_without_final_get(ctx.services.settings.azure.polling_interval),
        )
    except Exception as exc:
        if precondition_failed(exc):  # changed since plan(): read and plan again
            raise TransientError(f"lng {t.local_network_gateway} changed meanwhile") from exc
        raise

    async def get() -> Any:
        return await ops.get(t.resource_group, t.local_network_gateway)

    lng = await finish(ctx, poller, get, f"lng {t.local_network_gateway}")
    if isinstance(lng, Mapping) and str(lng.get("status", "")).lower() == "succeeded":
        # The operation's own status said Succeeded: the PUT (If-Match the ETag read in plan)
        # is what the LNG now holds. No final GET, no verification read.
        vars(ctx)[_CONFIRMED] = (field, wanted)
        return {"field": field, "value": wanted}
    if _current(lng, field) == wanted and (text(lng.provisioning_state) or "Succeeded") == (
        "Succeeded"
    ):
        vars(ctx)[_CONFIRMED] = (field, wanted)  # read after the operation finished
    return {"field": field, "value": _current(lng, field)}


def _without_final_get(polling_interval: float) -> Any:
    """ARM polling as the SDK does it, minus the final GET of the LNG after the operation
    succeeded (its result is then the operation's status): one ARM read less per update, and
    reads are what limit a storm of renumbered sites (bot.budget)."""
    from azure.mgmt.core.polling.async_arm_polling import AsyncARMPolling

    class WithoutFinalGet(AsyncARMPolling):
        def initialize(
            self, client: Any, initial_response: Any, deserialization_callback: Any
        ) -> None:
            super().initialize(client, initial_response, deserialization_callback)
            operation = getattr(self, "_operation", None)
            if operation is not None:
                operation.get_final_get_url = lambda _response: None

    return WithoutFinalGet(polling_interval)


# Marks a run whose write was read back, finished, in this process: verify() need not read
# again (the ARM read budget is what limits a storm of renumbered sites; see bot.budget).
_CONFIRMED = "_lng_confirmed"


async def _verify_lng(ctx: RunContext, t: AzureTarget, field: str, wanted: str) -> str | None:
    client = await network(ctx)
    ops = client.local_network_gateways

    async def get() -> Any:
        return await ops.get(t.resource_group, t.local_network_gateway)

    lng = await settled(ctx, get, f"lng {t.local_network_gateway}")
    if _current(lng, field) != wanted:
        return f"lng {t.local_network_gateway} {field} is {_current(lng, field)}, not {wanted}"
    state = text(lng.provisioning_state) or "Succeeded"
    if state != "Succeeded":
        return f"lng {t.local_network_gateway} is {state}"
    return None


class UpdateLocalGateway(Playbook[LngParams]):
    name = "update-local-gateway"
    summary = "Point the site's Local Network Gateway at its new IP (in place)"
    params_model = LngParams
    permissions = (
        f"{NET}/localNetworkGateways/read",
        f"{NET}/localNetworkGateways/write",
        *LRO_STATUS,
    )

    async def plan(self, ctx: RunContext, params: LngParams) -> Plan:
        field, wanted = _address(params)
        return await _plan_lng(ctx, target(ctx), field, wanted)

    async def apply(self, ctx: RunContext, params: LngParams, plan: Plan) -> str:
        t = target(ctx)
        field, wanted = _address(params)
        result = await ctx.step("update-lng", lambda: _put_address(ctx, t, field, wanted, plan))
        return f"{result['field']} is {result['value']}"

    async def verify(self, ctx: RunContext, params: LngParams) -> str | None:
        field, wanted = _address(params)
        if vars(ctx).pop(_CONFIRMED, None) == (field, wanted):
            return None  # the operation's final read showed it, Succeeded
        return await _verify_lng(ctx, target(ctx), field, wanted)


class RecreateConnection(Playbook[RecreateParams]):
    name = "recreate-connection"
    summary = "Delete and re-create the site's connection, settings and key preserved"
    destructive = True
    params_model = RecreateParams
    permissions = (
        f"{NET}/connections/read",
        f"{NET}/connections/sharedkey/action",
        f"{NET}/connections/delete",
        f"{NET}/connections/write",
        f"{NET}/virtualNetworkGateways/read",
        f"{NET}/localNetworkGateways/read",
        f"{NET}/localNetworkGateways/write",
        *LRO_STATUS,
    )

    async def plan(self, ctx: RunContext, params: RecreateParams) -> Plan:
        t = target(ctx)
        plan = await _plan_lng(ctx, t, "gatewayIpAddress", params.ip) if params.ip else Plan()
        client = await network(ctx)
        try:
            conn = await client.virtual_network_gateway_connections.get(
                t.resource_group, t.connection
            )
            status = text(conn.connection_status) or "Unknown"
        except Exception as exc:
            if not is_not_found(exc):
                raise
            status = "missing"  # deleted by a run that crashed; its journal restores it
        changes = list(plan.changes)
        if changes or status != "Connected":
            changes.append(
                Change(
                    target=f"connection {t.connection}",
                    field="recreate",
                    old=status,
                    new="delete and re-create, settings preserved",
                )
            )
        notes = list(plan.notes)
        if ctx.services.journal_cipher is None:
            notes.append("recreate needs security.journal_key to keep the shared key safe")
        return Plan(changes=changes, notes=notes, read=plan.read)

    async def apply(self, ctx: RunContext, params: RecreateParams, plan: Plan) -> str:
        t = target(ctx)
        snapshot = await ctx.step("snapshot", lambda: _snapshot(ctx, t), secret=True)
        etag = snapshot.get("etag")
        await ctx.step("delete-connection", lambda: _delete_connection(ctx, t, etag))
        moved = ""
        if params.ip and plan.read:
            ip = params.ip
            result = await ctx.step(
                "update-lng", lambda: _put_address(ctx, t, "gatewayIpAddress", ip, plan)
            )
            moved = f"{result['field']} is {result['value']}; "
        await ctx.step("create-connection", lambda: _create_connection(ctx, t, snapshot))
        return f"{moved}connection {t.connection} re-created"

    async def verify(self, ctx: RunContext, params: RecreateParams) -> str | None:
        t = target(ctx)
        if params.ip:
            problem = await _verify_lng(ctx, t, "gatewayIpAddress", params.ip)
            if problem:
                return problem
        client = await network(ctx)
        try:
            await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
        except Exception as exc:
            if is_not_found(exc):
                return f"connection {t.connection} does not exist after re-creation"
            raise
        return None


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
    value = key.value
    if not isinstance(value, str) or not value:
        raise PermanentError(
            f"cannot read the shared key of {t.connection} (needs the RBAC action "
            "Microsoft.Network/connections/sharedKey/action); refusing to delete it",
            "SharedKeyUnreadable",
        )
    ctx.services.redact.add(value)  # from now on it is masked wherever it could appear
    raw = _arm_json(conn)
    body = writable_connection(raw)
    body["properties"]["sharedKey"] = value
    if raw.get("etag"):  # the DELETE is conditional on it (not sent back on the PUT)
        body["etag"] = raw["etag"]
    return body


async def _delete_connection(ctx: RunContext, t: AzureTarget, etag: str | None) -> str:
    """DELETE the connection, If-Match the ETag of the snapshot: a connection changed since
    (someone edited it) is not deleted, since the snapshot would re-create it as it was. The
    next run snapshots it again."""
    client = await network(ctx)
    ops = client.virtual_network_gateway_connections
    headers = {"If-Match": str(etag)} if etag else {}
    try:
        poller = await ops.begin_delete(t.resource_group, t.connection, headers=headers)
    except Exception as exc:
        if is_not_found(exc):
            return "already gone"
        if not precondition_failed(exc):
            raise
        try:  # gone (a resumed run whose delete finished) or changed since the snapshot
            await ops.get(t.resource_group, t.connection)
        except Exception as read:
            if is_not_found(read):
                return "already gone"
            raise
        raise TransientError(
            f"connection {t.connection} changed since its snapshot; not deleted (the next "
            "run snapshots it again)"
        ) from exc

    async def get() -> Any:
        return await ops.get(t.resource_group, t.connection)

    await finish(ctx, poller, get, f"connection {t.connection}", gone_ok=True)
    return "deleted"


async def _create_connection(ctx: RunContext, t: AzureTarget, body: dict[str, Any]) -> str:
    client = await network(ctx)
    ops = client.virtual_network_gateway_connections
    ctx.services.redact.add(str(body.get("properties", {}).get("sharedKey") or ""))
    body = {k: v for k, v in body.items() if k != "etag"}  # the snapshot's, for the DELETE
    poller = await ops.begin_create_or_update(
        t.resource_group, t.connection, cast("ConnectionJson", body)
    )

    async def get() -> Any:
        return await ops.get(t.resource_group, t.connection)

    conn = await finish(ctx, poller, get, f"connection {t.connection}")
    return text(conn.provisioning_state) or "Succeeded"

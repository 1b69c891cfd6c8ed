"""What the Azure playbooks share: the site's resources, the client, ARM fault handling."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.retry import PermanentError, status_of
from playbooks.base import RunContext

if TYPE_CHECKING:
    from azure.mgmt.network.aio import NetworkManagementClient

# Fields ARM computes; never sent back on a PUT (and not part of a connection's settings).
CONNECTION_READONLY = frozenset(
    {
        "connectionStatus",
        "tunnelConnectionStatus",
        "egressBytesTransferred",
        "ingressBytesTransferred",
        "resourceGuid",
        "provisioningState",
    }
)
RESOURCE_READONLY = frozenset({"id", "name", "type", "etag"})

NET = "Microsoft.Network"
LRO_STATUS = (f"{NET}/locations/operations/read", f"{NET}/locations/operationResults/read")


@dataclass(frozen=True)
class AzureTarget:
    resource_group: str
    local_network_gateway: str
    connection: str


def target(ctx: RunContext) -> AzureTarget:
    cfg = ctx.site_config
    missing = [
        key
        for key in ("resource_group", "local_network_gateway", "connection")
        if cfg is None or not getattr(cfg, key)
    ]
    if missing:
        keys = ", ".join(f"sites.{ctx.site}.{k}" for k in missing)
        raise PermanentError(
            f"site {ctx.site!r} has no Azure resources configured: {keys}", "NotConfigured"
        )
    assert cfg is not None and cfg.resource_group and cfg.local_network_gateway
    assert cfg.connection
    return AzureTarget(cfg.resource_group, cfg.local_network_gateway, cfg.connection)


async def network(ctx: RunContext) -> NetworkManagementClient:
    return await ctx.services.azure.network()


def is_not_found(exc: BaseException) -> bool:
    return status_of(exc) == 404


async def finish(poller: Any, recheck: Any = None) -> Any:
    """Wait for an LRO. A lost operation (poll URL 404, a known ARM wart) is judged by a re-read."""
    try:
        return await poller.result()
    except Exception as exc:
        if recheck is not None and is_not_found(exc):
            return await recheck()
        raise


def writable_connection(raw: dict[str, Any]) -> dict[str, Any]:
    """A connection's settings as a PUT body: everything but what ARM computes."""
    body = {k: v for k, v in raw.items() if k not in RESOURCE_READONLY}
    props = {k: v for k, v in (raw.get("properties") or {}).items() if k not in CONNECTION_READONLY}
    body["properties"] = props
    return body


def text(value: Any) -> str:
    """An SDK enum or string as its wire value."""
    return str(getattr(value, "value", value) or "")


def precondition_failed(exc: BaseException) -> bool:
    return status_of(exc) == 412


async def wait_connected(
    client: NetworkManagementClient, t: AzureTarget, wait_s: float, interval: float
) -> tuple[bool, str, float]:
    """Poll until the connection reports Connected: (connected, last status, seconds waited)."""
    began = time.monotonic()
    status = "Unknown"
    while True:
        conn = await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
        status = text(conn.connection_status) or "Unknown"
        if status == "Connected":
            return True, status, time.monotonic() - began
        if time.monotonic() - began >= wait_s:
            return False, status, time.monotonic() - began
        await asyncio.sleep(interval)

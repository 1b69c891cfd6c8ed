"""What the Azure playbooks share: the site's resources, the client, ARM fault handling.

HTTP retries are azure-core's (see ``bot.azure``). What is left here is the truth of a
long-running operation: when its status URL is lost (a known ARM wart: 404 "Operation not
found" after a write that went through) or the wait times out, the resource itself is read
until its ``provisioningState`` leaves ``Updating`` (bounded by ``azure.settle_timeout``), and
that decides. A failed operation is worth another reconcile later (transient).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.retry import (
    PermanentError,
    TransientError,
    describe_error,
    is_transient,
    sample_until,
    status_of,
)
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


BUSY_STATES = frozenset({"Updating", "Creating", "Deleting"})


async def settled(
    ctx: RunContext,
    get: Callable[[], Awaitable[Any]],
    what: str,
    *,
    gone_ok: bool = False,
    after_write: bool = False,
) -> Any:
    """Read ``what`` until its provisioning state leaves Updating/Creating/Deleting.

    Gives up after ``azure.settle_timeout`` with a transient error. ``after_write``: a write
    went out and its outcome is being judged, so failing reads (429/5xx beyond azure-core's
    retries) are only missed samples; otherwise they fail at once (ARM down is not a state
    to wait out inside a run). With ``gone_ok`` a 404 ends the wait (a finished delete) and
    returns None.
    """
    cfg = ctx.services.settings.azure

    async def read() -> Any:
        try:
            return await get()
        except Exception as exc:
            if gone_ok and is_not_found(exc):
                return None
            raise

    waited = await sample_until(
        read,
        lambda res: res is None or _state(res) not in BUSY_STATES,
        within=cfg.settle_timeout,
        every=max(0.05, min(cfg.polling_interval or 1.0, 5.0)),
        tolerate=is_transient if after_write else lambda exc: False,
    )
    if waited.done:
        return waited.value
    state = (
        f"unreadable ({describe_error(waited.error)[0]})"
        if waited.error is not None
        else _state(waited.value)
    )
    raise TransientError(f"{what} is still {state} after {cfg.settle_timeout:g}s")


def _state(res: Any) -> str:
    return text(getattr(res, "provisioning_state", None)) or "Succeeded"


async def finish(
    ctx: RunContext,
    poller: Any,
    get: Callable[[], Awaitable[Any]] | None,
    what: str,
    *,
    gone_ok: bool = False,
) -> Any:
    """Wait for an LRO. A lost operation or a broken wait is judged by reading the resource
    until it settles; a failed operation is transient (the next reconcile re-plans)."""
    try:
        return await poller.result()
    except Exception as exc:
        if _operation_failed(exc):
            code, message = describe_error(exc)
            raise TransientError(f"{what}: the operation failed ({code}): {message}") from exc
        lost = is_not_found(exc) or is_transient(exc)
        if get is None or not lost:
            raise
        return await settled(ctx, get, what, gone_ok=gone_ok, after_write=True)


def _operation_failed(exc: BaseException) -> bool:
    """The status URL answered fine and said Failed/Canceled (azure-core raises the poll's
    200 as an HttpResponseError)."""
    return status_of(exc) in (200, 201, 202)


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


def tunnel_status(conn: Any, via: str | None) -> str:
    """The connection's status, or with ``via`` (a gateway instance's public IP) that of its
    tunnel through that instance (``tunnelConnectionStatus[]``, named ``{connection}_{ip}``)."""
    if via is None:
        return text(conn.connection_status) or "Unknown"
    for entry in conn.tunnel_connection_status or []:
        if str(entry.tunnel or "").endswith(f"_{via}"):
            return text(entry.connection_status) or "Unknown"
    return "NoTunnel"


async def wait_connected(
    client: NetworkManagementClient,
    t: AzureTarget,
    wait_s: float,
    interval: float,
    *,
    via: str | None = None,
) -> tuple[bool, str, float]:
    """Poll until the connection (``via``: its tunnel through that gateway instance) reports
    Connected: (connected, last status, seconds waited).

    A throttled or failing read inside the wait is only a missed sample, not a failure."""
    began = time.monotonic()

    async def status() -> str:
        conn = await client.virtual_network_gateway_connections.get(t.resource_group, t.connection)
        return tunnel_status(conn, via)

    waited = await sample_until(
        status, lambda s: s == "Connected", within=wait_s, every=interval, tolerate=is_transient
    )
    if waited.error is not None:
        last = f"unreadable ({describe_error(waited.error)[0]})"
    else:
        last = waited.value or "Unknown"
    return waited.done, last, time.monotonic() - began

"""The Azure side: which cloud, which credential, and the clients a process shares (network,
Traffic Manager).

In ``sim`` mode the real ``azure-mgmt-network`` / ``azure-mgmt-trafficmanager`` aio clients talk
to the local ARM simulator with a fixed token; otherwise ``DefaultAzureCredential`` (managed
identity, workload identity, environment, Azure CLI) against the public or a sovereign cloud.
Both clients share the credential, the retry settings and the fencing below.

Retries have one owner per layer: azure-core's ``RetryPolicy`` owns HTTP retries (408, 429,
500, 502, 503, 504 and connection errors, honouring ``Retry-After`` in full; note that it
re-sends *any* request whose error answer carries ``Retry-After``, and POST/PATCH on
500/503/504, so a playbook whose repeated action hurts passes per-call settings). Playbook
code never re-sends a mutating call itself: after a failure it re-reads and re-plans, and a
reconcile that still fails goes back to the scheduler.

Every mutating request (anything but GET/HEAD) first checks that the run still holds its
site's lock (``FencePolicy``): a worker that was paused past its lock's TTL makes no write.
Every request, then, takes a token from the ARM budget all replicas share (``BudgetPolicy``,
``bot.budget``), or waits its turn, or defers the reconcile to the scheduler.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy

from bot.config import CLOUDS, AzureConfig
from bot.state import fence_check

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.mgmt.network.aio import NetworkManagementClient
    from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient

    from bot.budget import Budget


class FencePolicy(AsyncHTTPPolicy):  # type: ignore[type-arg]
    """Before a mutating request: is the site still ours? (``LockLost`` otherwise.)"""

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        if request.http_request.method.upper() not in ("GET", "HEAD"):
            await fence_check()
        return await self.next.send(request)


class BudgetPolicy(AsyncHTTPPolicy):  # type: ignore[type-arg]
    """Before every ARM request (each retry too): a token from the shared budget
    (``bot.budget``); after it, ARM's ``x-ms-ratelimit-remaining-*`` headers correct the
    bucket and a 429 is counted. Without a budget attached it passes requests through."""

    def __init__(self, clients: AzureClients) -> None:
        super().__init__()
        self._clients = clients

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        budget = self._clients.budget
        if budget is None:
            return await self.next.send(request)
        from bot.budget import op_class, subscription_of

        http = request.http_request
        sub = subscription_of(http.url, self._clients.cfg.subscription_id)
        op = op_class(http.method)
        await budget.acquire(sub, op)
        response = await self.next.send(request)
        if response.http_response.status_code == 429:
            await budget.throttled(sub, op)
        else:
            await budget.follow(sub, response.http_response.headers)
        return response


class AzureClients:
    """Builds each client on first use (the SDK imports are heavy) and closes them."""

    def __init__(self, cfg: AzureConfig) -> None:
        self.cfg = cfg
        self._client: NetworkManagementClient | None = None
        self._tm: TrafficManagerManagementClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._guard = asyncio.Lock()
        self.budget: Budget | None = None  # the shared ARM budget, attached by the process

    async def network(self) -> NetworkManagementClient:
        async with self._guard:
            if self._client is None:
                # The SDK is several MB of modules: import it off the event loop, so the
                # first ARM call does not stall /healthz and every other task for seconds.
                await asyncio.to_thread(importlib.import_module, "azure.mgmt.network.aio")
                self._client = self._build()
            return self._client

    async def traffic_manager(self) -> TrafficManagerManagementClient:
        async with self._guard:
            if self._tm is None:
                await asyncio.to_thread(importlib.import_module, "azure.mgmt.trafficmanager.aio")
                self._tm = self._build_traffic_manager()
            return self._tm

    def _options(self) -> dict[str, Any]:
        """What every client gets: azure-core's retry settings, timeouts and, per retry, the
        fence check (a policy instance per client: a pipeline links its policies)."""
        cfg = self.cfg
        if not cfg.subscription_id:
            from bot.retry import PermanentError

            raise PermanentError("azure.subscription_id is not configured", "NotConfigured")
        return {
            "retry_total": cfg.retry_total,
            "retry_backoff_factor": cfg.retry_backoff_factor,
            "retry_backoff_max": cfg.retry_backoff_max,
            "per_retry_policies": [FencePolicy(), BudgetPolicy(self)],
            "connection_timeout": cfg.request_timeout,
            "read_timeout": cfg.request_timeout,
        }

    def _real_credential(self) -> AsyncTokenCredential:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            authority = CLOUDS.get(self.cfg.cloud, CLOUDS["public"])[1]
            self._credential = DefaultAzureCredential(authority=authority)
        return self._credential

    def _build(self) -> NetworkManagementClient:
        cfg = self.cfg
        options = {**self._options(), "polling_interval": cfg.polling_interval}
        if cfg.cloud == "sim":
            from bot.sim.client import sim_network_client

            return sim_network_client(cfg.arm_endpoint, cfg.subscription_id, **options)
        from azure.mgmt.network.aio import NetworkManagementClient

        return NetworkManagementClient(
            self._real_credential(),
            cfg.subscription_id,
            base_url=cfg.arm_endpoint,
            credential_scopes=[f"{cfg.arm_endpoint}/.default"],
            **options,
        )

    def _build_traffic_manager(self) -> TrafficManagerManagementClient:
        """Traffic Manager's writes are synchronous: no polling interval to pass."""
        cfg = self.cfg
        options = self._options()
        if cfg.cloud == "sim":
            from bot.sim.client import sim_traffic_manager_client

            return sim_traffic_manager_client(cfg.arm_endpoint, cfg.subscription_id, **options)
        from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient

        return TrafficManagerManagementClient(
            self._real_credential(),
            cfg.subscription_id,
            base_url=cfg.arm_endpoint,
            credential_scopes=[f"{cfg.arm_endpoint}/.default"],
            **options,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._tm is not None:
            await self._tm.close()
            self._tm = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

"""Make the real aio ``NetworkManagementClient`` and ``TrafficManagerManagementClient`` talk to
the local ARM simulator.

azure-core refuses to send bearer tokens over plain http
(``_enforce_https`` in the bearer policy). Instead of disabling that per call,
we install a subclass of the SDK's own ARM challenge policy that lifts the
check *only* for loopback URLs, so the token flow (credential -> header,
401 challenge handling) stays exactly the SDK's.
"""

from __future__ import annotations

import ipaddress
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import PipelineRequest
from azure.mgmt.core.policies import AsyncARMChallengeAuthenticationPolicy
from azure.mgmt.network.aio import NetworkManagementClient

if TYPE_CHECKING:
    from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient

ARM_SCOPE = "https://management.azure.com/.default"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SimCredential(AsyncTokenCredential):
    """Async credential handing out a fixed, non-empty token (sim mode only)."""

    def __init__(self, token: str = "tunnelwarden-sim-token", lifetime: int = 3600) -> None:
        if not token:
            raise ValueError("token must be non-empty")
        self.token = token
        self.lifetime = lifetime

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + self.lifetime)

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        return AccessTokenInfo(self.token, int(time.time()) + self.lifetime)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SimCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None


class LoopbackBearerPolicy(AsyncARMChallengeAuthenticationPolicy):
    """The SDK's ARM bearer policy, allowing plain http to loopback hosts only."""

    async def on_request(self, request: PipelineRequest[Any]) -> None:
        if _is_loopback(request.http_request.url):
            request.context["enforce_https"] = False
        await super().on_request(request)


def sim_network_client(
    endpoint: str,
    subscription_id: str,
    *,
    credential: AsyncTokenCredential | None = None,
    polling_interval: float = 1.0,
    **kwargs: Any,
) -> NetworkManagementClient:
    """A real aio ``NetworkManagementClient`` pointed at the simulator at ``endpoint``.

    ``polling_interval`` is what the SDK waits between LRO polls when the server
    sends no (or a zero) ``Retry-After``; tests pass 0. Extra kwargs go to the
    client (e.g. ``retry_total``, ``retry_backoff_factor``, ``logging_enable``).
    """
    if not _is_loopback(endpoint):
        raise ValueError(f"sim clients only talk to loopback endpoints, not {endpoint!r}")
    credential = credential or SimCredential()
    kwargs.setdefault("authentication_policy", LoopbackBearerPolicy(credential, ARM_SCOPE))
    return NetworkManagementClient(
        credential,
        subscription_id,
        base_url=endpoint.rstrip("/"),
        polling_interval=polling_interval,
        **kwargs,
    )


def sim_traffic_manager_client(
    endpoint: str,
    subscription_id: str,
    *,
    credential: AsyncTokenCredential | None = None,
    **kwargs: Any,
) -> TrafficManagerManagementClient:
    """A real aio ``TrafficManagerManagementClient`` pointed at the simulator at ``endpoint``,
    authenticated like :func:`sim_network_client` (loopback only). Traffic Manager has no
    long-running operations, so there is no polling interval; extra kwargs go to the client
    (``retry_total``, ``per_retry_policies``, ``api_version``, ...)."""
    from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient

    if not _is_loopback(endpoint):
        raise ValueError(f"sim clients only talk to loopback endpoints, not {endpoint!r}")
    credential = credential or SimCredential()
    kwargs.setdefault("authentication_policy", LoopbackBearerPolicy(credential, ARM_SCOPE))
    return TrafficManagerManagementClient(
        credential, subscription_id, base_url=endpoint.rstrip("/"), **kwargs
    )

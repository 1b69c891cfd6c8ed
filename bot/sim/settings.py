"""Tunable knobs of the simulator (changeable at run time via ``/_sim/config``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Microsoft.Network stable api-versions (folders under azure-rest-api-specs
# specification/network/resource-manager/Microsoft.Network/stable/). The old ones are still
# sent by the SDK family: azure-mgmt-network <= 27.x is multi-API and its profiles pin e.g.
# 2015-06-15 / 2018-04-01 / 2019-08-01 for some groups; Azure Stack hybrid profiles use
# 2017-10-01 and 2018-11-01; defaults measured in the wheels: 25.0.0 -> 2023-04-01,
# 25.4.0 -> 2023-11-01, 28.0.0 -> 2024-03-01, 30.0.0 -> 2024-10-01, 33.x -> 2026-03-01.
NETWORK_API_VERSIONS: tuple[str, ...] = (
    "2015-06-15",
    "2016-09-01",
    "2016-12-01",
    "2017-03-01",
    "2017-06-01",
    "2017-08-01",
    "2017-09-01",
    "2017-10-01",
    "2017-11-01",
    "2018-01-01",
    "2018-02-01",
    "2018-04-01",
    "2018-06-01",
    "2018-07-01",
    "2018-08-01",
    "2018-10-01",
    "2018-11-01",
    "2018-12-01",
    "2019-02-01",
    "2019-04-01",
    "2019-06-01",
    "2019-07-01",
    "2019-08-01",
    "2019-09-01",
    "2019-11-01",
    "2019-12-01",
    "2020-03-01",
    "2020-04-01",
    "2020-05-01",
    "2020-06-01",
    "2020-07-01",
    "2020-08-01",
    "2020-11-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2022-01-01",
    "2022-05-01",
    "2022-07-01",
    "2022-09-01",
    "2022-11-01",
    "2023-02-01",
    "2023-04-01",
    "2023-05-01",
    "2023-06-01",
    "2023-09-01",
    "2023-11-01",
    "2024-01-01",
    "2024-03-01",
    "2024-05-01",
    "2024-07-01",
    "2024-10-01",
    "2025-01-01",
    "2025-03-01",
    "2025-05-01",
    "2025-07-01",  # azure-mgmt-network 31.0.x
    "2025-09-01",  # azure-mgmt-network 32.0.0
    "2026-01-01",
    "2026-03-01",
)

# Microsoft.Resources stable api-versions that serve resourcegroups (same spec tree,
# specification/resources/resource-manager/Microsoft.Resources/stable/).
RESOURCES_API_VERSIONS: tuple[str, ...] = (
    "2015-11-01",
    "2016-02-01",
    "2016-07-01",
    "2016-09-01",
    "2017-05-10",
    "2018-02-01",
    "2018-05-01",
    "2019-03-01",
    "2019-05-01",
    "2019-05-10",
    "2019-07-01",
    "2019-08-01",
    "2019-10-01",
    "2020-06-01",
    "2020-10-01",
    "2021-01-01",
    "2021-04-01",
    "2022-09-01",
    "2024-03-01",
    "2024-11-01",
    "2025-04-01",
)


# Traffic Manager api-versions (specification/trafficmanager/resource-manager/Microsoft.Network/
# [TrafficManager/]stable/ and the previews beside them). Defaults measured in the wheels:
# azure-mgmt-trafficmanager 1.0.0/1.1.0 -> 2022-04-01, 2.0.0 -> 2026-09-01; older SDKs sent
# 2017-05-01 (0.40), 2018-02-01/2018-03-01 (0.50) and 2018-04-01 (0.51).
TRAFFIC_MANAGER_API_VERSIONS: tuple[str, ...] = (
    "2015-11-01",
    "2017-03-01",
    "2017-05-01",
    "2017-09-01-preview",
    "2018-02-01",
    "2018-03-01",
    "2018-04-01",
    "2018-08-01",
    "2022-04-01",
    "2024-04-01-preview",
    "2025-01-01-preview",
    "2026-09-01",
)


class SimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    tunnel_delay: float = Field(default=0.0, ge=0, description="Connecting -> Connected (s)")
    retry_after: int = Field(default=1, ge=0, description="Retry-After on LRO responses (s)")
    lro_polls: int = Field(default=1, ge=0, description="InProgress polls before completion")
    lro_settle_seconds: float = Field(
        default=5.0, ge=0, description="operations complete unpolled after this many seconds"
    )
    page_size: int = Field(default=100, ge=1)
    tokens: list[str] = Field(
        default_factory=list, description="accepted bearer tokens; empty accepts any"
    )
    throttling: bool = Field(default=True, description="ARM-like token-bucket throttling")
    api_versions: list[str] = Field(default_factory=lambda: list(NETWORK_API_VERSIONS))
    resource_api_versions: list[str] = Field(
        default_factory=lambda: list(RESOURCES_API_VERSIONS),
        description="Microsoft.Resources api-versions accepted on /resourcegroups",
    )
    ingress_bytes_per_second: float = Field(
        default=1000.0, ge=0, description="bytes in per second per Connected, non-idle tunnel"
    )
    egress_bytes_per_second: float = Field(
        default=500.0, ge=0, description="bytes out per second per Connected, non-idle tunnel"
    )
    azure_asn: int = Field(
        default=65515, ge=1, le=4294967295, description="ASN of the Azure VPN gateways"
    )
    traffic_manager_api_versions: list[str] = Field(
        default_factory=lambda: list(TRAFFIC_MANAGER_API_VERSIONS),
        description="api-versions accepted on trafficmanagerprofiles routes",
    )
    tm_probe_delay: float = Field(
        default=0.0,
        ge=0,
        description="seconds an enabled Traffic Manager endpoint shows CheckingEndpoint before "
        "its first probe result (after it is created or enabled, or its profile enabled)",
    )

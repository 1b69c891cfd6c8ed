"""Tunable knobs of the simulator (changeable at run time via ``/_sim/config``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Microsoft.Network stable api-versions from 2023-02-01 on (per azure-rest-api-specs),
# plus 2026-03-01, the default of azure-mgmt-network 33.x.
NETWORK_API_VERSIONS: tuple[str, ...] = (
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
    "2025-03-01",
    "2025-05-01",
    "2026-01-01",
    "2026-03-01",
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

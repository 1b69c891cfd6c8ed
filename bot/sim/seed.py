"""Seed-file schema for the simulated world (TOML or JSON, same structure).

Example (TOML)::

    subscription = "00000000-0000-0000-0000-000000000000"   # default for entries below

    [settings]
    tunnel_delay = 0.0        # seconds a tunnel stays "Connecting" before "Connected" (default 0)
    retry_after = 1           # Retry-After (s) on LRO responses
    lro_polls = 1             # InProgress polls before an operation completes
    lro_settle_seconds = 5.0  # unpolled operations complete on their own after this
    page_size = 100           # list page size (nextLink paging)
    tokens = []               # accepted bearer tokens; empty = any non-empty token
    throttling = true         # ARM-like per-subscription token buckets (429s)
    ingress_bytes_per_second = 1000.0  # traffic per Connected, non-idle tunnel
    egress_bytes_per_second = 500.0
    azure_asn = 65515         # ASN in the gateways' computed bgpSettings

    [[resource_groups]]
    name = "rg-vpn"
    location = "westeurope"

    [[virtual_network_gateways]]
    resource_group = "rg-vpn"
    name = "vpngw"
    properties = { gatewayType = "Vpn", vpnType = "RouteBased" }   # optional extras
    # properties = { activeActive = true }   # two instances: two tunnels per connection

    [[local_network_gateways]]
    resource_group = "rg-vpn"
    name = "lng-home"
    gateway_ip_address = "198.51.100.10"   # or fqdn = "home.example.net"
    address_prefixes = ["192.168.178.0/24"]

    [[connections]]
    resource_group = "rg-vpn"
    name = "conn-home"
    virtual_network_gateway = "vpngw"      # name in the same group, or a full id
    local_network_gateway = "lng-home"     # name in the same group, or a full id
    shared_key = "s3cret"

    [[devices]]                              # the on-premises routers ("sites")
    name = "fritzbox-home"
    public_ip = "198.51.100.10"
    shared_key = "s3cret"
    lng = "lng-home"                         # LNG name or full id it sits behind
    fqdn = "home.example.net"                # optional DynDNS name following public_ip

    [dns]                                    # sim-local name table for LNG fqdn mode
    "static.example.net" = "203.0.113.7"

    [[traffic_manager_profiles]]             # e.g. a multisite (AOVPN) entry point
    resource_group = "rg-vpn"
    name = "tm-vpn"
    routing_method = "Priority"              # trafficRoutingMethod
    relative_name = "vpn-contoso"            # dnsConfig.relativeName (default: the name)
    monitor = { protocol = "HTTPS", port = 443, path = "/" }   # monitorConfig

    [[traffic_manager_profiles.endpoints]]
    name = "ep-home"
    type = "ExternalEndpoints"               # or AzureEndpoints / NestedEndpoints
    target = "home.example.net"              # (target_resource_id for Azure/Nested)
    priority = 1
    healthy = true                           # what the probes find (sim control)
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.sim.settings import SimSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedResourceGroup(_Strict):
    name: str
    subscription: str | None = None
    location: str = "westeurope"


class _SeedResource(_Strict):
    name: str
    resource_group: str
    subscription: str | None = None
    location: str | None = None  # defaults to the resource group's location
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, Any] = Field(default_factory=dict)


class SeedGateway(_SeedResource):
    pass


class SeedLocalGateway(_SeedResource):
    gateway_ip_address: str | None = None
    fqdn: str | None = None
    address_prefixes: list[str] = Field(default_factory=list)


class SeedConnection(_SeedResource):
    virtual_network_gateway: str
    local_network_gateway: str
    shared_key: str | None = None
    connection_type: str = "IPsec"


class SeedDevice(_Strict):
    name: str
    public_ip: str
    shared_key: str
    lng: str
    fqdn: str | None = None


class SeedTmEndpoint(_Strict):
    name: str
    type: str = "ExternalEndpoints"
    target: str | None = None
    target_resource_id: str | None = None
    endpoint_status: str = "Enabled"
    priority: int | None = None
    weight: int | None = None
    endpoint_location: str | None = None
    healthy: bool = True
    stopped: bool = False
    properties: dict[str, Any] = Field(default_factory=dict)  # further endpoint properties

    def body(self) -> dict[str, Any]:
        props = dict(self.properties)
        fields = {
            "target": self.target,
            "targetResourceId": self.target_resource_id,
            "endpointStatus": self.endpoint_status,
            "priority": self.priority,
            "weight": self.weight,
            "endpointLocation": self.endpoint_location,
        }
        props.update({k: v for k, v in fields.items() if v is not None})
        return {"name": self.name, "type": self.type, "properties": props}


class SeedTmProfile(_Strict):
    name: str
    resource_group: str
    subscription: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    routing_method: str = "Priority"
    relative_name: str | None = None
    ttl: int = 60
    profile_status: str = "Enabled"
    monitor: dict[str, Any] = Field(
        default_factory=lambda: {"protocol": "HTTPS", "port": 443, "path": "/"}
    )
    properties: dict[str, Any] = Field(default_factory=dict)  # further profile properties
    endpoints: list[SeedTmEndpoint] = Field(default_factory=list)

    def body(self) -> dict[str, Any]:
        props = dict(self.properties)
        props.update(
            {
                "profileStatus": self.profile_status,
                "trafficRoutingMethod": self.routing_method,
                "dnsConfig": {"relativeName": self.relative_name or self.name, "ttl": self.ttl},
                "monitorConfig": dict(self.monitor),
                "endpoints": [e.body() for e in self.endpoints],
            }
        )
        return {"location": "global", "tags": self.tags, "properties": props}


class SeedFile(_Strict):
    subscription: str = "00000000-0000-0000-0000-000000000000"
    settings: SimSettings = Field(default_factory=SimSettings)
    resource_groups: list[SeedResourceGroup] = Field(default_factory=list)
    virtual_network_gateways: list[SeedGateway] = Field(default_factory=list)
    local_network_gateways: list[SeedLocalGateway] = Field(default_factory=list)
    connections: list[SeedConnection] = Field(default_factory=list)
    devices: list[SeedDevice] = Field(default_factory=list)
    dns: dict[str, str] = Field(default_factory=dict)
    traffic_manager_profiles: list[SeedTmProfile] = Field(default_factory=list)


def load_seed(path: str | Path) -> SeedFile:
    """Parse a ``.toml`` or ``.json`` seed file."""
    p = Path(path)
    raw = p.read_bytes()
    data: Any = tomllib.loads(raw.decode()) if p.suffix.lower() == ".toml" else json.loads(raw)
    return SeedFile.model_validate(data)

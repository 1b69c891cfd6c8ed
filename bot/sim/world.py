"""The simulated world: Azure resources, the on-premises devices behind them, and tunnels.

Why it exists: tunnelwarden must be tested against something that *behaves* like
Azure when a site's public IP changes. A connection here is ``Connected`` only
while its local network gateway (LNG) points at the device's real public IP
(``fqdn`` resolved through the sim-local ``dns`` table, falling back to
``gatewayIpAddress`` when the name does not resolve) **and** the connection's shared key equals the
device's key. When a change makes them agree the connection is ``Connecting``
for ``settings.tunnel_delay`` seconds, then ``Connected``; when they disagree it
is ``NotConnected``. ``Failed``/``Deleting`` provisioning states on the
connection or either gateway also keep a tunnel down. An IPsec connection whose LNG has
no device behind it at all is ``Unknown`` (Azure has never heard from a peer), as are
ExpressRoute/VPNClient connections. Vnet2Vnet connections are connected whenever both
gateways exist.

**Tunnels.** Each connection has one IPsec tunnel per instance of its virtual network
gateway: one, or two when the gateway has ``activeActive: true``. A GET renders them as
``tunnelConnectionStatus[]`` entries named ``{connection}_{instance public IP}`` (as in
Microsoft's docs) with their own status and byte counters; the connection's counters are
the sums (in the docs' sample output the connection totals equal the sum of the two
tunnels). The connection is Connected while at least one tunnel is. While a tunnel is
Connected and not *idle* its counters grow at ``settings.ingress_bytes_per_second`` /
``egress_bytes_per_second``; they never grow otherwise and are kept across drops and resets
(reset only when the connection is re-created). A LIST of connections omits
``connectionStatus`` and ``tunnelConnectionStatus`` and reports the counters as 0, which is
what ARM returns (azure-powershell#2581, azure-cli#2061: the status is filled in on a GET
by name only).

A tunnel can be dropped on purpose (:meth:`World.drop_tunnel`, the whole connection or one
tunnel of an active-active pair); it stays down until one of the actions in ``cleared_by``
happens (default: any of ``reset_connection``, ``put_connection``, ``set_shared_key``,
``put_lng``, ``reset_gateway``), which lets tests model "only a gateway reset helps". A
gateway reset reboots one instance: the one whose public IP is given as ``gatewayVip``, else
the primary (instance 0), as the reset-gateway doc describes for active-active gateways.
A device with a primary and a secondary gateway dials only the tunnel to the one it uses
(:meth:`World.set_peer_legs`, driven by the SonicOS simulator through
:mod:`bot.sim.devices.link`); the others are NotConnected.

Seed file format: see :mod:`bot.sim.seed` (and ``docs/simulator.md``).
All mutators raise :class:`~bot.sim.errors.ArmError` exactly as the REST API
would answer, so the HTTP layer is a thin translation.
"""

from __future__ import annotations

import copy
import json
import math
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bot.sim.errors import (
    ArmError,
    another_operation_in_progress,
    bad_request,
    invalid_resource_group_location,
    precondition_failed,
    resource_group_not_found,
    resource_not_found,
    subscription_not_found,
)
from bot.sim.faults import LRO_KINDS, FaultBook, FaultKind, FaultRule, FaultSpec
from bot.sim.lro import Operation, OperationBook, OpFailure
from bot.sim.metering import ARM_LIMITS, RateLimiter, RequestCounters
from bot.sim.resources import (
    Kind,
    Resource,
    make_id,
    new_etag,
    normalize_location,
    resource_group_id,
)
from bot.sim.seed import SeedFile, load_seed
from bot.sim.settings import SimSettings
from bot.sim.trafficmanager import TmEndpoint, TrafficManager, endpoint_id
from bot.sim.validation import (
    ipv4,
    validate_connection,
    validate_lng,
    validate_name,
    validate_resource_group_name,
    validate_vng,
)

READ_ONLY_PROPS = frozenset(
    {
        "provisioningState",
        "resourceGuid",
        "connectionStatus",
        "tunnelConnectionStatus",
        "ingressBytesTransferred",
        "egressBytesTransferred",
    }
)
TUNNEL_ACTIONS = frozenset(
    {"reset_connection", "put_connection", "set_shared_key", "put_lng", "reset_gateway"}
)
DOWN_STATES = frozenset({"Failed", "Deleting"})
# lastConnectionEstablishedUtcTime as Microsoft's docs print it ("11/04/2017 17:03:30").
ESTABLISHED_FORMAT = "%m/%d/%Y %H:%M:%S"
# Gateway instance public IPs come from the benchmarking range (never routed), BGP addresses
# from a /27 per gateway in 10.128.0.0/9 (".4"/".5" like the first usable GatewaySubnet IPs).
VIP_BASE = IPv4Address("198.18.0.0")
BGP_BASE = IPv4Address("10.128.0.0")
BGP_STATES = {"Connected": "Connected", "Connecting": "Connecting"}  # anything else: Idle
BGP_KEEPALIVE_SECONDS = 60

RequestSig = tuple[str, str]  # (HTTP method, URL path) of the request starting an LRO


@dataclass
class ResourceGroup:
    subscription: str
    name: str
    location: str
    tags: dict[str, str] = field(default_factory=dict)
    managed_by: str | None = None
    provisioning_state: str = "Succeeded"

    @property
    def id(self) -> str:
        return resource_group_id(self.subscription, self.name)

    def render(self) -> dict[str, Any]:
        """The Microsoft.Resources JSON of the group (as the spec examples show it)."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": self.location,
        }
        if self.managed_by:
            body["managedBy"] = self.managed_by
        if self.tags:
            body["tags"] = dict(self.tags)
        body["properties"] = {"provisioningState": self.provisioning_state}
        return body


@dataclass
class Device:
    """An on-premises VPN router (a "site") with its real public IP and PSK."""

    name: str
    public_ip: str
    shared_key: str
    lng: str  # LNG name or full id it sits behind
    fqdn: str | None = None  # DynDNS name kept pointing at public_ip


@dataclass
class TunnelLeg:
    """One IPsec tunnel of a connection: one gateway instance <-> the on-premises device."""

    up_at: float | None = None  # clock time it is (or becomes) Connected; None: down
    dropped_until: frozenset[str] | None = None  # forced down until one of these actions
    idle: bool = False  # Connected but passing no traffic
    ingress: float = 0.0
    egress: float = 0.0
    accrued_at: float | None = None  # counters are exact up to this clock time
    last_established: datetime | None = None
    established_for: float | None = None  # the up_at last_established belongs to


def _legs(now: float | None = None) -> list[TunnelLeg]:
    return [TunnelLeg(accrued_at=now), TunnelLeg(accrued_at=now)]


@dataclass
class Tunnel:
    """Tunnel state of one connection (legs beyond the gateway's instance count are unused)."""

    agreed: bool = False
    dropped_until: frozenset[str] | None = None
    legs: list[TunnelLeg] = field(default_factory=_legs)


def _etag_matches(header: str, etag: str) -> bool:
    def bare(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    return any(t.strip() == "*" or bare(t) == bare(etag) for t in header.split(","))


def _timespan(seconds: float) -> str:
    """A .NET TimeSpan string ("9.01:04:53.5768637"), as BgpPeerStatus.connectedDuration."""
    ticks = max(0, round(seconds * 10_000_000))
    days, rest = divmod(ticks, 86_400 * 10_000_000)
    hours, rest = divmod(rest, 3_600 * 10_000_000)
    minutes, rest = divmod(rest, 60 * 10_000_000)
    secs, fraction = divmod(rest, 10_000_000)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    if fraction:
        text += f".{fraction:07d}"
    return f"{days}.{text}" if days else text


class World:
    """All simulator state plus the operations the REST layer maps onto."""

    def __init__(
        self, settings: SimSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or SimSettings()
        self.clock = clock
        self.resource_groups: dict[tuple[str, str], ResourceGroup] = {}
        self.resources: dict[str, Resource] = {}
        self.devices: dict[str, Device] = {}
        self.dns: dict[str, str] = {}
        self.tunnels: dict[str, Tunnel] = {}
        self.faults = FaultBook()
        self.counters = RequestCounters()
        self.ops = OperationBook(clock)
        self.limiter = RateLimiter(clock, ARM_LIMITS)
        self.traffic_manager = TrafficManager(clock, lambda: self.settings, self._scope)
        self._gateway_slots: dict[str, int] = {}
        # Connections whose on-premises device chooses which tunnels it dials (a SonicWall with
        # primary and secondary gateways, bot.sim.devices.link): key -> the instances dialed.
        self.peer_legs: dict[str, frozenset[int]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, *, clock: Callable[[], float] = time.monotonic, **settings: Any) -> World:
        return cls(SimSettings(**settings), clock=clock)

    @classmethod
    def from_file(cls, path: str | Path, *, clock: Callable[[], float] = time.monotonic) -> World:
        return cls.from_seed(load_seed(path), clock=clock)

    @classmethod
    def from_seed(
        cls, seed: SeedFile | dict[str, Any], *, clock: Callable[[], float] = time.monotonic
    ) -> World:
        seed = seed if isinstance(seed, SeedFile) else SeedFile.model_validate(seed)
        world = cls(seed.settings.model_copy(deep=True), clock=clock)
        try:
            world._seed(seed)
        except ArmError as exc:
            raise ValueError(f"invalid world seed: {exc}") from exc
        return world

    def _seed(self, seed: SeedFile) -> None:
        for group in seed.resource_groups:
            self.add_resource_group(
                group.subscription or seed.subscription, group.name, group.location
            )

        def place(entry: Any) -> tuple[str, str, str]:
            sub = entry.subscription or seed.subscription
            group = self.resource_groups.get((sub.lower(), entry.resource_group.lower()))
            if group is None:
                raise resource_group_not_found(entry.resource_group)
            return sub, group.name, entry.location or group.location

        def ref(value: str, sub: str, rg: str, kind: Kind) -> dict[str, str]:
            return {"id": value if value.startswith("/") else make_id(sub, rg, kind, value)}

        for gw in seed.virtual_network_gateways:
            sub, rg, loc = place(gw)
            body = {"location": loc, "tags": gw.tags, "properties": gw.properties}
            self.put(Kind.VNG, sub, rg, gw.name, body)
        for lng in seed.local_network_gateways:
            sub, rg, loc = place(lng)
            props = dict(lng.properties)
            if lng.gateway_ip_address:
                props["gatewayIpAddress"] = lng.gateway_ip_address
            if lng.fqdn:
                props["fqdn"] = lng.fqdn
            props.setdefault("localNetworkAddressSpace", {"addressPrefixes": lng.address_prefixes})
            self.put(
                Kind.LNG,
                sub,
                rg,
                lng.name,
                {"location": loc, "tags": lng.tags, "properties": props},
            )
        for conn in seed.connections:
            sub, rg, loc = place(conn)
            props = dict(conn.properties)
            props["connectionType"] = conn.connection_type
            props["virtualNetworkGateway1"] = ref(conn.virtual_network_gateway, sub, rg, Kind.VNG)
            props["localNetworkGateway2"] = ref(conn.local_network_gateway, sub, rg, Kind.LNG)
            if conn.shared_key is not None:
                props["sharedKey"] = conn.shared_key
            self.put(
                Kind.CONNECTION,
                sub,
                rg,
                conn.name,
                {"location": loc, "tags": conn.tags, "properties": props},
            )
        for name, ip in seed.dns.items():
            self.set_dns(name, ip)
        for dev in seed.devices:
            self.set_device(
                dev.name,
                public_ip=dev.public_ip,
                shared_key=dev.shared_key,
                lng=dev.lng,
                fqdn=dev.fqdn,
            )
            if self._device_lng_key(self.devices[dev.name.lower()]) is None:
                raise ValueError(f"device {dev.name!r}: LNG {dev.lng!r} not found or ambiguous")
        for prof in seed.traffic_manager_profiles:
            sub = prof.subscription or seed.subscription
            self.traffic_manager.put_profile(sub, prof.resource_group, prof.name, prof.body())
            for ep in prof.endpoints:
                ep_id = endpoint_id(sub, prof.resource_group, prof.name, ep.type, ep.name)
                self.traffic_manager.set_health(ep_id, ep.healthy, stopped=ep.stopped)
        self.traffic_manager.settle_all()  # seeded endpoints have had their first probe

    # ------------------------------------------------------------------ scope & lookup
    def add_resource_group(
        self, subscription: str, name: str, location: str = "westeurope"
    ) -> ResourceGroup:
        group = ResourceGroup(subscription, name, normalize_location(location))
        self.resource_groups.setdefault((subscription.lower(), name.lower()), group)
        return self.resource_groups[(subscription.lower(), name.lower())]

    def _scope(self, sub: str, rg: str | None = None) -> None:
        if not any(s == sub.lower() for s, _ in self.resource_groups):
            raise subscription_not_found(sub)
        if rg is not None and (sub.lower(), rg.lower()) not in self.resource_groups:
            raise resource_group_not_found(rg)

    def get(self, kind: Kind, sub: str, rg: str, name: str) -> Resource:
        self._scope(sub, rg)
        res = self.resources.get(make_id(sub, rg, kind, name).lower())
        if res is None:
            raise resource_not_found(kind.arm_type, name, rg)
        return res

    def list_resources(self, kind: Kind, sub: str, rg: str) -> list[Resource]:
        self._scope(sub, rg)
        prefix = make_id(sub, rg, kind, "").lower()
        return sorted(
            (r for k, r in self.resources.items() if k.startswith(prefix)), key=lambda r: r.key
        )

    def find(self, ref: str, kind: Kind = Kind.CONNECTION) -> Resource:
        """Resolve a full id or a unique name of ``kind`` (for the control API)."""
        if ref.startswith("/"):
            res = self.resources.get(ref.lower().rstrip("/"))
            if res is None:
                raise KeyError(f"no resource {ref}")
            return res
        hits = [
            r for r in self.resources.values() if r.kind is kind and r.name.lower() == ref.lower()
        ]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} {kind.value} named {ref!r}; use the full id")
        return hits[0]

    # ------------------------------------------------------------------ resource groups (ARM)
    def put_resource_group(self, sub: str, name: str, body: Any) -> tuple[ResourceGroup, bool]:
        """``PUT /subscriptions/{sub}/resourcegroups/{name}``; returns (group, created).

        Any subscription id is accepted: creating a group is how a subscription comes to
        exist in the simulator.
        """
        validate_resource_group_name(name)
        if not isinstance(body, dict):
            raise bad_request(
                "The request content was invalid and could not be deserialized.",
                "InvalidRequestContent",
            )
        location = body.get("location")
        if not isinstance(location, str) or not location.strip():
            raise ArmError(
                400, "LocationRequired", "The location property is required for this definition."
            )
        tags = body.get("tags") or {}
        managed_by = body.get("managedBy")
        if not isinstance(tags, dict) or not (managed_by is None or isinstance(managed_by, str)):
            raise bad_request(
                "'tags' must be an object and 'managedBy' a string.", "InvalidRequestContent"
            )
        loc = normalize_location(location)
        existing = self.resource_groups.get((sub.lower(), name.lower()))
        if existing is not None:
            if existing.location != loc:
                raise invalid_resource_group_location(location, existing.location)
            if existing.provisioning_state == "Deleting":
                raise ArmError(
                    409,
                    "ResourceGroupBeingDeleted",
                    f"The resource group '{existing.name}' is in deprovisioning state and "
                    "cannot perform this operation.",
                )
            existing.tags = {str(k): str(v) for k, v in tags.items()}
            existing.managed_by = managed_by or existing.managed_by
            return existing, False
        group = self.add_resource_group(sub, name, loc)
        group.tags = {str(k): str(v) for k, v in tags.items()}
        group.managed_by = managed_by
        return group, True

    def get_resource_group(self, sub: str, name: str) -> ResourceGroup:
        group = self.resource_groups.get((sub.lower(), name.lower()))
        if group is None:
            raise resource_group_not_found(name)
        return group

    def list_resource_groups(self, sub: str) -> list[ResourceGroup]:
        return sorted(
            (g for (s, _), g in self.resource_groups.items() if s == sub.lower()),
            key=lambda g: g.name.lower(),
        )

    def delete_resource_group(
        self, sub: str, name: str, *, request: RequestSig | None = None
    ) -> Operation | None:
        """ARM DELETE of a group: everything in it goes, then the group (an LRO)."""
        group = self.get_resource_group(sub, name)
        group.provisioning_state = "Deleting"
        prefix = (group.id + "/").lower()

        def remove() -> None:
            for key in [k for k in self.resources if k.startswith(prefix)]:
                self.resources.pop(key, None)
                self.tunnels.pop(key, None)
            self.traffic_manager.remove_group(sub, name)
            self.resource_groups.pop((sub.lower(), name.lower()), None)
            self.reevaluate()

        return self._start_operation(
            subscription=group.subscription,
            location=group.location,
            resource_id=group.id,
            request=request,
            on_success=remove,
            on_failure=lambda: setattr(group, "provisioning_state", "Succeeded"),
            arm_scope=True,
        )

    # ------------------------------------------------------------------ rendering
    def render(self, res: Resource, *, listing: bool = False) -> dict[str, Any]:
        """ARM JSON of ``res``; ``listing`` gives what a LIST returns (no tunnel status)."""
        if res.kind is Kind.VNG:
            return self._render_gateway(res)
        if res.kind is not Kind.CONNECTION:
            return res.render()
        if listing:
            return res.render({"ingressBytesTransferred": 0, "egressBytesTransferred": 0})
        self._settle_traffic(res.key)
        status = self.connection_status(res)
        tunnel = self.tunnels.get(res.key)
        entries: list[dict[str, Any]] = []
        if tunnel is not None and res.properties.get("connectionType") in ("IPsec", "Vnet2Vnet"):
            vips = self._connection_vips(res)
            now = self.clock()
            for index, leg in enumerate(tunnel.legs[: len(vips)]):
                leg_status = "Unknown" if status == "Unknown" else self._leg_state(tunnel, leg, now)
                entry: dict[str, Any] = {
                    "tunnel": f"{res.name}_{vips[index]}",
                    "connectionStatus": leg_status,
                    "ingressBytesTransferred": int(leg.ingress),
                    "egressBytesTransferred": int(leg.egress),
                }
                if leg.last_established is not None:
                    entry["lastConnectionEstablishedUtcTime"] = leg.last_established.strftime(
                        ESTABLISHED_FORMAT
                    )
                entries.append(entry)
        extra: dict[str, Any] = {"connectionStatus": status}
        if entries:
            extra["tunnelConnectionStatus"] = entries
        extra["ingressBytesTransferred"] = sum(e["ingressBytesTransferred"] for e in entries)
        extra["egressBytesTransferred"] = sum(e["egressBytesTransferred"] for e in entries)
        return res.render(extra)

    def _instances(self, gw: Resource | None) -> int:
        """How many gateway instances carry tunnels: 2 when active-active, else 1."""
        if gw is None:
            return 1
        return 2 if gw.properties.get("activeActive") is True else 1

    def _gateway_slot(self, gw: Resource) -> int:
        slot = self._gateway_slots.get(gw.key)
        if slot is None:
            slot = self._gateway_slots[gw.key] = len(self._gateway_slots)
        return slot

    def gateway_vips(self, gateway: Resource | str) -> list[str]:
        """Public IPs of a gateway's instances (one, or two when active-active)."""
        gw = gateway if isinstance(gateway, Resource) else self.find(gateway, Kind.VNG)
        slot = self._gateway_slot(gw)
        return [str(VIP_BASE + 2 * slot + i) for i in range(self._instances(gw))]

    def _gateway_bgp_addresses(self, gw: Resource) -> list[str]:
        slot = self._gateway_slot(gw)
        return [str(BGP_BASE + 32 * slot + 4 + i) for i in range(self._instances(gw))]

    def _connection_vips(self, conn: Resource) -> list[str]:
        gw = self.resources.get(conn.ref("virtualNetworkGateway1") or "")
        return self.gateway_vips(gw) if gw is not None else ["0.0.0.0"]

    def _render_gateway(self, gw: Resource) -> dict[str, Any]:
        """Gateway JSON plus the BGP settings NRP computes (per-instance addresses and VIPs)."""
        body = gw.render()
        props = body["properties"]
        if props.get("gatewayType") != "Vpn":
            return body
        addresses, vips = self._gateway_bgp_addresses(gw), self.gateway_vips(gw)
        configs = [c for c in props.get("ipConfigurations") or [] if isinstance(c, dict)]
        computed: dict[str, Any] = {
            "asn": self.settings.azure_asn,
            "bgpPeeringAddress": ",".join(addresses),
            "peerWeight": 0,
            "bgpPeeringAddresses": [
                {
                    "ipconfigurationId": str(configs[i]["id"])
                    if i < len(configs)
                    else f"{gw.id}/ipConfigurations/{'default' if i == 0 else 'activeActive'}",
                    "defaultBgpIpAddresses": [addresses[i]],
                    "customBgpIpAddresses": [],
                    "tunnelIpAddresses": [vips[i]],
                }
                for i in range(len(vips))
            ],
        }
        stored = props.get("bgpSettings")
        if isinstance(stored, dict):
            entries = stored.get("bgpPeeringAddresses")
            for index, entry in enumerate(entries if isinstance(entries, list) else []):
                if not isinstance(entry, dict):
                    continue
                target = next(
                    (
                        c
                        for c in computed["bgpPeeringAddresses"]
                        if str(c["ipconfigurationId"]).lower()
                        == str(entry.get("ipconfigurationId", "")).lower()
                    ),
                    None,
                )
                if target is None and index < len(computed["bgpPeeringAddresses"]):
                    target = computed["bgpPeeringAddresses"][index]
                if target is not None:
                    target["customBgpIpAddresses"] = list(entry.get("customBgpIpAddresses") or [])
            computed.update(
                {k: v for k, v in stored.items() if v is not None and k != "bgpPeeringAddresses"}
            )
        props["bgpSettings"] = computed
        return body

    def _strip_computed_bgp(self, gateway_id: str, props: dict[str, Any]) -> None:
        """Drop what NRP computes from a gateway's incoming ``bgpSettings`` (a GET -> PUT round
        trip sends it back): per-instance default/tunnel IPs, the computed peering address, the
        default ASN and weight. What is left is what the client chose."""
        bgp = props.get("bgpSettings")
        if not isinstance(bgp, dict):
            return
        slot = self._gateway_slots.get(gateway_id.lower())
        if slot is None:
            slot = self._gateway_slots[gateway_id.lower()] = len(self._gateway_slots)
        ours = [str(BGP_BASE + 32 * slot + 4 + i) for i in range(2)]
        if bgp.get("bgpPeeringAddress") in (ours[0], ",".join(ours)):
            bgp.pop("bgpPeeringAddress")
        if bgp.get("asn") == self.settings.azure_asn:
            bgp.pop("asn")
        if bgp.get("peerWeight") == 0:
            bgp.pop("peerWeight")
        entries = bgp.pop("bgpPeeringAddresses", None)
        kept = [
            {k: v for k, v in e.items() if k in ("ipconfigurationId", "customBgpIpAddresses")}
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and e.get("customBgpIpAddresses")
        ]
        if kept:
            bgp["bgpPeeringAddresses"] = kept
        if not {k: v for k, v in bgp.items() if v is not None}:
            props.pop("bgpSettings")

    # ------------------------------------------------------------------ preconditions
    def _preconditions(
        self, existing: Resource | None, if_match: str | None, if_none_match: str | None
    ) -> None:
        if if_match is not None and (
            existing is None or not _etag_matches(if_match, existing.etag)
        ):
            raise precondition_failed()
        if (
            if_none_match is not None
            and existing is not None
            and _etag_matches(if_none_match, existing.etag)
        ):
            raise precondition_failed()

    def _guard_pending(self, res: Resource) -> None:
        if self.ops.pending_for(res.id) is not None:
            raise another_operation_in_progress(res.id)

    # ------------------------------------------------------------------ LRO plumbing
    def _start_op(
        self,
        res: Resource,
        request: RequestSig | None,
        *,
        on_success: Callable[[], None],
        on_failure: Callable[[], None] | None = None,
        result: Callable[[], tuple[int, Any]] | None = None,
    ) -> Operation | None:
        """Start an LRO for ``res``; without a request (seeding) it completes at once."""
        return self._start_operation(
            subscription=res.subscription,
            location=res.location,
            resource_id=res.id,
            request=request,
            on_success=on_success,
            on_failure=on_failure,
            result=result,
        )

    def _start_operation(
        self,
        *,
        subscription: str,
        location: str,
        resource_id: str,
        request: RequestSig | None,
        on_success: Callable[[], None],
        on_failure: Callable[[], None] | None = None,
        result: Callable[[], tuple[int, Any]] | None = None,
        arm_scope: bool = False,
    ) -> Operation | None:
        def done(callback: Callable[[], None] | None) -> Callable[[], None]:
            def run() -> None:
                if callback:
                    callback()
                self.reevaluate()

            return run

        if request is None:
            done(on_success)()
            return None
        rule = self.faults.take(request[0], request[1], LRO_KINDS)
        extra = rule.extra_polls if rule and rule.kind is FaultKind.SLOW_LRO else 0
        failure = None
        if rule and rule.kind is FaultKind.FAIL_LRO:
            failure = OpFailure()
            failure.code = rule.code or failure.code
            failure.message = rule.message or failure.message
        return self.ops.start(
            subscription=subscription,
            location=location,
            resource_id=resource_id,
            required_polls=self.settings.lro_polls + extra,
            settle_seconds=math.inf if extra else self.settings.lro_settle_seconds,
            on_success=done(on_success),
            on_failure=done(on_failure),
            result=result,
            failure=failure,
            lost=bool(rule and rule.kind is FaultKind.LOST_OPERATION),
            arm_scope=arm_scope,
        )

    def tick(self) -> None:
        """Advance time-driven state (operations that settle without polling)."""
        self.ops.settle()

    # ------------------------------------------------------------------ writes
    def put(
        self,
        kind: Kind,
        sub: str,
        rg: str,
        name: str,
        body: Any,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        request: RequestSig | None = None,
    ) -> tuple[Resource, bool, Operation | None]:
        """Create or replace a resource (ARM PUT); returns (resource, created, op)."""
        self._scope(sub, rg)
        validate_name(name)
        self._settle_traffic()
        rid = make_id(sub, rg, kind, name)
        existing = self.resources.get(rid.lower())
        self._preconditions(existing, if_match, if_none_match)
        if existing is not None:
            self._guard_pending(existing)
        if not isinstance(body, dict):
            raise bad_request(
                "The request content was invalid and could not be deserialized.",
                "InvalidRequestContent",
            )
        location = body.get("location")
        if not isinstance(location, str) or not location.strip():
            raise ArmError(
                400, "LocationRequired", "The location property is required for this definition."
            )
        loc = normalize_location(location)
        if existing is not None and existing.location != loc:
            raise ArmError(
                400,
                "InvalidResourceLocation",
                f"The resource '{name}' already exists in location '{existing.location}' "
                f"in resource group '{rg}'. A resource with the same name cannot be created "
                f"in location '{loc}'. Please select a new resource name.",
            )
        raw_props = body.get("properties", {})
        tags = body.get("tags") or {}
        if not isinstance(raw_props, dict) or not isinstance(tags, dict):
            raise bad_request(
                "'properties' and 'tags' must be JSON objects.", "InvalidRequestContent"
            )
        props = {k: v for k, v in copy.deepcopy(raw_props).items() if k not in READ_ONLY_PROPS}
        canonical = existing.id if existing else rid
        shared_key: str | None = None
        if kind is Kind.LNG:
            validate_lng(props)
        elif kind is Kind.VNG:
            validate_vng(canonical, props)
            self._strip_computed_bgp(canonical, props)
        else:
            shared_key = validate_connection(canonical, props, self.resources, loc)

        if (
            existing is not None
            and existing.provisioning_state == "Succeeded"
            and existing.properties == props
            and existing.tags == {str(k): str(v) for k, v in tags.items()}
        ):
            self.counters.count(existing.id, "redundant")
        res = existing or Resource(id=rid, kind=kind, location=loc)
        res.properties = props
        res.tags = {str(k): str(v) for k, v in tags.items()}
        res.etag = new_etag()
        res.provisioning_state = "Updating"
        if kind is Kind.CONNECTION:
            if shared_key is not None:
                res.shared_key = shared_key
            elif res.shared_key is None:  # NRP generates a key when none is given
                res.shared_key = secrets.token_urlsafe(24)
        self.resources[res.key] = res
        if kind is Kind.CONNECTION:
            self._clear_drop(res.key, "put_connection")
        elif kind is Kind.LNG:
            for conn in self._connections_using(res.key):
                self._clear_drop(conn.key, "put_lng")
        self.reevaluate()
        if kind is Kind.CONNECTION and existing is not None:
            self._restart(res.key)

        op = self._start_op(
            res,
            request,
            on_success=lambda: self._set_state(res, "Succeeded"),
            on_failure=lambda: self._set_state(res, "Failed"),
        )
        return res, existing is None, op

    def patch_tags(
        self,
        kind: Kind,
        sub: str,
        rg: str,
        name: str,
        body: Any,
        *,
        if_match: str | None = None,
        request: RequestSig | None = None,
    ) -> tuple[Resource, Operation | None]:
        """ARM PATCH with a TagsObject; synchronous for LNGs, an LRO for the others."""
        res = self.get(kind, sub, rg, name)
        self._preconditions(res, if_match, None)
        self._guard_pending(res)
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, dict):
            raise bad_request(
                'The request body must be a TagsObject: {"tags": {...}}.', "InvalidRequestContent"
            )
        res.tags = {str(k): str(v) for k, v in tags.items()}
        res.etag = new_etag()
        if kind is Kind.LNG:
            return res, None
        res.provisioning_state = "Updating"
        op = self._start_op(
            res,
            request,
            on_success=lambda: self._set_state(res, "Succeeded"),
            on_failure=lambda: self._set_state(res, "Failed"),
        )
        return res, op

    def delete(
        self,
        kind: Kind,
        sub: str,
        rg: str,
        name: str,
        *,
        if_match: str | None = None,
        request: RequestSig | None = None,
    ) -> tuple[Resource | None, Operation | None]:
        """ARM DELETE; (None, None) when there was nothing to delete (HTTP 204)."""
        self._scope(sub, rg)
        res = self.resources.get(make_id(sub, rg, kind, name).lower())
        self._preconditions(res, if_match, None)
        if res is None:
            return None, None
        self._guard_pending(res)
        users = (
            [c.id for c in self._connections_using(res.key)] if kind is not Kind.CONNECTION else []
        )
        if users:
            label = "LocalNetworkGateway" if kind is Kind.LNG else "VirtualNetworkGateway"
            raise ArmError(
                400,
                f"InUse{label}CannotBeDeleted",
                f"{label} {res.id} cannot be deleted because it is in use by connection(s): "
                + ", ".join(users),
            )
        res.provisioning_state = "Deleting"
        self.reevaluate()
        op = self._start_op(
            res,
            request,
            on_success=lambda: self._remove(res),
            on_failure=lambda: self._set_state(res, "Failed"),
        )
        return res, op

    def get_shared_key(self, sub: str, rg: str, name: str) -> str:
        return self.get(Kind.CONNECTION, sub, rg, name).shared_key or ""

    def set_shared_key(
        self, sub: str, rg: str, name: str, body: Any, *, request: RequestSig | None = None
    ) -> tuple[Resource, Operation | None]:
        conn = self.get(Kind.CONNECTION, sub, rg, name)
        self._guard_pending(conn)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
            raise bad_request(
                "The shared key must be 1-128 printable ASCII characters.", "InvalidSharedKey"
            )
        conn.shared_key = value
        self._begin_update(conn)
        self._clear_drop(conn.key, "set_shared_key")
        self.reevaluate()
        self._restart(conn.key)
        op = self._start_op(conn, request, on_success=lambda: self._set_state(conn, "Succeeded"))
        return conn, op

    def reset_shared_key(
        self, sub: str, rg: str, name: str, body: Any, *, request: RequestSig | None = None
    ) -> tuple[Resource, Operation | None]:
        conn = self.get(Kind.CONNECTION, sub, rg, name)
        self._guard_pending(conn)
        length = body.get("keyLength") if isinstance(body, dict) else None
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 128:
            raise bad_request("keyLength must be an integer between 1 and 128.")
        alphabet = string.ascii_letters + string.digits
        conn.shared_key = "".join(secrets.choice(alphabet) for _ in range(length))
        self._begin_update(conn)
        self.reevaluate()
        self._restart(conn.key)
        op = self._start_op(
            conn,
            request,
            on_success=lambda: self._set_state(conn, "Succeeded"),
            result=lambda: (200, {"keyLength": length}),
        )
        return conn, op

    def reset_connection(
        self, sub: str, rg: str, name: str, *, request: RequestSig | None = None
    ) -> tuple[Resource, Operation | None]:
        conn = self.get(Kind.CONNECTION, sub, rg, name)
        self._guard_pending(conn)
        self._clear_drop(conn.key, "reset_connection")
        self.reevaluate()
        self._restart(conn.key)
        return conn, self._start_op(conn, request, on_success=lambda: None)

    def get_ike_sas(
        self, sub: str, rg: str, name: str, *, request: RequestSig | None = None
    ) -> tuple[Resource, Operation | None]:
        conn = self.get(Kind.CONNECTION, sub, rg, name)
        sas = self._ike_sas(conn)
        return conn, self._start_op(
            conn, request, on_success=lambda: None, result=lambda: (200, sas)
        )

    def reset_gateway(
        self,
        sub: str,
        rg: str,
        name: str,
        *,
        gateway_vip: str | None = None,
        request: RequestSig | None = None,
    ) -> tuple[Resource, Operation | None]:
        """Reboot one gateway instance: ``gateway_vip``'s, else the primary (instance 0).

        Its tunnels restart (and the drops that ``reset_gateway`` clears are cleared for them);
        whole-connection drops cleared by ``reset_gateway`` are cleared whichever instance
        reboots.
        """
        gw = self.get(Kind.VNG, sub, rg, name)
        vips = self.gateway_vips(gw)
        if gateway_vip is not None and gateway_vip not in vips:
            raise bad_request(
                f"gatewayVip '{gateway_vip}' is not a public IP address of virtual network "
                f"gateway {gw.id} (its instances have {', '.join(vips)}).",
                "InvalidGatewayVip",
            )
        instance = [vips.index(gateway_vip) if gateway_vip is not None else 0]
        self._guard_pending(gw)
        self._begin_update(gw)
        conns = [c for c in self._connections_using(gw.key) if gw.key in self._gateways_of(c)]
        for conn in conns:
            self._clear_drop(conn.key, "reset_gateway", legs=instance)
        self.reevaluate()
        for conn in conns:
            self._restart(conn.key, legs=instance)
        op = self._start_op(
            gw,
            request,
            on_success=lambda: self._set_state(gw, "Succeeded"),
            result=lambda: (200, self.render(gw)),
        )
        return gw, op

    def get_bgp_peer_status(
        self,
        sub: str,
        rg: str,
        name: str,
        *,
        peer: str | None = None,
        request: RequestSig | None = None,
    ) -> tuple[Resource, Operation | None]:
        """``POST .../getBgpPeerStatus[?peer=]``: an LRO whose result is a
        BgpPeerStatusListResult computed when the result is read."""
        gw = self.get(Kind.VNG, sub, rg, name)
        return gw, self._start_op(
            gw,
            request,
            on_success=lambda: None,
            result=lambda: (200, self.bgp_peer_status(gw, peer)),
        )

    def _begin_update(self, res: Resource) -> None:
        res.provisioning_state = "Updating"

    def _set_state(self, res: Resource, state: str) -> None:
        res.provisioning_state = state

    def _remove(self, res: Resource) -> None:
        self.resources.pop(res.key, None)
        self.tunnels.pop(res.key, None)

    # ------------------------------------------------------------------ tunnels
    def _connections_using(self, gateway_key: str) -> list[Resource]:
        props = ("virtualNetworkGateway1", "virtualNetworkGateway2", "localNetworkGateway2")
        return [
            r
            for r in self.resources.values()
            if r.kind is Kind.CONNECTION and any(r.ref(p) == gateway_key for p in props)
        ]

    def _gateways_of(self, conn: Resource) -> set[str]:
        refs = (conn.ref("virtualNetworkGateway1"), conn.ref("virtualNetworkGateway2"))
        return {r for r in refs if r}

    def lng_endpoint(self, lng: Resource) -> str | None:
        """The address Azure dials: ``fqdn`` resolved via ``dns`` if it resolves, else the IP."""
        fqdn = lng.properties.get("fqdn")
        resolved = self.dns.get(str(fqdn).lower().rstrip(".")) if fqdn else None
        ip = lng.properties.get("gatewayIpAddress")
        return resolved or (str(ip) if ip else None)

    def _device_lng_key(self, device: Device) -> str | None:
        if device.lng.startswith("/"):
            return device.lng.lower().rstrip("/")
        hits = sorted(
            r.key
            for r in self.resources.values()
            if r.kind is Kind.LNG and r.name.lower() == device.lng.lower()
        )
        return hits[0] if len(hits) == 1 else None

    def _devices_by_lng(self) -> dict[str, list[Device]]:
        """Devices grouped by the key of the LNG they sit behind (one pass over resources)."""
        by_name: dict[str, list[str]] = {}
        for res in self.resources.values():
            if res.kind is Kind.LNG:
                by_name.setdefault(res.name.lower(), []).append(res.key)
        out: dict[str, list[Device]] = {}
        for dev in self.devices.values():
            if dev.lng.startswith("/"):
                key: str | None = dev.lng.lower().rstrip("/")
            else:
                hits = by_name.get(dev.lng.lower(), [])
                key = hits[0] if len(hits) == 1 else None
            if key is not None:
                out.setdefault(key, []).append(dev)
        return out

    def _healthy(self, key: str | None) -> Resource | None:
        res = self.resources.get(key or "")
        return res if res is not None and res.provisioning_state not in DOWN_STATES else None

    def _has_peer(self, conn: Resource, devices: dict[str, list[Device]] | None = None) -> bool:
        """Whether anything answers at the far end: a device behind the LNG (IPsec) or the
        other Azure gateway (Vnet2Vnet). Without one the status is ``Unknown``."""
        ctype = conn.properties.get("connectionType")
        if ctype == "Vnet2Vnet":
            return True
        lng_key = conn.ref("localNetworkGateway2")
        if ctype != "IPsec" or lng_key is None:
            return False
        by_lng = devices if devices is not None else self._devices_by_lng()
        return bool(by_lng.get(lng_key))

    def _agrees(self, conn: Resource, devices: dict[str, list[Device]] | None = None) -> bool:
        if conn.provisioning_state in DOWN_STATES or not self._healthy(
            conn.ref("virtualNetworkGateway1")
        ):
            return False
        ctype = conn.properties.get("connectionType")
        if ctype == "Vnet2Vnet":
            return self._healthy(conn.ref("virtualNetworkGateway2")) is not None
        lng = self._healthy(conn.ref("localNetworkGateway2"))
        if ctype != "IPsec" or lng is None:
            return False
        endpoint = self.lng_endpoint(lng)
        by_lng = devices if devices is not None else self._devices_by_lng()
        return any(
            dev.public_ip == endpoint and dev.shared_key == conn.shared_key
            for dev in by_lng.get(lng.key, [])
        )

    def _leg_count(self, conn: Resource) -> int:
        return self._instances(self.resources.get(conn.ref("virtualNetworkGateway1") or ""))

    @staticmethod
    def _leg_state(tunnel: Tunnel, leg: TunnelLeg, now: float) -> str:
        if not tunnel.agreed or leg.up_at is None or leg.dropped_until is not None:
            return "NotConnected"
        return "Connecting" if now < leg.up_at else "Connected"

    def _new_tunnel(self, key: str) -> Tunnel:
        tunnel = self.tunnels.get(key)
        if tunnel is None:
            tunnel = self.tunnels[key] = Tunnel(legs=_legs(self.clock()))
        return tunnel

    def _settle_traffic(self, only: str | None = None) -> None:
        """Bring every tunnel's byte counters (and establishment times) up to now.

        Called before anything that changes whether a tunnel passes traffic, so each
        interval is accounted with the state that held during it. Tunnels are independent,
        so a reader may settle just the one it shows (``only``: a connection key).
        """
        now = self.clock()
        rates = (self.settings.ingress_bytes_per_second, self.settings.egress_bytes_per_second)
        chosen = self.tunnels.items() if only is None else [(only, self.tunnels.get(only))]
        for key, tunnel in chosen:
            if tunnel is None:
                continue
            conn = self.resources.get(key)
            active = self._leg_count(conn) if conn is not None else 0
            for index, leg in enumerate(tunnel.legs):
                start, leg.accrued_at = leg.accrued_at, now
                if index >= active or self._leg_state(tunnel, leg, now) != "Connected":
                    continue
                assert leg.up_at is not None
                if leg.established_for != leg.up_at:
                    leg.established_for = leg.up_at
                    leg.last_established = datetime.now(UTC) - timedelta(seconds=now - leg.up_at)
                if leg.idle or start is None:
                    continue
                seconds = now - max(start, leg.up_at)
                if seconds > 0:
                    leg.ingress += rates[0] * seconds
                    leg.egress += rates[1] * seconds

    def reevaluate(self) -> None:
        """Recompute which tunnels can be up; call after every state change."""
        self._settle_traffic()
        now = self.clock()
        conns = {k: r for k, r in self.resources.items() if r.kind is Kind.CONNECTION}
        for key in list(self.tunnels):
            if key not in conns:
                del self.tunnels[key]
        devices = self._devices_by_lng()
        for key, conn in conns.items():
            tunnel = self._new_tunnel(key)
            ok = tunnel.dropped_until is None and self._agrees(conn, devices)
            active = self._leg_count(conn)
            dialed = self.peer_legs.get(key)
            for index, leg in enumerate(tunnel.legs):
                if not ok or index >= active or (dialed is not None and index not in dialed):
                    leg.up_at = None
                elif leg.up_at is None:  # newly agreed (or newly active instance): dial
                    leg.up_at = now + self.settings.tunnel_delay
            tunnel.agreed = ok

    def _restart(self, conn_key: str, legs: Iterable[int] | None = None) -> None:
        tunnel = self.tunnels.get(conn_key)
        if tunnel is None or not tunnel.agreed:
            return
        self._settle_traffic()
        chosen = set(range(len(tunnel.legs)) if legs is None else legs)
        for index, leg in enumerate(tunnel.legs):
            if index in chosen and leg.up_at is not None:
                leg.up_at = self.clock() + self.settings.tunnel_delay

    def _clear_drop(self, conn_key: str, action: str, legs: Iterable[int] | None = None) -> None:
        """Lift drops ``action`` clears: the whole-connection drop, and those of ``legs``."""
        tunnel = self.tunnels.get(conn_key)
        if tunnel is None:
            return
        self._settle_traffic()
        if tunnel.dropped_until is not None and action in tunnel.dropped_until:
            tunnel.dropped_until = None
        chosen = set(range(len(tunnel.legs)) if legs is None else legs)
        for index, leg in enumerate(tunnel.legs):
            if index in chosen and leg.dropped_until is not None and action in leg.dropped_until:
                leg.dropped_until = None
                if leg.up_at is not None:  # the instance dials again
                    leg.up_at = self.clock() + self.settings.tunnel_delay

    def connection_status(self, conn: Resource | str) -> str:
        """``Connected`` / ``Connecting`` / ``NotConnected`` / ``Unknown`` for a connection.

        ``Unknown`` when nothing is at the far end (no device behind the LNG); otherwise the
        best of its tunnels (Connected while at least one tunnel of an active-active pair is).
        """
        res = conn if isinstance(conn, Resource) else self.find(conn)
        if not self._has_peer(res):
            return "Unknown"
        tunnel = self.tunnels.get(res.key)
        if tunnel is None or not tunnel.agreed:
            return "NotConnected"
        now = self.clock()
        states = {self._leg_state(tunnel, leg, now) for leg in tunnel.legs[: self._leg_count(res)]}
        for state in ("Connected", "Connecting"):
            if state in states:
                return state
        return "NotConnected"

    def _ike_sas(self, conn: Resource) -> str:
        lng = self.resources.get(conn.ref("localNetworkGateway2") or "")
        gw = self.resources.get(conn.ref("virtualNetworkGateway1") or "")
        sas: list[dict[str, Any]] = []
        if self.connection_status(conn) == "Connected":
            sas.append(
                {
                    "localEndpoint": gw.name if gw else None,
                    "remoteEndpoint": self.lng_endpoint(lng) if lng else None,
                    "ikeVersion": conn.properties.get("connectionProtocol", "IKEv2"),
                    "state": "Established",
                }
            )
        return json.dumps(sas)

    def bgp_peer_status(self, gateway: Resource | str, peer: str | None = None) -> dict[str, Any]:
        """A BgpPeerStatusListResult for a gateway: one peer per tunnel of each IPsec
        connection with ``enableBgp`` whose LNG has ``bgpSettings.bgpPeeringAddress``.

        ``state`` follows the tunnel (Connected / Connecting, else Idle); ``connectedDuration``
        is a .NET TimeSpan string; ``routesReceived`` is the LNG's prefix count while up;
        messages count one keepalive a minute plus OPEN/UPDATE.
        """
        gw = gateway if isinstance(gateway, Resource) else self.find(gateway, Kind.VNG)
        self._settle_traffic()
        now = self.clock()
        local = str(
            self._render_gateway(gw)["properties"]
            .get("bgpSettings", {})
            .get("bgpPeeringAddress", "")
        ).split(",")
        peers: list[dict[str, Any]] = []
        for conn in sorted(self._connections_using(gw.key), key=lambda r: r.key):
            if (
                conn.ref("virtualNetworkGateway1") != gw.key
                or conn.properties.get("connectionType") != "IPsec"
                or conn.properties.get("enableBgp") is not True
            ):
                continue
            lng = self.resources.get(conn.ref("localNetworkGateway2") or "")
            bgp = lng.properties.get("bgpSettings") if lng is not None else None
            if not isinstance(bgp, dict) or not bgp.get("bgpPeeringAddress"):
                continue
            neighbor = str(bgp["bgpPeeringAddress"])
            if peer is not None and peer != neighbor:
                continue
            space = lng.properties.get("localNetworkAddressSpace") if lng else None
            prefixes = space.get("addressPrefixes") if isinstance(space, dict) else None
            routes = len(prefixes) if isinstance(prefixes, list) else 0
            unknown = self.connection_status(conn) == "Unknown"
            tunnel = self.tunnels.get(conn.key)
            for index in range(self._leg_count(conn)):
                leg = tunnel.legs[index] if tunnel is not None else None
                state = "Idle"
                if tunnel is not None and leg is not None and not unknown:
                    state = BGP_STATES.get(self._leg_state(tunnel, leg, now), "Idle")
                up = now - leg.up_at if state == "Connected" and leg and leg.up_at else 0.0
                messages = int(up // BGP_KEEPALIVE_SECONDS) + 2 if state == "Connected" else 0
                peers.append(
                    {
                        "localAddress": local[min(index, len(local) - 1)],
                        "neighbor": neighbor,
                        "asn": bgp.get("asn"),
                        "state": state,
                        "connectedDuration": _timespan(up),
                        "routesReceived": routes if state == "Connected" else 0,
                        "messagesSent": messages,
                        "messagesReceived": messages,
                    }
                )
        return {"value": peers}

    # ------------------------------------------------------------------ control API (Python)
    def set_device(
        self,
        name: str,
        *,
        public_ip: str | None = None,
        shared_key: str | None = None,
        lng: str | None = None,
        fqdn: str | None = None,
    ) -> Device:
        """Create or change an on-prem device; its DynDNS name (if any) follows the IP."""
        current = self.devices.get(name.lower())
        before = (current.public_ip, current.shared_key) if current else None
        if current is None:
            if public_ip is None or shared_key is None or lng is None:
                raise ValueError("a new device needs public_ip, shared_key and lng")
            current = Device(
                name=name, public_ip=ipv4(public_ip, "public_ip"), shared_key=shared_key, lng=lng
            )
        else:
            if public_ip is not None:
                current.public_ip = ipv4(public_ip, "public_ip")
            if shared_key is not None:
                current.shared_key = shared_key
            if lng is not None:
                current.lng = lng
        if fqdn is not None:
            current.fqdn = fqdn
        self.devices[name.lower()] = current
        if current.fqdn:
            self.dns[current.fqdn.lower().rstrip(".")] = current.public_ip
        self.reevaluate()
        if before is not None and before != (current.public_ip, current.shared_key):
            # The router re-dials after an IP/key change: even a tunnel that still
            # agrees (e.g. FQDN mode with DynDNS) goes through Connecting again.
            for conn in self._connections_using(self._device_lng_key(current) or "-"):
                self._restart(conn.key)
        return current

    def set_dns(self, name: str, ip: str | None) -> None:
        """Point a sim-local DNS name at ``ip`` (None removes it)."""
        key = name.lower().rstrip(".")
        if ip is None:
            self.dns.pop(key, None)
        else:
            self.dns[key] = ipv4(ip, "ip")
        self.reevaluate()

    def drop_tunnel(
        self,
        connection: str,
        cleared_by: Iterable[str] | None = None,
        *,
        instance: int | str | None = None,
    ) -> None:
        """Force a connection down until one of ``cleared_by`` actions happens.

        With ``instance`` only that tunnel goes down: its index (0 = primary gateway
        instance, 1 = the second one of an active-active gateway), its tunnel name
        (``{connection}_{vip}``) or its gateway instance's public IP. The connection stays
        Connected on the other tunnel.
        """
        conn = self.find(connection)
        actions = frozenset(cleared_by) if cleared_by is not None else TUNNEL_ACTIONS
        unknown = actions - TUNNEL_ACTIONS
        if unknown or not actions:
            raise ValueError(f"cleared_by must be a non-empty subset of {sorted(TUNNEL_ACTIONS)}")
        legs = self._resolve_instances(conn, instance)
        self._settle_traffic()
        tunnel = self._new_tunnel(conn.key)
        if legs is None:
            tunnel.dropped_until = actions
        else:
            for index in legs:
                tunnel.legs[index].dropped_until = actions
        self.reevaluate()

    def set_peer_legs(self, connection: str, instances: Iterable[int] | None) -> None:
        """Which of a connection's tunnels its on-premises device dials: ``instances`` (0, 1:
        the gateway instances whose public IP the device uses as its peer), or every one
        (``None``, the default). A tunnel the device stops dialing goes NotConnected; one it
        starts dialing is Connecting, then Connected (if it agrees)."""
        conn = self.find(connection)
        if instances is None:
            self.peer_legs.pop(conn.key, None)
        else:
            chosen = frozenset(instances)
            if any(isinstance(i, bool) or not 0 <= i < 2 for i in chosen):
                raise ValueError("instances are gateway instance indexes: 0 or 1")
            self.peer_legs[conn.key] = chosen
        self.reevaluate()

    def set_idle(
        self, connection: str, idle: bool = True, *, instance: int | str | None = None
    ) -> None:
        """Mark a connection's tunnels (or one, see :meth:`drop_tunnel`) idle: they stay
        Connected but their byte counters stop growing. ``idle=False`` resumes traffic."""
        conn = self.find(connection)
        legs = self._resolve_instances(conn, instance)
        self._settle_traffic()
        tunnel = self._new_tunnel(conn.key)
        for index in range(len(tunnel.legs)) if legs is None else legs:
            tunnel.legs[index].idle = idle

    def _resolve_instances(self, conn: Resource, instance: int | str | None) -> list[int] | None:
        if instance is None:
            return None
        vips = self._connection_vips(conn)
        if isinstance(instance, bool):
            raise ValueError("instance must be an index, a tunnel name or a gateway VIP")
        if isinstance(instance, int):
            index = instance
        elif instance.isdigit():
            index = int(instance)
        elif instance in vips:
            index = vips.index(instance)
        elif instance in [f"{conn.name}_{vip}" for vip in vips]:
            index = [f"{conn.name}_{vip}" for vip in vips].index(instance)
        else:
            raise ValueError(f"{instance!r} is none of {conn.name}'s tunnels or VIPs {vips}")
        if not 0 <= index < len(vips):
            raise ValueError(
                f"{conn.name} has {len(vips)} tunnel(s) (its gateway is "
                f"{'active-active' if len(vips) == 2 else 'active-standby'}); no instance {index}"
            )
        return [index]

    def tunnel_info(self, connection: Resource | str) -> dict[str, Any]:
        """What the world knows of a connection's tunnels (for tests and ``/_sim/tunnels``)."""
        conn = connection if isinstance(connection, Resource) else self.find(connection)
        self._settle_traffic(conn.key)
        status = self.connection_status(conn)
        tunnel = self.tunnels.get(conn.key)
        now = self.clock()
        legs: list[dict[str, Any]] = []
        for index, vip in enumerate(self._connection_vips(conn)):
            leg = tunnel.legs[index] if tunnel is not None else TunnelLeg()
            legs.append(
                {
                    "instance": index,
                    "tunnel": f"{conn.name}_{vip}",
                    "vip": vip,
                    "connectionStatus": "Unknown"
                    if status == "Unknown" or tunnel is None
                    else self._leg_state(tunnel, leg, now),
                    "idle": leg.idle,
                    "dialed": index in self.peer_legs.get(conn.key, frozenset({index})),
                    "dropped": sorted(leg.dropped_until) if leg.dropped_until else None,
                    "ingressBytesTransferred": int(leg.ingress),
                    "egressBytesTransferred": int(leg.egress),
                }
            )
        dropped = tunnel.dropped_until if tunnel is not None else None
        return {
            "id": conn.id,
            "connectionStatus": status,
            "dropped": sorted(dropped) if dropped else None,
            "tunnels": legs,
        }

    def set_endpoint_health(
        self, endpoint: str, healthy: bool | None = None, *, stopped: bool | None = None
    ) -> TmEndpoint:
        """What Traffic Manager's probes of an endpoint find (``profile/endpoint``, a unique
        name or the id): Online while healthy, Degraded while not; ``stopped`` shows Stopped."""
        return self.traffic_manager.set_health(endpoint, healthy, stopped=stopped)

    def endpoint_monitor_status(self, endpoint: str) -> str:
        """An endpoint's ``endpointMonitorStatus`` now (see :mod:`bot.sim.trafficmanager`)."""
        tm = self.traffic_manager
        return tm.monitor_status(tm.find_endpoint(endpoint))

    def add_fault(self, spec: FaultSpec | None = None, **fields: Any) -> FaultRule:
        """Arm a fault rule (see :mod:`bot.sim.faults`)."""
        return self.faults.add(spec or FaultSpec(**fields))

    def configure(self, **changes: Any) -> SimSettings:
        self._settle_traffic()  # traffic so far at the old rates
        for key, value in changes.items():
            setattr(self.settings, key, value)
        return self.settings

    def dump(self) -> dict[str, Any]:
        """Full state, shared keys included (it is a simulator)."""
        self.tick()
        resources = []
        for res in sorted(self.resources.values(), key=lambda r: r.key):
            body = self.render(res)
            if res.kind is Kind.CONNECTION:
                body["sim"] = {"sharedKey": res.shared_key}
            resources.append(body)
        return {
            "settings": self.settings.model_dump(),
            "resourceGroups": [asdict(g) for g in self.resource_groups.values()],
            "resources": resources,
            "devices": [asdict(d) for d in self.devices.values()],
            "dns": dict(self.dns),
            "tunnels": {
                r.id: self.connection_status(r)
                for r in self.resources.values()
                if r.kind is Kind.CONNECTION
            },
            "trafficManager": [
                self.traffic_manager.render_profile(p)
                | {"sim": [self.traffic_manager.endpoint_view(e) for e in p.endpoints.values()]}
                for p in sorted(self.traffic_manager.profiles.values(), key=lambda p: p.key)
            ],
            "faults": [r.model_dump() for r in self.faults.rules()],
            "operations": self.ops.snapshot(),
            "counters": self.counters.snapshot(),
        }

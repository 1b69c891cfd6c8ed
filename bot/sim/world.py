"""The simulated world: Azure resources, the on-premises devices behind them, and tunnels.

Why it exists: tunnelwarden must be tested against something that *behaves* like
Azure when a site's public IP changes. A connection here is ``Connected`` only
while its local network gateway (LNG) points at the device's real public IP
(``fqdn`` resolved through the sim-local ``dns`` table, falling back to
``gatewayIpAddress`` when the name does not resolve) **and** the connection's shared key equals the
device's key. When a change makes them agree the connection is ``Connecting``
for ``settings.tunnel_delay`` seconds, then ``Connected``; when they disagree it
is ``NotConnected``. ``Failed``/``Deleting`` provisioning states on the
connection or either gateway also keep a tunnel down. Vnet2Vnet connections are
connected whenever both gateways exist. Traffic counters stay 0.

A tunnel can be dropped on purpose (:meth:`World.drop_tunnel`); it stays down
until one of the actions in ``cleared_by`` happens (default: any of
``reset_connection``, ``put_connection``, ``set_shared_key``, ``put_lng``,
``reset_gateway``), which lets tests model "only a gateway reset helps".

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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.sim.errors import (
    ArmError,
    another_operation_in_progress,
    bad_request,
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
)
from bot.sim.seed import SeedFile, load_seed
from bot.sim.settings import SimSettings
from bot.sim.validation import ipv4, validate_connection, validate_lng, validate_vng

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

RequestSig = tuple[str, str]  # (HTTP method, URL path) of the request starting an LRO


@dataclass
class ResourceGroup:
    subscription: str
    name: str
    location: str


@dataclass
class Device:
    """An on-premises VPN router (a "site") with its real public IP and PSK."""

    name: str
    public_ip: str
    shared_key: str
    lng: str  # LNG name or full id it sits behind
    fqdn: str | None = None  # DynDNS name kept pointing at public_ip


@dataclass
class Tunnel:
    agreed: bool = False
    up_at: float | None = None
    dropped_until: frozenset[str] | None = None
    established: datetime | None = None


def _etag_matches(header: str, etag: str) -> bool:
    def bare(tag: str) -> str:
        tag = tag.strip()
        return tag[2:] if tag.startswith("W/") else tag

    return any(t.strip() == "*" or bare(t) == bare(etag) for t in header.split(","))


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

    # ------------------------------------------------------------------ rendering
    def render(self, res: Resource) -> dict[str, Any]:
        if res.kind is not Kind.CONNECTION:
            return res.render()
        status = self.connection_status(res)
        extra: dict[str, Any] = {
            "connectionStatus": status,
            "ingressBytesTransferred": 0,
            "egressBytesTransferred": 0,
        }
        lng = self.resources.get(res.ref("localNetworkGateway2") or "")
        endpoint = self.lng_endpoint(lng) if lng else None
        if endpoint:
            tunnel: dict[str, Any] = {
                "tunnel": f"{lng.name if lng else ''}_{endpoint}",
                "connectionStatus": status,
                "ingressBytesTransferred": 0,
                "egressBytesTransferred": 0,
            }
            established = self.tunnels.get(res.key, Tunnel()).established
            if status == "Connected" and established:
                tunnel["lastConnectionEstablishedUtcTime"] = established.strftime(
                    "%m/%d/%Y %I:%M:%S %p"
                )
            extra["tunnelConnectionStatus"] = [tunnel]
        return res.render(extra)

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
            subscription=res.subscription,
            location=res.location,
            resource_id=res.id,
            required_polls=self.settings.lro_polls + extra,
            settle_seconds=math.inf if extra else self.settings.lro_settle_seconds,
            on_success=done(on_success),
            on_failure=done(on_failure),
            result=result,
            failure=failure,
            lost=bool(rule and rule.kind is FaultKind.LOST_OPERATION),
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
        else:
            shared_key = validate_connection(canonical, props, self.resources)

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
        self, sub: str, rg: str, name: str, *, request: RequestSig | None = None
    ) -> tuple[Resource, Operation | None]:
        gw = self.get(Kind.VNG, sub, rg, name)
        self._guard_pending(gw)
        self._begin_update(gw)
        conns = self._connections_using(gw.key)
        for conn in conns:
            self._clear_drop(conn.key, "reset_gateway")
        self.reevaluate()
        for conn in conns:
            self._restart(conn.key)
        op = self._start_op(
            gw,
            request,
            on_success=lambda: self._set_state(gw, "Succeeded"),
            result=lambda: (200, self.render(gw)),
        )
        return gw, op

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

    def _healthy(self, key: str | None) -> Resource | None:
        res = self.resources.get(key or "")
        return res if res is not None and res.provisioning_state not in DOWN_STATES else None

    def _agrees(self, conn: Resource) -> bool:
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
        return any(
            self._device_lng_key(dev) == lng.key
            and dev.public_ip == endpoint
            and dev.shared_key == conn.shared_key
            for dev in self.devices.values()
        )

    def reevaluate(self) -> None:
        """Recompute which tunnels can be up; call after every state change."""
        now = self.clock()
        conns = {k: r for k, r in self.resources.items() if r.kind is Kind.CONNECTION}
        for key in list(self.tunnels):
            if key not in conns:
                del self.tunnels[key]
        for key, conn in conns.items():
            tunnel = self.tunnels.setdefault(key, Tunnel())
            ok = tunnel.dropped_until is None and self._agrees(conn)
            if ok and not tunnel.agreed:
                tunnel.up_at = now + self.settings.tunnel_delay
            elif not ok:
                tunnel.up_at = None
                tunnel.established = None
            tunnel.agreed = ok

    def _restart(self, conn_key: str) -> None:
        tunnel = self.tunnels.get(conn_key)
        if tunnel is not None and tunnel.agreed:
            tunnel.up_at = self.clock() + self.settings.tunnel_delay
            tunnel.established = None

    def _clear_drop(self, conn_key: str, action: str) -> None:
        tunnel = self.tunnels.get(conn_key)
        if (
            tunnel is not None
            and tunnel.dropped_until is not None
            and action in tunnel.dropped_until
        ):
            tunnel.dropped_until = None

    def connection_status(self, conn: Resource | str) -> str:
        """``Connected`` / ``Connecting`` / ``NotConnected`` for a connection, id or name."""
        res = conn if isinstance(conn, Resource) else self.find(conn)
        tunnel = self.tunnels.get(res.key)
        if tunnel is None or not tunnel.agreed or tunnel.up_at is None:
            return "NotConnected"
        if self.clock() < tunnel.up_at:
            return "Connecting"
        if tunnel.established is None:
            tunnel.established = datetime.now(UTC) - timedelta(seconds=self.clock() - tunnel.up_at)
        return "Connected"

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

    def drop_tunnel(self, connection: str, cleared_by: Iterable[str] | None = None) -> None:
        """Force a connection down until one of ``cleared_by`` actions happens."""
        conn = self.find(connection)
        actions = frozenset(cleared_by) if cleared_by is not None else TUNNEL_ACTIONS
        unknown = actions - TUNNEL_ACTIONS
        if unknown or not actions:
            raise ValueError(f"cleared_by must be a non-empty subset of {sorted(TUNNEL_ACTIONS)}")
        self.tunnels.setdefault(conn.key, Tunnel()).dropped_until = actions
        self.reevaluate()

    def add_fault(self, spec: FaultSpec | None = None, **fields: Any) -> FaultRule:
        """Arm a fault rule (see :mod:`bot.sim.faults`)."""
        return self.faults.add(spec or FaultSpec(**fields))

    def configure(self, **changes: Any) -> SimSettings:
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
            "faults": [r.model_dump() for r in self.faults.rules()],
            "operations": self.ops.snapshot(),
            "counters": self.counters.snapshot(),
        }

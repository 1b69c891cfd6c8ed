"""Azure Traffic Manager in the simulated world: profiles, their endpoints, and endpoint health.

Served by :mod:`bot.sim.arm` under
``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network``:

- ``trafficmanagerprofiles`` GET (list; also ``/subscriptions/{sub}/providers/Microsoft.Network/
  trafficmanagerprofiles``)
- ``trafficmanagerprofiles/{p}`` GET, PUT (201/200), PATCH (200), DELETE (200 ``{}`` / 204)
- ``trafficmanagerprofiles/{p}/{AzureEndpoints|ExternalEndpoints|NestedEndpoints}/{e}`` GET, PUT
  (201/200), PATCH (200), DELETE (200 ``{}`` / 204)

What follows the REST spec (``trafficmanager.json``, 2015-11-01 … 2026-09-01) and its examples:
every write is **synchronous** (no long-running operation), there is **no ETag** on profiles or
endpoints (the spec has none, so ``If-Match`` is not evaluated), PATCH merges the given
properties into the resource (``Endpoint-PATCH-External-Target``: only ``target`` sent, the
rest kept), a profile's GET carries its endpoints inline, ``location`` is ``global``, ids use
``trafficManagerProfiles/{p}/externalEndpoints/{e}`` and types
``Microsoft.Network/trafficManagerProfiles/externalEndpoints``. A new endpoint gets
``weight`` 1 and the lowest free ``priority`` (the examples answer ``priority: 1, weight: 1``
for a body without them). Enum values (``endpointStatus``, ``profileStatus``,
``trafficRoutingMethod``, monitor ``protocol``) match case-insensitively and are stored in
canonical spelling.

**Health.** ``endpointMonitorStatus`` and ``profileMonitorStatus`` are computed when read, as the
tables in Microsoft's "Traffic Manager endpoint monitoring" article give them:

- endpoint ``Disabled`` when its ``endpointStatus`` is Disabled; ``Inactive`` when its profile is
  disabled; ``Stopped`` when the sim says its target is stopped; ``CheckingEndpoint`` for
  ``settings.tm_probe_delay`` seconds after it was created or enabled, its target changed or
  its profile enabled; then ``Online`` while the sim's per-endpoint *healthy* control is true,
  ``Degraded`` while it is false (the control: :meth:`TrafficManager.set_health`,
  ``POST /_sim/traffic-manager/health``);
- profile ``Disabled`` when disabled; else ``Degraded`` if any endpoint is, else ``Online`` if
  any is, else ``CheckingEndpoints`` if any is checking, else ``Inactive``.

Not modelled / not verified against Azure: probing intervals and tolerated failures (a health
change shows at once, after the first probe); nested endpoints' status derived from their child
profile (they follow the health control like the others); DNS answers; the 400 codes and
messages for invalid bodies (``BadRequest`` with our wording), the 404 text for a missing
endpoint, and whether a profile PUT without ``endpoints`` removes them (we follow ARM's PUT
semantics: the body is the whole resource).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.sim.errors import RESOURCE_NOT_FOUND_HELP, ArmError, resource_not_found
from bot.sim.settings import SimSettings

PROFILES = "trafficManagerProfiles"
PROFILE_TYPE = f"Microsoft.Network/{PROFILES}"
DNS_SUFFIX = "trafficmanager.net"
# Documented defaults of the monitoring settings (probing interval, timeout, tolerated failures).
MONITOR_DEFAULTS: dict[str, Any] = {
    "intervalInSeconds": 30,
    "timeoutInSeconds": 10,
    "toleratedNumberOfFailures": 3,
}


def _enum(*values: str) -> dict[str, str]:
    return {v.lower(): v for v in values}


ENDPOINT_TYPES = _enum("AzureEndpoints", "ExternalEndpoints", "NestedEndpoints")
STATUSES = _enum("Enabled", "Disabled")
ROUTING_METHODS = _enum("Performance", "Priority", "Weighted", "Geographic", "MultiValue", "Subnet")
PROTOCOLS = _enum("HTTP", "HTTPS", "TCP")


def endpoint_segment(endpoint_type: str) -> str:
    """``ExternalEndpoints`` -> ``externalEndpoints`` (as ids and types spell it)."""
    canonical = ENDPOINT_TYPES.get(endpoint_type.lower(), endpoint_type)
    return canonical[:1].lower() + canonical[1:]


def profile_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Network/{PROFILES}/{name}"
    )


def endpoint_id(
    subscription: str, resource_group: str, profile: str, endpoint_type: str, name: str
) -> str:
    """The id of an endpoint, also its request-counter key (case does not matter there)."""
    parent = profile_id(subscription, resource_group, profile)
    return f"{parent}/{endpoint_segment(endpoint_type)}/{name}"


def profiles_collection_id(subscription: str, resource_group: str | None = None) -> str:
    """The path of a profile collection: the counter key of its LIST requests."""
    if resource_group is None:
        return f"/subscriptions/{subscription}/providers/Microsoft.Network/{PROFILES}"
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Network/{PROFILES}"
    )


def _bad(message: str) -> ArmError:
    return ArmError(400, "BadRequest", message)


def _canonical(value: Any, allowed: dict[str, str], what: str) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        choices = ", ".join(allowed.values())
        raise _bad(f"The value {value!r} of '{what}' is invalid; allowed values: {choices}.")
    return allowed[value.lower()]


def _bounded_int(value: Any, what: str, low: int = 1, high: int = 1000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"'{what}' must be an integer from {low} to {high}, not {value!r}.")
    return value


@dataclass
class TmEndpoint:
    profile_id: str
    type: str  # canonical: AzureEndpoints | ExternalEndpoints | NestedEndpoints
    name: str
    properties: dict[str, Any] = field(default_factory=dict)  # writable properties only
    healthy: bool = True  # the sim's control: what the probes would find
    stopped: bool = False  # the target is stopped (App Service) / the child profile inactive
    checking_until: float = -math.inf  # clock time of the first probe result

    @property
    def id(self) -> str:
        return f"{self.profile_id}/{endpoint_segment(self.type)}/{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.type.lower(), self.name.lower())

    @property
    def arm_type(self) -> str:
        return f"{PROFILE_TYPE}/{endpoint_segment(self.type)}"

    @property
    def enabled(self) -> bool:
        return self.properties.get("endpointStatus") == "Enabled"


@dataclass
class TmProfile:
    subscription: str
    resource_group: str
    name: str
    properties: dict[str, Any] = field(default_factory=dict)  # without endpoints and computed
    tags: dict[str, str] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], TmEndpoint] = field(default_factory=dict)
    location: str = "global"

    @property
    def id(self) -> str:
        return profile_id(self.subscription, self.resource_group, self.name)

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def enabled(self) -> bool:
        return self.properties.get("profileStatus") == "Enabled"


class TrafficManager:
    """Every Traffic Manager profile of the simulated world, and what their probes would see."""

    def __init__(
        self,
        clock: Callable[[], float],
        settings: Callable[[], SimSettings],
        scope: Callable[[str, str | None], None],
    ) -> None:
        self._clock = clock
        self._settings = settings
        self._scope = scope
        self.profiles: dict[str, TmProfile] = {}

    # ------------------------------------------------------------------ lookup
    def get_profile(self, sub: str, rg: str, name: str) -> TmProfile:
        self._scope(sub, rg)
        found = self.profiles.get(profile_id(sub, rg, name).lower())
        if found is None:
            raise resource_not_found(f"Microsoft.Network/{PROFILES.lower()}", name, rg)
        return found

    def list_profiles(self, sub: str, rg: str | None = None) -> list[TmProfile]:
        self._scope(sub, rg)
        prefix = (profile_id(sub, rg, "") if rg is not None else f"/subscriptions/{sub}/").lower()
        return sorted(
            (p for k, p in self.profiles.items() if k.startswith(prefix)), key=lambda p: p.key
        )

    def get_endpoint(
        self, sub: str, rg: str, profile: str, endpoint_type: str, name: str
    ) -> TmEndpoint:
        prof = self.get_profile(sub, rg, profile)
        etype = _canonical(endpoint_type, ENDPOINT_TYPES, "endpointType")
        found = prof.endpoints.get((etype.lower(), name.lower()))
        if found is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Network/{PROFILES.lower()}/{prof.name}/{etype}/{name}' "
                f"under resource group '{prof.resource_group}' was not found. "
                f"{RESOURCE_NOT_FOUND_HELP}",
            )
        return found

    def endpoints(self) -> list[TmEndpoint]:
        return [e for p in self.profiles.values() for e in p.endpoints.values()]

    def find_endpoint(self, ref: str) -> TmEndpoint:
        """An endpoint by full id, ``profile/endpoint`` or unique name (control API)."""
        wanted = ref.lower().rstrip("/")
        if wanted.startswith("/"):
            hits = [e for e in self.endpoints() if e.id.lower() == wanted]
        elif "/" in wanted:
            prof, _, name = wanted.partition("/")
            hits = [
                e
                for p in self.profiles.values()
                if p.name.lower() == prof
                for e in p.endpoints.values()
                if e.name.lower() == name
            ]
        else:
            hits = [e for e in self.endpoints() if e.name.lower() == wanted]
        if len(hits) != 1:
            raise KeyError(
                f"{len(hits)} Traffic Manager endpoints match {ref!r}; "
                "use profile/endpoint or the full id"
            )
        return hits[0]

    def profile_of(self, endpoint: TmEndpoint) -> TmProfile:
        return self.profiles[endpoint.profile_id.lower()]

    # ------------------------------------------------------------------ health
    def monitor_status(self, endpoint: TmEndpoint) -> str:
        """The endpoint's ``endpointMonitorStatus`` now (see the module docstring)."""
        if not endpoint.enabled:
            return "Disabled"
        if not self.profile_of(endpoint).enabled:
            return "Inactive"
        if endpoint.stopped:
            return "Stopped"
        if self._clock() < endpoint.checking_until:
            return "CheckingEndpoint"
        return "Online" if endpoint.healthy else "Degraded"

    def profile_monitor_status(self, profile: TmProfile) -> str:
        if not profile.enabled:
            return "Disabled"
        seen = {self.monitor_status(e) for e in profile.endpoints.values()}
        for status, aggregate in (
            ("Degraded", "Degraded"),
            ("Online", "Online"),
            ("CheckingEndpoint", "CheckingEndpoints"),
        ):
            if status in seen:
                return aggregate
        return "Inactive"

    def set_health(
        self, ref: str, healthy: bool | None = None, *, stopped: bool | None = None
    ) -> TmEndpoint:
        """The sim's control: what Traffic Manager's probes of ``ref`` would find."""
        endpoint = self.find_endpoint(ref)
        if healthy is not None:
            endpoint.healthy = healthy
        if stopped is not None:
            endpoint.stopped = stopped
        return endpoint

    def _probe_again(self, endpoint: TmEndpoint) -> None:
        endpoint.checking_until = self._clock() + self._settings().tm_probe_delay

    # ------------------------------------------------------------------ rendering
    def render_endpoint(self, endpoint: TmEndpoint) -> dict[str, Any]:
        props = copy.deepcopy(endpoint.properties)
        props["endpointMonitorStatus"] = self.monitor_status(endpoint)
        return {
            "name": endpoint.name,
            "type": endpoint.arm_type,
            "id": endpoint.id,
            "properties": props,
        }

    def render_profile(self, profile: TmProfile) -> dict[str, Any]:
        props = copy.deepcopy(profile.properties)
        dns = props.get("dnsConfig")
        if isinstance(dns, dict) and dns.get("relativeName"):
            dns["fqdn"] = f"{str(dns['relativeName']).lower()}.{DNS_SUFFIX}"
        monitor = props.setdefault("monitorConfig", {})
        monitor["profileMonitorStatus"] = self.profile_monitor_status(profile)
        props["endpoints"] = [self.render_endpoint(e) for e in profile.endpoints.values()]
        return {
            "id": profile.id,
            "name": profile.name,
            "type": PROFILE_TYPE,
            "location": profile.location,
            "tags": dict(profile.tags),
            "properties": props,
        }

    def snapshot(self) -> list[dict[str, Any]]:
        """What ``/_sim/traffic-manager`` shows: profiles, endpoints, statuses and controls."""
        out = []
        for profile in sorted(self.profiles.values(), key=lambda p: p.key):
            out.append(
                {
                    "id": profile.id,
                    "profileStatus": profile.properties.get("profileStatus"),
                    "profileMonitorStatus": self.profile_monitor_status(profile),
                    "endpoints": [self.endpoint_view(e) for e in profile.endpoints.values()],
                }
            )
        return out

    def endpoint_view(self, endpoint: TmEndpoint) -> dict[str, Any]:
        return {
            "id": endpoint.id,
            "endpointStatus": endpoint.properties.get("endpointStatus"),
            "endpointMonitorStatus": self.monitor_status(endpoint),
            "healthy": endpoint.healthy,
            "stopped": endpoint.stopped,
        }

    # ------------------------------------------------------------------ validation
    def _endpoint_properties(
        self, profile: TmProfile, endpoint_type: str, name: str, raw: Any
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise _bad("'properties' must be a JSON object.")
        props = {
            k: copy.deepcopy(v)
            for k, v in raw.items()
            if k != "endpointMonitorStatus" and v is not None
        }
        props["endpointStatus"] = _canonical(
            props.get("endpointStatus", "Enabled"), STATUSES, "endpointStatus"
        )
        props["weight"] = _bounded_int(props.get("weight", 1), "weight")
        if "priority" in props:
            props["priority"] = _bounded_int(props["priority"], "priority")
        else:
            taken = {
                e.properties.get("priority")
                for e in profile.endpoints.values()
                if e.key != (endpoint_type.lower(), name.lower())
            }
            props["priority"] = next(i for i in range(1, 1002) if i not in taken)
        if endpoint_type == "ExternalEndpoints":
            if not isinstance(props.get("target"), str) or not props["target"]:
                raise _bad(f"Endpoint '{name}' of type ExternalEndpoints needs a 'target'.")
        elif not isinstance(props.get("targetResourceId"), str) or not props["targetResourceId"]:
            raise _bad(f"Endpoint '{name}' of type {endpoint_type} needs a 'targetResourceId'.")
        return props

    def _profile_properties(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise _bad("'properties' must be a JSON object.")
        props = {k: copy.deepcopy(v) for k, v in raw.items() if k != "endpoints" and v is not None}
        props["profileStatus"] = _canonical(
            props.get("profileStatus", "Enabled"), STATUSES, "profileStatus"
        )
        props["trafficRoutingMethod"] = _canonical(
            props.get("trafficRoutingMethod"), ROUTING_METHODS, "trafficRoutingMethod"
        )
        dns = props.get("dnsConfig")
        if not isinstance(dns, dict) or not isinstance(dns.get("relativeName"), str):
            raise _bad("'dnsConfig.relativeName' is required.")
        dns.pop("fqdn", None)  # computed
        monitor = props.get("monitorConfig") or {}
        if not isinstance(monitor, dict):
            raise _bad("'monitorConfig' must be a JSON object.")
        monitor.pop("profileMonitorStatus", None)  # computed
        if "protocol" in monitor:
            monitor["protocol"] = _canonical(
                monitor["protocol"], PROTOCOLS, "monitorConfig.protocol"
            )
        props["monitorConfig"] = {**MONITOR_DEFAULTS, **monitor}
        return props

    def _endpoint_list(self, profile: TmProfile, raw: Any) -> dict[tuple[str, str], TmEndpoint]:
        """Endpoints given inline in a profile body (name, type, properties each)."""
        if not isinstance(raw, list):
            raise _bad("'endpoints' must be a JSON array.")
        fresh = TmProfile(profile.subscription, profile.resource_group, profile.name)
        fresh.properties = profile.properties
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise _bad("Every endpoint needs a 'name'.")
            etype = _canonical(
                str(item.get("type") or "").rsplit("/", 1)[-1], ENDPOINT_TYPES, "type"
            )
            name = str(item["name"])
            if (etype.lower(), name.lower()) in fresh.endpoints:
                raise _bad(f"Endpoint '{name}' is given twice.")
            props = self._endpoint_properties(fresh, etype, name, item.get("properties") or {})
            endpoint = TmEndpoint(profile.id, etype, name, props)
            fresh.endpoints[endpoint.key] = endpoint
        return fresh.endpoints

    # ------------------------------------------------------------------ writes
    def _adopt(
        self, profile: TmProfile, endpoints: dict[tuple[str, str], TmEndpoint], was_enabled: bool
    ) -> None:
        """Install ``endpoints`` in ``profile``: an endpoint that was there keeps its health
        controls; a new, newly enabled or re-targeted one (or all of them when the profile was
        just enabled) is probed anew."""
        for key, endpoint in endpoints.items():
            old = profile.endpoints.get(key)
            if old is not None:
                endpoint.name = old.name
                endpoint.healthy, endpoint.stopped = old.healthy, old.stopped
                endpoint.checking_until = old.checking_until
            self._after_change(profile, endpoint, old, was_enabled)
        profile.endpoints = endpoints

    def _after_change(
        self,
        profile: TmProfile,
        endpoint: TmEndpoint,
        old: TmEndpoint | None,
        profile_was_enabled: bool,
    ) -> None:
        if not endpoint.enabled or not profile.enabled:
            return
        retargeted = old is not None and any(
            old.properties.get(k) != endpoint.properties.get(k)
            for k in ("target", "targetResourceId")
        )
        if old is None or not old.enabled or retargeted or not profile_was_enabled:
            self._probe_again(endpoint)

    def put_profile(self, sub: str, rg: str, name: str, body: Any) -> tuple[TmProfile, bool, bool]:
        """Create or replace a profile (endpoints inline); (profile, created, changed)."""
        self._scope(sub, rg)
        if not isinstance(body, dict):
            raise _bad("The request content must be a JSON object.")
        location = body.get("location")
        if not isinstance(location, str) or not location.strip():
            raise ArmError(
                400, "LocationRequired", "The location property is required for this definition."
            )
        if location.replace(" ", "").lower() != "global":
            raise ArmError(
                400,
                "LocationNotAvailableForResourceType",
                f"The provided location '{location}' is not available for resource type "
                f"'{PROFILE_TYPE}'. List of available regions for the resource type is 'global'.",
            )
        tags = body.get("tags") or {}
        if not isinstance(tags, dict):
            raise _bad("'tags' must be a JSON object.")
        raw = body.get("properties") or {}
        existing = self.profiles.get(profile_id(sub, rg, name).lower())
        profile = TmProfile(sub, existing.resource_group if existing else rg, name)
        if existing is not None:
            profile.name = existing.name
        profile.properties = self._profile_properties(raw)
        profile.tags = {str(k): str(v) for k, v in tags.items()}
        endpoints = self._endpoint_list(profile, raw.get("endpoints") or [])
        before = self.render_profile(existing) if existing is not None else None
        if existing is not None:
            was_enabled = existing.enabled
            profile.endpoints = existing.endpoints
        else:
            was_enabled = True
        self._adopt(profile, endpoints, was_enabled)
        self.profiles[profile.key] = profile
        return profile, existing is None, before != self.render_profile(profile)

    def patch_profile(self, sub: str, rg: str, name: str, body: Any) -> tuple[TmProfile, bool]:
        """Merge ``body`` into a profile: tags replaced when given, properties key by key
        (``dnsConfig``/``monitorConfig`` field by field, ``endpoints`` as a whole)."""
        profile = self.get_profile(sub, rg, name)
        if not isinstance(body, dict):
            raise _bad("The request content must be a JSON object.")
        before = self.render_profile(profile)
        raw = body.get("properties") or {}
        if not isinstance(raw, dict):
            raise _bad("'properties' must be a JSON object.")
        merged = copy.deepcopy(profile.properties)
        for key, value in raw.items():
            if key == "endpoints" or value is None:
                continue
            if key in ("dnsConfig", "monitorConfig") and isinstance(value, dict):
                merged[key] = {**(merged.get(key) or {}), **value}
            else:
                merged[key] = value
        props = self._profile_properties(merged)
        tags = body.get("tags")
        if tags is not None and not isinstance(tags, dict):
            raise _bad("'tags' must be a JSON object.")
        was_enabled = profile.enabled
        endpoints = None
        if raw.get("endpoints") is not None:
            staged = TmProfile(sub, profile.resource_group, profile.name, props)
            endpoints = self._endpoint_list(staged, raw["endpoints"])
        profile.properties = props
        if tags is not None:
            profile.tags = {str(k): str(v) for k, v in tags.items()}
        if endpoints is not None:
            self._adopt(profile, endpoints, was_enabled)
        elif not was_enabled and profile.enabled:
            for endpoint in profile.endpoints.values():
                self._after_change(profile, endpoint, endpoint, False)
        return profile, before != self.render_profile(profile)

    def delete_profile(self, sub: str, rg: str, name: str) -> bool:
        self._scope(sub, rg)
        return self.profiles.pop(profile_id(sub, rg, name).lower(), None) is not None

    def put_endpoint(
        self, sub: str, rg: str, profile_name: str, endpoint_type: str, name: str, body: Any
    ) -> tuple[TmEndpoint, bool, bool]:
        """Create or replace one endpoint; (endpoint, created, changed)."""
        profile = self.get_profile(sub, rg, profile_name)
        etype = _canonical(endpoint_type, ENDPOINT_TYPES, "endpointType")
        if not isinstance(body, dict):
            raise _bad("The request content must be a JSON object.")
        props = self._endpoint_properties(profile, etype, name, body.get("properties") or {})
        old = profile.endpoints.get((etype.lower(), name.lower()))
        endpoint = TmEndpoint(profile.id, etype, old.name if old else name, props)
        if old is not None:
            endpoint.healthy, endpoint.stopped = old.healthy, old.stopped
            endpoint.checking_until = old.checking_until
        self._after_change(profile, endpoint, old, profile.enabled)
        profile.endpoints[endpoint.key] = endpoint
        changed = old is None or old.properties != endpoint.properties
        return endpoint, old is None, changed

    def patch_endpoint(
        self, sub: str, rg: str, profile_name: str, endpoint_type: str, name: str, body: Any
    ) -> tuple[TmEndpoint, bool]:
        """Merge the given properties into an endpoint; (endpoint, changed)."""
        endpoint = self.get_endpoint(sub, rg, profile_name, endpoint_type, name)
        profile = self.profile_of(endpoint)
        if not isinstance(body, dict):
            raise _bad("The request content must be a JSON object.")
        raw = body.get("properties") or {}
        if not isinstance(raw, dict):
            raise _bad("'properties' must be a JSON object.")
        merged = {**endpoint.properties, **{k: v for k, v in raw.items() if v is not None}}
        props = self._endpoint_properties(profile, endpoint.type, endpoint.name, merged)
        old = TmEndpoint(endpoint.profile_id, endpoint.type, endpoint.name, endpoint.properties)
        endpoint.properties = props
        self._after_change(profile, endpoint, old, profile.enabled)
        return endpoint, old.properties != props

    def delete_endpoint(
        self, sub: str, rg: str, profile_name: str, endpoint_type: str, name: str
    ) -> bool:
        profile = self.get_profile(sub, rg, profile_name)
        etype = _canonical(endpoint_type, ENDPOINT_TYPES, "endpointType")
        return profile.endpoints.pop((etype.lower(), name.lower()), None) is not None

    def remove_group(self, sub: str, rg: str) -> None:
        """A deleted resource group takes its profiles with it."""
        prefix = (profile_id(sub, rg, "")).lower()
        for key in [k for k in self.profiles if k.startswith(prefix)]:
            del self.profiles[key]

    def settle_all(self) -> None:
        """Seeded endpoints start with their first probe done."""
        for endpoint in self.endpoints():
            endpoint.checking_until = -math.inf

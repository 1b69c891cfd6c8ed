"""``traffic-manager-endpoint``: take a site's Traffic Manager endpoint out of rotation, or back.

A multisite entry point (Always On VPN, DirectAccess) is one Traffic Manager profile whose
endpoints are the sites; ``[sites.NAME.traffic_manager]`` names the site's one. The playbook
converges its ``endpointStatus`` (Enabled / Disabled), which is what Traffic Manager routes by;
``endpointMonitorStatus`` is Traffic Manager's own verdict from its probes and cannot be set.

- ``plan()`` reads the endpoint: a change when ``endpointStatus`` differs, none when it does not
  (the monitor status goes in the plan's notes).
- ``apply()`` is one journaled step: a PATCH carrying ``endpointStatus`` only. Traffic Manager
  has no ETags (the REST spec defines none for profiles or endpoints), so there is nothing for
  ``If-Match``; a PATCH merges into the endpoint, so no other setting (target, priority,
  weight, custom headers, ...) is sent and none can be overwritten. The PATCH is idempotent,
  which is what lets a resumed run (after a crash, or a lost answer) simply send it again.
- ``verify()``: disabled means ``endpointStatus`` Disabled; enabled means Traffic Manager's
  probes find the endpoint ``Online`` within ``timeout`` seconds, or the run says why not.

:func:`endpoint_state` is the read others use (e.g. failover decisions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from bot.models import Change, Plan
from bot.retry import PermanentError, describe_error, is_transient, sample_until
from playbooks.azure.common import NET, text
from playbooks.base import Playbook, RunContext

if TYPE_CHECKING:
    from azure.mgmt.trafficmanager.aio import TrafficManagerManagementClient
    from azure.mgmt.trafficmanager.types import Endpoint as EndpointJson

EndpointType = Literal["ExternalEndpoints", "AzureEndpoints", "NestedEndpoints"]
PROFILES = f"{NET}/trafficManagerProfiles"
EXTERNAL = "ExternalEndpoints"  # the default type, as in [sites.NAME.traffic_manager]
# Why an enabled endpoint is not Online, in words (Microsoft's endpoint-monitoring article).
WHY = {
    "Degraded": "Traffic Manager's health probes of its target fail",
    "CheckingEndpoint": "the first probe result has not arrived yet",
    "Inactive": "its profile is disabled",
    "Stopped": "its target is stopped (or, nested, the child profile is disabled or inactive)",
    "Disabled": "it is disabled",
}


@dataclass(frozen=True)
class TmTarget:
    resource_group: str
    profile: str
    endpoint: str
    endpoint_type: str

    @property
    def label(self) -> str:
        return f"tm endpoint {self.profile}/{self.endpoint}"


@dataclass(frozen=True)
class EndpointState:
    """What Traffic Manager says of an endpoint."""

    endpoint_status: str  # Enabled | Disabled (what we set)
    monitor_status: str  # CheckingEndpoint | Online | Degraded | Disabled | Inactive | Stopped ...
    target: str | None  # the DNS name or address it hands out (ExternalEndpoints)

    @property
    def online(self) -> bool:
        return self.endpoint_status == "Enabled" and self.monitor_status == "Online"


class Overrides(BaseModel):
    """Which endpoint: each field overrides ``[sites.NAME.traffic_manager]``."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str | None = Field(None, min_length=1, max_length=260)
    profile: str | None = Field(None, min_length=1, max_length=63)
    resource_group: str | None = Field(None, min_length=1, max_length=90)
    endpoint_type: EndpointType | None = None


class EndpointParams(Overrides):
    enabled: bool = Field(description="true: in rotation (Enabled); false: out (Disabled)")
    timeout: float = Field(
        120.0, ge=0, le=3600, description="seconds to wait for Online after enabling"
    )
    interval: float = Field(5.0, gt=0, le=300, description="seconds between status reads")


def tm_target(ctx: RunContext, overrides: Overrides | None = None) -> TmTarget:
    """The endpoint to act on: the site's ``[traffic_manager]``, field by field overridden."""
    cfg = ctx.site_config.traffic_manager if ctx.site_config is not None else None
    given = overrides or Overrides()
    values = {
        "resource_group": given.resource_group or (cfg.resource_group if cfg else None),
        "profile": given.profile or (cfg.profile if cfg else None),
        "endpoint": given.endpoint or (cfg.endpoint if cfg else None),
        "endpoint_type": given.endpoint_type or (cfg.endpoint_type if cfg else EXTERNAL),
    }
    missing = [key for key, value in values.items() if not value]
    if missing:
        keys = ", ".join(f"sites.{ctx.site}.traffic_manager.{k}" for k in missing)
        raise PermanentError(
            f"site {ctx.site!r} has no Traffic Manager endpoint configured: {keys} "
            "(or pass them as parameters)",
            "NotConfigured",
        )
    return TmTarget(
        str(values["resource_group"]),
        str(values["profile"]),
        str(values["endpoint"]),
        str(values["endpoint_type"]),
    )


async def traffic_manager(ctx: RunContext) -> TrafficManagerManagementClient:
    return await ctx.services.azure.traffic_manager()


def _state(endpoint: Any) -> EndpointState:
    target = endpoint.target
    return EndpointState(
        endpoint_status=text(endpoint.endpoint_status),
        monitor_status=text(endpoint.endpoint_monitor_status) or "Unknown",
        target=None if target is None else str(target),
    )


async def endpoint_state(ctx: RunContext, target: TmTarget | None = None) -> EndpointState:
    """One GET of the endpoint (``target``, else the site's): its status and monitor status."""
    t = target or tm_target(ctx)
    client = await traffic_manager(ctx)
    endpoint = await client.endpoints.get(t.resource_group, t.profile, t.endpoint_type, t.endpoint)
    return _state(endpoint)


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def _wanted(params: EndpointParams) -> str:
    return "Enabled" if params.enabled else "Disabled"


async def _set_status(ctx: RunContext, t: TmTarget, wanted: str) -> dict[str, str]:
    """PATCH ``endpointStatus`` alone: Traffic Manager merges it into the endpoint."""
    client = await traffic_manager(ctx)
    body = {"properties": {"endpointStatus": wanted}}
    endpoint = await client.endpoints.update(
        t.resource_group, t.profile, t.endpoint_type, t.endpoint, cast("EndpointJson", body)
    )
    state = _state(endpoint)
    return {"endpointStatus": state.endpoint_status, "endpointMonitorStatus": state.monitor_status}


class TrafficManagerEndpoint(Playbook[EndpointParams]):
    name = "traffic-manager-endpoint"
    summary = "Put the site's Traffic Manager endpoint in rotation (Enabled) or take it out"
    params_model = EndpointParams
    # The endpoint type is the site's choice, so the role grants all three kinds; drop the
    # kinds you do not use (docs/azure.md).
    permissions = (
        f"{PROFILES}/externalEndpoints/read",
        f"{PROFILES}/externalEndpoints/write",
        f"{PROFILES}/azureEndpoints/read",
        f"{PROFILES}/azureEndpoints/write",
        f"{PROFILES}/nestedEndpoints/read",
        f"{PROFILES}/nestedEndpoints/write",
    )

    async def plan(self, ctx: RunContext, params: EndpointParams) -> Plan:
        t = tm_target(ctx, params)
        state = await endpoint_state(ctx, t)
        wanted = _wanted(params)
        notes = [f"{t.label} endpointMonitorStatus: {state.monitor_status}"]
        if state.endpoint_status == wanted:
            return Plan(notes=notes)
        change = Change(
            target=t.label, field="endpointStatus", old=state.endpoint_status or None, new=wanted
        )
        return Plan(changes=[change], notes=notes)

    async def apply(self, ctx: RunContext, params: EndpointParams, plan: Plan) -> str:
        t = tm_target(ctx, params)
        wanted = _wanted(params)
        result = await ctx.step("set-endpoint-status", lambda: _set_status(ctx, t, wanted))
        return (
            f"{t.label} endpointStatus {result['endpointStatus']} "
            f"(monitor: {result['endpointMonitorStatus']})"
        )

    async def verify(self, ctx: RunContext, params: EndpointParams) -> str | None:
        t = tm_target(ctx, params)
        if not params.enabled:
            state = await endpoint_state(ctx, t)
            if state.endpoint_status != "Disabled":
                return f"{t.label} endpointStatus is {state.endpoint_status}, not Disabled"
            return None
        began = time.monotonic()
        waited = await sample_until(
            lambda: endpoint_state(ctx, t),
            lambda s: s.online,
            within=params.timeout,
            every=params.interval,
            tolerate=is_transient,
        )
        if waited.done:
            return None
        spent = time.monotonic() - began
        if waited.value is None:
            code = describe_error(waited.error)[0] if waited.error is not None else "no answer"
            return f"{t.label} is unreadable ({code}) after {_seconds(spent)}"
        state = waited.value
        if state.endpoint_status != "Enabled":
            return f"{t.label} endpointStatus is {state.endpoint_status}, not Enabled"
        why = WHY.get(state.monitor_status, "Traffic Manager does not route to it")
        target = f" (target {state.target})" if state.target else ""
        return (
            f"{t.label} is {state.monitor_status} after {_seconds(spent)}, not Online: {why}"
            f"{target}"
        )

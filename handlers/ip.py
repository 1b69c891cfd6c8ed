"""``ip.changed`` and ``ip.rejected``: a site's public address moved (or moved somewhere useless).

The chain for a usable new IPv4 address::

    update-local-gateway ─▶ verify-tunnel
                              └─ down ─▶ reset-connection
                                           └─ down ─▶ recreate ─▶ verify-tunnel
                                                      (recreate only where the site's
                                                       policy.allow_destructive)

The notification says what changed and how long the tunnel was down (from the moment the new
address was seen to the moment the connection reported Connected); a failure says what failed
and what a human should do next.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.chat.models import Notification, Severity
from bot.events import Event
from bot.models import Decision, PlaybookCall, RunRecord
from handlers.base import Handler, SiteView, gate


class IpChanged(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str = Field(min_length=2, max_length=64)
    family: Literal["v4", "v6"] = "v4"
    previous: str | None = None


class IpRejected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str = Field(max_length=64)
    family: Literal["v4", "v6"] = "v4"
    reason: str
    message: str


def _azure_ready(view: SiteView) -> bool:
    c = view.config
    return bool(c and c.resource_group and c.local_network_gateway and c.connection)


def recreate_command(site: str, ip: str) -> str:
    return (
        f"tunnelwarden playbook run update-local-gateway --site {site} "
        f"--param ip={ip} --param strategy=recreate"
    )


async def decide_changed(event: Event, data: IpChanged, view: SiteView) -> Decision:
    if data.family == "v6":
        return Decision.skip("IPv6 address recorded; Azure local network gateways take IPv4")
    if not _azure_ready(view):
        return Decision.skip(f"site {view.site} has no Azure resources configured")
    if view.state.get("applied.v4") == data.ip:
        return Decision.skip(f"{data.ip} is already applied")
    stop = gate(view, changes=True)
    if stop is not None:
        return stop
    wait = {"timeout": view.policy.tunnel_timeout, "interval": view.policy.tunnel_poll}
    escalate: list[PlaybookCall] = []
    if view.policy.allow_destructive:
        escalate = [
            PlaybookCall(
                name="update-local-gateway", params={"ip": data.ip, "strategy": "recreate"}
            ),
            PlaybookCall(name="verify-tunnel", params=wait),
        ]
    reset = PlaybookCall(name="reset-connection", params=wait, on_failure=escalate)
    return Decision(
        playbooks=[
            PlaybookCall(name="update-local-gateway", params={"ip": data.ip}),
            PlaybookCall(name="verify-tunnel", params=wait, on_failure=[reset]),
        ],
        reason=f"public IP changed {data.previous or '(unknown)'} -> {data.ip}",
    )


def remember_changed(event: Event, data: IpChanged, record: RunRecord) -> dict[str, str]:
    if record.outcome in ("ok", "no_changes") and data.family == "v4":
        return {"applied.v4": data.ip, "applied.v4.at": f"{time.time():.3f}"}
    return {}


def describe_changed(
    event: Event, data: IpChanged, record: RunRecord, run_url: str | None
) -> Notification | None:
    if record.outcome in ("no_changes", "skipped"):
        return None  # nothing happened worth a message (already applied, IPv6, ...)
    # What Azure pointed at before is the old address that mattered; else what we last saw.
    old = next(
        (str(c.old) for r in record.playbooks for c in r.changes if c.field == "gatewayIpAddress"),
        data.previous or "(unknown)",
    )
    facts = {"Old IP": old, "New IP": data.ip, "Run": record.run_id}
    if record.outcome == "ok":
        applied = any(
            r.playbook == "update-local-gateway" and r.outcome == "ok" for r in record.playbooks
        )
        reset = any(
            r.playbook == "reset-connection" and r.outcome == "ok" for r in record.playbooks
        )
        if not (applied or reset):
            return None  # Azure already had the address and the tunnel came up by itself
        downtime = record.finished_at - event.occurred_at.timestamp()
        facts["Tunnel down for"] = f"{max(downtime, 0):.1f}s"
        steps = " → ".join(f"{r.playbook} ({r.outcome})" for r in record.playbooks)
        title = (
            f"{event.site}: new public IP {data.ip} applied, tunnel back"
            if applied
            else f"{event.site}: tunnel was down at {data.ip}; a reset brought it back"
        )
        return Notification(
            severity=Severity.INFO,
            title=title,
            site=event.site,
            summary=f"Steps: {steps}.",
            facts=facts,
            run_url=run_url,
            event_id=event.id,
        )
    failed = next((r for r in reversed(record.playbooks) if r.outcome != "ok"), None)
    what = f"{failed.playbook}: {failed.error or failed.outcome}" if failed else record.outcome
    tried_recreate = sum(r.playbook == "update-local-gateway" for r in record.playbooks) > 1
    if failed and failed.playbook == "update-local-gateway" and not record.playbooks[1:]:
        nxt = (
            "Azure refused the update: check the error above, the identity's permissions "
            "(docs/azure.md) and the gateway's provisioning state, then run the playbook again."
        )
    elif tried_recreate:
        nxt = (
            "The connection was re-created and the tunnel is still down: check the device's "
            "IPsec settings and shared key against the Azure connection."
        )
    else:
        command = recreate_command(event.site, data.ip)
        nxt = f"Re-create the connection (keeps its settings): `{command}`"
    return Notification(
        severity=Severity.ERROR,
        title=f"{event.site}: tunnel still down after IP change to {data.ip}",
        site=event.site,
        summary=f"Failed at {what}",
        facts=facts,
        run_url=run_url,
        next_step=nxt,
        event_id=event.id,
    )


async def decide_rejected(event: Event, data: IpRejected, view: SiteView) -> Decision:
    return Decision.skip(f"{data.ip} rejected: {data.message}")


def describe_rejected(
    event: Event, data: IpRejected, record: RunRecord, run_url: str | None
) -> Notification:
    cgnat = data.reason == "cgnat"
    return Notification(
        severity=Severity.ERROR if cgnat else Severity.WARNING,
        title=f"{event.site}: reported public IP {data.ip} is not usable",
        site=event.site,
        summary=data.message,
        facts={"Address": data.ip, "Reason": data.reason, "Reported by": event.source},
        run_url=run_url,
        next_step=(
            "Ask the ISP for a public IPv4 address (or a business line): a site behind "
            "carrier-grade NAT cannot accept the tunnel."
            if cgnat
            else "Check what reports this address (router push, echo services) and its settings."
        ),
        event_id=event.id,
    )


HANDLERS = [
    Handler(
        "ip.changed",
        IpChanged,
        decide_changed,
        "update Azure to a site's new public IP",
        remember=remember_changed,
        describe=describe_changed,
    ),
    Handler(
        "ip.rejected",
        IpRejected,
        decide_rejected,
        "tell people about an unusable IP",
        describe=describe_rejected,
    ),
]

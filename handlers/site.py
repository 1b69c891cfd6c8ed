"""The site reconciler: ``ip.changed`` and ``site.reconcile`` hints converge the site.

Desired state: the Local Network Gateway points at the site's latest observed address (the
site's state, never the hint's payload), and the connection reports Connected. The chain::

    update-local-gateway(ip = desired) ─▶ verify-tunnel
                                            └─ down ─▶ reset-connection
                                                         └─ down ─▶ recreate-connection ─▶ verify
                                                                    (only where the site's
                                                                     policy.allow_destructive)

Every playbook reads Azure and plans, so a converged site costs reads only and there is no
"already applied" memory to go stale. A hint older than the state is ``superseded``. What
follows from the outcome (resync, backoff, held until the rate-limit window allows) is the
runner's; which messages people get is decided here: one when something changed, one when a
site stops converging (not one per retry), one when it is back.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.chat.models import Notification, Severity
from bot.events import Event
from bot.models import Decision, PlaybookCall, PlaybookResult, RunRecord
from handlers.base import Handler, SiteView, gate


class IpChanged(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str = Field(min_length=2, max_length=64)
    family: Literal["v4", "v6"] = "v4"
    previous: str | None = None
    seq: int | None = Field(None, ge=1, description="the site's observation number")


class Reconcile(BaseModel):
    model_config = ConfigDict(extra="forbid")


Data = IpChanged | Reconcile
APPLIED_BY = ("update-local-gateway", "recreate-connection")
RECOVERED_BY = ("reset-connection", *APPLIED_BY)


def _azure_ready(view: SiteView) -> bool:
    c = view.config
    return bool(c and c.resource_group and c.local_network_gateway and c.connection)


def recreate_command(site: str, ip: str | None) -> str:
    param = f" --param ip={ip}" if ip else ""
    return (
        f"tunnelwarden playbook run recreate-connection --site {site}{param} --confirm-destructive"
    )


async def decide(event: Event, data: Data, view: SiteView) -> Decision:
    state = view.state
    if isinstance(data, IpChanged):
        if data.family == "v6":
            return Decision.skip("IPv6 address recorded; Azure local network gateways take IPv4")
        latest = int(state.get("ip.v4.seq") or 0)
        if data.seq is not None and data.seq < latest:
            return Decision.superseded(
                f"observation {data.seq} ({data.ip}) is superseded by observation {latest} "
                f"({state.get('ip.v4')})"
            )
    if not _azure_ready(view):
        return Decision.skip(f"site {view.site} has no Azure resources configured")
    stop = gate(view, changes=True)
    if stop is not None:
        return stop
    desired = state.get("ip.v4")
    wait = {"timeout": view.policy.tunnel_timeout, "interval": view.policy.tunnel_poll}
    escalate: list[PlaybookCall] = []
    if view.policy.allow_destructive:
        params = {"ip": desired} if desired else {}
        escalate = [
            PlaybookCall(name="recreate-connection", params=params),
            PlaybookCall(name="verify-tunnel", params=wait),
        ]
    reset = PlaybookCall(name="reset-connection", params=wait, on_failure=escalate)
    verify = PlaybookCall(name="verify-tunnel", params=wait, on_failure=[reset])
    update = [PlaybookCall(name="update-local-gateway", params={"ip": desired})] if desired else []
    return Decision(playbooks=[*update, verify], reason=_reason(event, view, desired))


def _reason(event: Event, view: SiteView, desired: str | None) -> str:
    state = view.state
    target = f"LNG at {desired}" if desired else "tunnel Connected"
    if event.type == "ip.changed":
        previous = state.get("ip.v4.previous") or "(unknown)"
        return f"public IP changed {previous} -> {desired} (observation {state.get('ip.v4.seq')})"
    if state.get("reconcile.status") == "retrying":
        return f"retry {state.get('reconcile.attempt')}: {target}"
    if state.get("reconcile.status") == "held":
        return f"held change due: {target}"
    return f"re-check: {target}"


def _failure(record: RunRecord) -> PlaybookResult | None:
    return next((r for r in reversed(record.playbooks) if r.outcome != "ok"), None)


def _incident_key(record: RunRecord) -> str:
    failed = _failure(record)
    return f"{failed.playbook}:{failed.error_code or failed.outcome}" if failed else record.outcome


def remember(event: Event, data: Data, record: RunRecord, view: SiteView) -> dict[str, str | None]:
    """An incident opens with the first failure and closes when the site converges."""
    if record.outcome in ("ok", "no_changes"):
        return {"incident.key": None, "incident.since": None}
    if record.outcome in ("failed", "timeout"):
        since = view.state.get("incident.since") or f"{record.started_at:.3f}"
        return {"incident.key": _incident_key(record), "incident.since": since}
    return {}


def describe(
    event: Event, data: Data, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    state = view.state
    desired = state.get("ip.v4")
    if record.outcome == "superseded":
        return None
    if record.outcome == "skipped":
        return _held(event, record, run_url, view)
    if record.outcome in ("ok", "no_changes"):
        return _converged(event, record, run_url, view)
    if state.get("incident.key") == _incident_key(record):
        return None  # told already; the retries go on quietly
    failed = _failure(record)
    what = f"{failed.playbook}: {failed.error or failed.outcome}" if failed else record.outcome
    facts = {"Desired IP": desired or "(unknown)", "Run": record.run_id}
    if record.retry_at:
        facts["Next try"] = time.strftime("%H:%M:%S", time.localtime(record.retry_at))
    retrying = bool(failed and failed.retry)
    if failed and failed.error_code in ("AuthorizationFailed", "Forbidden", "403"):
        nxt = "Grant the identity the role in docs/azure.md, then the next re-check applies it."
    elif failed and failed.error_code in ("ResourceNotFound", "NotConfigured", "404"):
        nxt = "Check the site's resource_group, local_network_gateway and connection settings."
    elif failed and failed.error_code == "DestructiveRefused":
        nxt = "Allow destructive playbooks for the site, or run the command below by hand."
    elif retrying and failed and failed.playbook in ("verify-tunnel", "reset-connection"):
        tried = any(r.playbook == "recreate-connection" for r in record.playbooks)
        command = recreate_command(event.site, desired)
        nxt = (
            "The connection was re-created and the tunnel is still down: check the device's "
            "IPsec settings and shared key against the Azure connection."
            if tried
            else f"If it stays down, re-create the connection: `{command}`"
        )
    elif retrying:
        nxt = "Azure did not take the change yet; tunnelwarden keeps retrying with backoff."
    else:
        nxt = "Check the error above; the next re-check tries again."
    title = (
        f"{event.site}: tunnel down, retrying"
        if retrying
        else f"{event.site}: cannot converge, needs a person"
    )
    return Notification(
        severity=Severity.ERROR,
        title=title,
        site=event.site,
        summary=f"Failed at {what}",
        facts=facts,
        run_url=run_url,
        next_step=nxt,
        event_id=event.id,
    )


def _converged(
    event: Event, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    state = view.state
    changed = [r for r in record.playbooks if r.outcome == "ok" and r.changes]
    applied = any(r.playbook in APPLIED_BY for r in changed)
    recovered = any(r.playbook in RECOVERED_BY for r in changed)
    since = state.get("incident.since")
    if not (applied or recovered or since):
        return None  # nothing happened worth a message
    desired = state.get("ip.v4") or "(unknown)"
    old = next(
        (str(c.old) for r in changed for c in r.changes if c.field == "gatewayIpAddress"),
        state.get("ip.v4.previous") or "(unknown)",
    )
    facts = {"Old IP": old, "New IP": desired, "Run": record.run_id}
    start = float(since) if since else float(state.get("ip.v4.since") or record.started_at)
    facts["Tunnel down for"] = f"{max(record.finished_at - start, 0):.1f}s"
    steps = " → ".join(f"{r.playbook} ({r.outcome})" for r in record.playbooks)
    if applied:
        title = f"{event.site}: new public IP {desired} applied, tunnel back"
    elif recovered:
        title = f"{event.site}: tunnel was down at {desired}; a reset brought it back"
    else:
        title = f"{event.site}: converged again, tunnel Connected"
    return Notification(
        severity=Severity.INFO,
        title=title,
        site=event.site,
        summary=f"Steps: {steps}.",
        facts=facts,
        run_url=run_url,
        event_id=event.id,
    )


def _held(
    event: Event, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    if not record.retry_at or not record.reason.startswith("rate limit"):
        return None
    told = view.state.get("held.until")
    if told and float(told) > time.time():
        return None  # once per window
    when = time.strftime("%H:%M", time.localtime(record.retry_at))
    return Notification(
        severity=Severity.WARNING,
        title=f"{event.site}: change held by the rate limit until {when}",
        site=event.site,
        summary=f"{record.reason}. The site is reconciled when the window allows.",
        facts={"Desired IP": view.state.get("ip.v4") or "(unknown)", "Run": record.run_id},
        run_url=run_url,
        next_step=(
            "Nothing to do if this is expected; raise policy.max_changes_per_hour for the "
            "site if it changes address this often."
        ),
        event_id=event.id,
    )


HANDLERS = [
    Handler(
        "ip.changed",
        IpChanged,
        decide,
        "converge the site to its latest observed public IP",
        remember=remember,
        describe=describe,
        reconciles=True,
    ),
    Handler(
        "site.reconcile",
        Reconcile,
        decide,
        "re-check the site (resync, retry, held change due)",
        remember=remember,
        describe=describe,
        reconciles=True,
    ),
]

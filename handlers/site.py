"""The site reconciler: every hint about a site converges the site.

Hints: ``ip.changed`` (a source saw an address), ``site.reconcile`` (resync, retry, held change
due), ``tunnel.down`` / ``tunnel.up`` / ``tunnel.degraded`` (the ARM watcher, Azure Monitor),
``probe.failed`` / ``probe.recovered`` (the site's probes). Whatever the hint, the decision
comes from the site's state, never from the hint's payload.

Desired state: the Local Network Gateway points at the site's latest observed address, the
connection reports Connected, and (where the site has them) a quorum of its through-tunnel
probes answers. The chain::

    update-local-gateway(ip = desired) ─▶ verify-tunnel
                       └─ down ─▶ reset-connection
                                    └─ down ─▶ re-initiate from the site's device ─▶ verify
                                                 └─ down ─▶ recreate-connection ─▶ verify
                                                              └─ down ─▶ reset-gateway ─▶ verify
                  (the device step only where the site has a device that can re-initiate,
                   ``[[sites.NAME.devices]]``: sonicwall-reinitiate, rras-connect; the last two
                   only where the site's policy.allow_destructive, or, with policy.approval,
                   each after an approver agreed in chat: the runner asks, once per incident)

When a quorum of through-tunnel probes fails while Azure may well say Connected ("up but
passing nothing"), the connection is reset without waiting for Azure to agree
(``policy.reset_on_probe_failure``). Resets are limited (``policy.max_resets_per_hour``) and
followed by a cool-down (``policy.reset_cooldown``); while one holds, the site is verified
but not reset, and the scheduler comes back when the hold ends.

Every playbook reads Azure and plans, so a converged site costs reads only. A hint older than
the state is ``superseded``. What follows from the outcome (resync, backoff, held) is the
runner's; which messages people get is decided here: one when something changed or a site
went down and came back, one when it stops converging (not one per retry: an outage is one
incident whatever its retries fail at, told with since when and what was done), one when it
is back (with how long it was down), and drops inside a flapping episode are summed up once
it is quiet again.
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


class TunnelHint(BaseModel):
    """``tunnel.*`` from the ARM watcher or Azure Monitor (context for messages only)."""

    model_config = ConfigDict(extra="forbid")
    status: str = Field("", max_length=64)
    since: float | None = None
    detail: str = Field("", max_length=500)
    alert: str = Field("", max_length=200)


class ProbeHint(BaseModel):
    """``probe.*``: a probe changed state (context for messages only)."""

    model_config = ConfigDict(extra="forbid")
    probe: str = Field(max_length=64)
    kind: str = Field("", max_length=16)
    through_tunnel: bool = False
    reason: str = Field("", max_length=64)
    detail: str = Field("", max_length=500)


Data = IpChanged | Reconcile | TunnelHint | ProbeHint
APPLIED_BY = ("update-local-gateway", "recreate-connection")
RESETS = ("reset-connection", "reset-gateway")
RECOVERED_BY = (*RESETS, *APPLIED_BY)
# Device kinds whose driver can re-initiate the tunnel from the site's end, and the playbook.
REINITIATE = {"sonicwall": "sonicwall-reinitiate", "rras": "rras-connect"}
RETRYING = "down:retrying"  # the incident key of an outage that is being retried
FLAP_WINDOW = 900.0  # drops closer together than this are one flapping episode
# A destructive step waiting for an approver (bot.escalate), and one that will not run.
APPROVAL_WAITING = ("ApprovalRequested", "ApprovalPending")
APPROVAL_CLOSED = ("ApprovalDenied", "ApprovalExpired")


def _azure_ready(view: SiteView) -> bool:
    c = view.config
    return bool(c and c.resource_group and c.local_network_gateway and c.connection)


def recreate_command(site: str, ip: str | None) -> str:
    param = f" --param ip={ip}" if ip else ""
    return (
        f"tunnelwarden playbook run recreate-connection --site {site}{param} --confirm-destructive"
    )


# --- what the state says -----------------------------------------------------------------


def probes_down(view: SiteView) -> tuple[list[str], int]:
    """Names of the site's through-tunnel probes judged down, and the quorum."""
    if view.config is None:
        return [], 1
    through = [p.name for p in view.config.probes if p.through_tunnel]
    down = [n for n in through if view.state.get(f"probe.{n}.state") == "down"]
    return down, view.config.quorum


def reinitiate(view: SiteView) -> PlaybookCall | None:
    """The re-initiate of the site's first device that offers one (config order), or None."""
    for device in view.config.devices if view.config else []:
        name = REINITIATE.get(device.kind)
        if name is not None:
            return PlaybookCall(name=name, params={"device": device.name})
    return None


def recent_resets(view: SiteView, now: float) -> list[float]:
    raw = view.state.get("reset.times", "")
    return [t for t in (float(x) for x in raw.split() if x) if now - t < 3600]


def reset_hold(view: SiteView, now: float) -> tuple[float, str] | None:
    """(until when, why) automatic resets are held, or None."""
    policy = view.policy
    times = recent_resets(view, now)
    if times and now - max(times) < policy.reset_cooldown:
        return max(times) + policy.reset_cooldown, "cool-down after the last reset"
    if policy.max_resets_per_hour and len(times) >= policy.max_resets_per_hour:
        return min(times) + 3600, f"{len(times)} resets in the last hour"
    return None


# --- the decision ------------------------------------------------------------------------


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
    now = time.time()
    desired = state.get("ip.v4")
    policy = view.policy
    wait = {"timeout": policy.tunnel_timeout, "interval": policy.tunnel_poll}
    hold = None if view.manual else reset_hold(view, now)
    update = [PlaybookCall(name="update-local-gateway", params={"ip": desired})] if desired else []
    verify = PlaybookCall(name="verify-tunnel", params=wait)
    reason = _reason(event, view, desired)
    if hold is not None:
        until, why = hold
        when = time.strftime("%H:%M", time.localtime(until))
        return Decision(
            playbooks=[*update, verify],
            reason=f"{reason}; resets held until {when} ({why})",
            retry_at=until,
        )
    down, quorum = probes_down(view)
    if policy.reset_on_probe_failure and len(down) >= quorum:
        forced = PlaybookCall(name="reset-connection", params={**wait, "force": True})
        return Decision(
            playbooks=[*update, forced, verify],
            reason=f"{reason}; probes {', '.join(down)} fail through the tunnel "
            f"({len(down)} of quorum {quorum}): reset",
        )
    escalate: list[PlaybookCall] = []
    if policy.allow_destructive or policy.approval:
        # With approval (and not allow_destructive) each destructive step waits for an
        # approver: the runner asks once per incident and runs nothing meanwhile.
        asked = not policy.allow_destructive
        incident = incident_of(event, data, view) if asked else ""
        params = {"ip": desired} if desired else {}
        gateway = PlaybookCall(
            name="reset-gateway", params=wait, needs_approval=asked, incident=incident
        )
        escalate = [
            PlaybookCall(
                name="recreate-connection", params=params, needs_approval=asked, incident=incident
            ),
            PlaybookCall(name="verify-tunnel", params=wait, on_failure=[gateway, verify]),
        ]
    after_reset = escalate
    device = reinitiate(view)
    if device is not None:  # from the site's end before anything destructive
        after_reset = [
            PlaybookCall(name=device.name, params=device.params, on_failure=escalate),
            PlaybookCall(name="verify-tunnel", params=wait, on_failure=escalate),
        ]
    reset = PlaybookCall(name="reset-connection", params=wait, on_failure=after_reset)
    checked = PlaybookCall(name="verify-tunnel", params=wait, on_failure=[reset])
    return Decision(playbooks=[*update, checked], reason=reason)


def _reason(event: Event, view: SiteView, desired: str | None) -> str:
    state = view.state
    target = f"LNG at {desired}" if desired else "tunnel Connected"
    if event.type == "ip.changed":
        previous = state.get("ip.v4.previous") or "(unknown)"
        return f"public IP changed {previous} -> {desired} (observation {state.get('ip.v4.seq')})"
    if event.type.startswith(("tunnel.", "probe.")):
        what = event.type.replace(".", " ")
        return f"{what} (from {event.source}): {target}"
    if state.get("reconcile.status") == "retrying":
        return f"retry {state.get('reconcile.attempt')}: {target}"
    if state.get("reconcile.status") == "held":
        return f"held change due: {target}"
    return f"re-check: {target}"


# --- what the run leaves in the state ------------------------------------------------------


def _failure(record: RunRecord) -> PlaybookResult | None:
    return next((r for r in reversed(record.playbooks) if r.outcome != "ok"), None)


def _incident_key(record: RunRecord) -> str:
    """One key per outage: every retried failure is the same incident (a retry inside a reset
    cool-down fails at verify-tunnel, the one before at reset-connection); a failure that
    needs a person is its own."""
    failed = _failure(record)
    if failed is None:
        return record.outcome
    if failed.retry:
        return RETRYING
    return f"{failed.playbook}:{failed.error_code or failed.outcome}"


def _reset_sent(record: RunRecord) -> bool:
    return any(r.playbook in RESETS and r.outcome != "no_changes" for r in record.playbooks)


def _drop(event: Event, record: RunRecord) -> bool:
    """The tunnel had dropped by itself (not because its address changed)."""
    applied = any(
        r.playbook in APPLIED_BY and r.outcome == "ok" and r.changes for r in record.playbooks
    )
    return not applied and (event.type == "tunnel.down" or _reset_sent(record))


def remember(event: Event, data: Data, record: RunRecord, view: SiteView) -> dict[str, str | None]:
    """Incidents open with a failure and close when the site converges; resets are counted
    for their limits; drops close together are counted as one flapping episode."""
    now = record.finished_at
    out: dict[str, str | None] = {}
    if _reset_sent(record):
        times = [*recent_resets(view, now), now]
        out["reset.times"] = " ".join(f"{t:.3f}" for t in times[-20:])
    if record.outcome in ("ok", "no_changes"):
        out["reconcile.seq"] = view.state.get("ip.v4.seq", "")  # the observation converged to
        out["incident.key"] = None
        out["incident.since"] = None
        if (
            view.state.get("tunnel.reported") in ("down", None)
            or view.state.get("tunnel.status", "Connected") != "Connected"
        ):
            # The run saw the tunnel Connected: what the watcher last reported is over (so a
            # drop right after is a new drop, even if the watcher never read it up).
            out.update(
                {
                    "tunnel.status": "Connected",
                    "tunnel.reported": "up",
                    "tunnel.since": f"{now:.3f}",
                }
            )
    elif record.outcome in ("failed", "timeout"):
        since = view.state.get("incident.since") or f"{_down_since(event, data, record, view):.3f}"
        out["incident.key"] = _incident_key(record)
        out["incident.since"] = since
    if _drop(event, record):
        last = float(view.state.get("flap.last") or 0)
        if last and now - last < FLAP_WINDOW:
            out["flap.count"] = str(int(view.state.get("flap.count") or 1) + 1)
        else:
            out["flap.count"] = "1"
            out["flap.first"] = f"{now:.3f}"
        out["flap.last"] = f"{now:.3f}"
    elif record.outcome in ("ok", "no_changes") and _flapping_over(view, now):
        out.update({"flap.count": None, "flap.first": None, "flap.last": None})
    return out


def _flapping_over(view: SiteView, now: float) -> bool:
    last = float(view.state.get("flap.last") or 0)
    return bool(last) and now - last >= FLAP_WINDOW


# --- what people are told ------------------------------------------------------------------


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
        return _converged(event, data, record, run_url, view)
    if state.get("incident.key") == _incident_key(record):
        return None  # told already; the retries go on quietly
    failed = _failure(record)
    if failed and failed.error_code in APPROVAL_CLOSED:
        return None  # the approval flow told of the denial or the expiry, once
    if failed and failed.error_code == "BudgetDeferred":
        return None  # waiting its turn in ARM's request budget (a storm), not a failure
    what = f"{failed.playbook}: {failed.error or failed.outcome}" if failed else record.outcome
    facts = {"Desired IP": desired or "(unknown)", "Run": record.run_id}
    since = _down_since(event, data, record, view)
    facts["Down since"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    facts["Done"] = " → ".join(f"{r.playbook} ({r.outcome})" for r in record.playbooks) or "-"
    retrying = bool(failed and failed.retry)
    if record.retry_at and retrying:  # a permanent failure's next look is only the resync
        facts["Next try"] = time.strftime("%H:%M:%S", time.localtime(record.retry_at))
    if isinstance(data, TunnelHint | ProbeHint):
        facts["Noticed by"] = event.source
    if failed and failed.error_code in ("AuthorizationFailed", "Forbidden", "403"):
        nxt = "Grant the identity the role in docs/azure.md, then the next re-check applies it."
    elif failed and failed.error_code in ("ResourceNotFound", "NotConfigured", "404"):
        nxt = "Check the site's resource_group, local_network_gateway and connection settings."
    elif failed and failed.error_code == "DestructiveRefused":
        nxt = "Allow destructive playbooks for the site, or run the command below by hand."
    elif failed and failed.error_code in APPROVAL_WAITING:
        nxt = (
            f"{failed.playbook} is destructive and this site wants an approval: an approver "
            "decides on the approval request in chat (or: tunnelwarden approve ID)."
        )
    elif retrying and failed and failed.playbook in ("verify-tunnel", *RESETS):
        ran = {r.playbook for r in record.playbooks}
        command = recreate_command(event.site, desired)
        if "recreate-connection" in ran:
            nxt = (
                "The connection was re-created and the tunnel is still down: check the "
                "device's IPsec settings and shared key against the Azure connection."
            )
        elif ran & set(REINITIATE.values()):
            nxt = (
                "The site's device re-initiated the tunnel and it is still down; if it stays "
                f"down, re-create the connection: `{command}`"
            )
        else:
            nxt = f"If it stays down, re-create the connection: `{command}`"
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
    event: Event, data: Data, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    state = view.state
    now = record.finished_at
    changed = [r for r in record.playbooks if r.outcome == "ok" and r.changes]
    applied = any(r.playbook in APPLIED_BY for r in changed)
    recovered = any(r.playbook in RECOVERED_BY for r in changed)
    since = state.get("incident.since")
    episode = int(state.get("flap.count") or 0)
    flapping = bool(state.get("flap.last")) and now - float(state["flap.last"]) < FLAP_WINDOW
    if recovered and not applied and flapping and episode >= 1 and not since:
        return None  # another drop of a flapping episode: summed up once it is quiet
    if not (applied or recovered or since):
        if episode > 1 and _flapping_over(view, now):
            return _flap_summary(event, record, run_url, view, episode)
        if isinstance(data, ProbeHint | TunnelHint) and event.type != "tunnel.up":
            return _observed(event, data, record, run_url, view)
        return None  # nothing happened worth a message
    desired = state.get("ip.v4") or "(unknown)"
    old = next(
        (str(c.old) for r in changed for c in r.changes if c.field == "gatewayIpAddress"),
        state.get("ip.v4.previous") or "(unknown)",
    )
    facts = {"Old IP": old, "New IP": desired, "Run": record.run_id}
    start = _down_since(event, data, record, view)
    facts["Tunnel down for"] = f"{max(record.finished_at - start, 0):.1f}s"
    if isinstance(data, TunnelHint | ProbeHint):
        facts["Noticed by"] = event.source
    if isinstance(data, ProbeHint):
        facts["Probe"] = f"{data.probe} ({data.kind}): {data.reason}"
    steps = " → ".join(f"{r.playbook} ({r.outcome})" for r in record.playbooks)
    down, quorum = probes_down(view)
    if applied:
        title = f"{event.site}: new public IP {desired} applied, tunnel back"
    elif recovered and len(down) >= quorum:
        title = f"{event.site}: nothing passed the tunnel; a reset brought it back"
        facts["Probes failing"] = ", ".join(down)
    elif recovered:
        title = f"{event.site}: tunnel was down; a reset brought it back"
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


def incident_of(event: Event, data: Data, view: SiteView) -> str:
    """The outage's identity: the ``incident.since`` the run's record opens (or opened), so a
    retry of the same outage names the same incident (approval requests are keyed by it)."""
    return view.state.get("incident.since") or f"{_since(event, data, view, view.now):.3f}"


def _down_since(event: Event, data: Data, record: RunRecord, view: SiteView) -> float:
    return _since(event, data, view, record.started_at)


def _since(event: Event, data: Data, view: SiteView, started: float) -> float:
    state = view.state
    for value in (
        state.get("incident.since"),
        data.since if isinstance(data, TunnelHint) else None,
        state.get("tunnel.since")
        if state.get("tunnel.status") not in (None, "Connected")
        else None,
        state.get("ip.v4.since") if event.type == "ip.changed" else None,
    ):
        if value:
            return float(value)
    return started


def _observed(
    event: Event,
    data: ProbeHint | TunnelHint,
    record: RunRecord,
    run_url: str | None,
    view: SiteView,
) -> Notification | None:
    """A hint that needed no change: a probe failing on its own, a tunnel with no traffic."""
    if isinstance(data, ProbeHint):
        failover = view.config.failover if view.config is not None else None
        if failover is not None and data.probe in (
            *failover.primary_probes,
            *failover.secondary_probes,
        ):
            return None  # a path's probe: the failover reconciler tells of the path, damped
        down, quorum = probes_down(view)
        if event.type == "probe.recovered":
            title = f"{event.site}: probe {data.probe} answers again"
            severity, why = Severity.INFO, data.detail or data.reason
        else:
            title = f"{event.site}: probe {data.probe} fails ({data.reason})"
            severity = Severity.WARNING
            why = (
                f"{data.detail}. Not through the tunnel, so not a reason to reset."
                if not data.through_tunnel
                else f"{data.detail}. {len(down)} of the site's through-tunnel probes fail; "
                f"a reset needs {quorum}."
            )
        facts = {"Probe": f"{data.probe} ({data.kind})", "Run": record.run_id}
    else:
        if event.type != "tunnel.degraded":
            return None
        title = f"{event.site}: tunnel Connected but degraded"
        severity, why = Severity.WARNING, data.detail
        facts = {"Noticed by": event.source, "Run": record.run_id}
    return Notification(
        severity=severity,
        title=title,
        site=event.site,
        summary=why,
        facts=facts,
        run_url=run_url,
        event_id=event.id,
    )


def _flap_summary(
    event: Event, record: RunRecord, run_url: str | None, view: SiteView, drops: int
) -> Notification:
    state = view.state
    first = time.strftime("%H:%M", time.localtime(float(state.get("flap.first") or 0)))
    last = time.strftime("%H:%M", time.localtime(float(state.get("flap.last") or 0)))
    return Notification(
        severity=Severity.WARNING,
        title=f"{event.site}: tunnel stable again after {drops} drops",
        site=event.site,
        summary=f"The tunnel dropped {drops} times between {first} and {last}; each time it was "
        "brought back. Quiet since.",
        facts={"Drops": str(drops), "Run": record.run_id},
        run_url=run_url,
        next_step="Frequent drops usually mean DPD or lifetime mismatches, or a flaky uplink.",
        event_id=event.id,
    )


def _held(
    event: Event, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    if not record.retry_at or not record.reason.startswith("rate limit"):
        return None
    told = view.state.get("reconcile.held_until")
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


def _handler(event_type: str, model: type[BaseModel], summary: str) -> Handler:
    return Handler(
        event_type,
        model,
        decide,
        summary,
        remember=remember,
        describe=describe,
        reconciles=True,
    )


HANDLERS = [
    _handler("ip.changed", IpChanged, "converge the site to its latest observed public IP"),
    _handler("site.reconcile", Reconcile, "re-check the site (resync, retry, held change due)"),
    _handler("tunnel.down", TunnelHint, "the tunnel dropped: confirm and heal"),
    _handler("tunnel.up", TunnelHint, "the tunnel is back: confirm, close the incident"),
    _handler("tunnel.degraded", TunnelHint, "Connected but passing nothing: tell people"),
    _handler("probe.failed", ProbeHint, "a probe fails: reset if a quorum fails through it"),
    _handler("probe.recovered", ProbeHint, "a probe answers again"),
]

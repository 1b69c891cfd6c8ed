"""The failover reconciler: traffic on the path the damping says, and the actor set to match.

A site with ``[sites.NAME.failover]`` has two paths. Its device fails over by itself (dead
peer detection); this reconciler keeps it from flapping back to a half-up primary, and fails
back when, and only when, the primary is stable (``bot.damping``, research §C5).

Inputs, all read from the site's state under its lock (events are only hints):

- ``path.primary.*``: what the path sampler (``bot.sources.paths``) saw of the primary;
- ``damping.*``: what this reconciler decided before (penalty, where traffic is, the verify
  window of a failback, a manual hold);
- ``failover.hold``: a person's hold (``indefinite`` or a time; set by the CLI or chat).

Hints: ``path.failed`` and ``failback.needed`` from the sampler, ``failover.check`` from the
scheduler (the timers of the damping: end of the stability window, of the penalty, of a
verify window; and the periodic resync).

Every run converges the *actor* to what the damping state asks for, so a converged run only
reads, and a device someone changed by hand is put back:

==================  ==============================================================
actor               desired state
==================  ==============================================================
``sonicwall``       ``preempt_secondary_gateway`` on only while a failback waits for
                    traffic to move (``sonicwall-preempt``); off otherwise, so the
                    appliance never fails back by itself to a flapping primary
``kemp``            the primary real server enabled while traffic belongs on the
                    primary (``kemp-real-server``)
``traffic-manager`` the site's endpoint enabled likewise (``traffic-manager-endpoint``)
==================  ==============================================================

The primary is kept (not disabled) when the secondary is judged down too: there is nothing
to fail over to. While a failback is being verified, the run also proves traffic really is
on the primary: the tunnel through the primary gateway (``verify-tunnel via=``, SonicWall on
an active-active gateway) and the site's through-tunnel probes (``verify-probes``). The
run's outcome is the failback's verdict: a failed verify rolls back at once (a flap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot import damping
from bot.chat.models import Notification, Severity
from bot.config import FailoverConfig, SiteConfig
from bot.damping import (
    Action,
    DampingState,
    Notify,
    PathSamples,
    failback_result,
    hold,
    next_wakeup,
    release,
)
from bot.events import Event
from bot.models import Decision, PlaybookCall, RunRecord
from bot.scheduler import FAILOVER
from handlers.base import Handler, SiteView, gate

VERIFIERS = ("verify-tunnel", "verify-probes")
F = TypeVar("F", DampingState, PathSamples)


class FailoverCheck(BaseModel):
    """``failover.check``: the scheduler's timer or resync; a person's nudge."""

    model_config = ConfigDict(extra="forbid")


class PathHint(BaseModel):
    """``path.failed`` / ``failback.needed`` from the path sampler (context for messages)."""

    model_config = ConfigDict(extra="forbid")
    path: Literal["primary", "secondary"] = "primary"
    failing: list[str] = Field(default_factory=list, max_length=32)
    detail: str = Field("", max_length=500)


Data = FailoverCheck | PathHint


def load(kind: type[F], state: dict[str, str], prefix: str) -> F:
    """A damping record from the site's hash; a malformed one starts afresh."""
    fields = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        return kind.from_fields(fields)
    except ValidationError:
        return kind()


def held_until(view: SiteView) -> float | Literal["indefinite"] | None:
    """The hold a person asked for (``failover.hold``), if it is still in force."""
    raw = view.state.get("failover.hold", "")
    if raw == "indefinite":
        return "indefinite"
    try:
        until = float(raw)
    except ValueError:
        return None
    return until if until > view.now else None


@dataclass(frozen=True)
class Judgement:
    """What the damping decides at the run's time, from the site's state."""

    cfg: FailoverConfig
    state: DampingState
    obs: PathSamples
    secondary_up: bool
    actions: list[Action]

    @property
    def verifying(self) -> bool:
        """A failback waits for its verdict (this run verifies it)."""
        return self.state.verify_until is not None and not self.state.verify_ok


def judge(view: SiteView) -> Judgement | None:
    """Pure: the same view gives the same judgement (``decide``, ``remember`` and
    ``describe`` each call it). None when the site has no failover pair."""
    site = view.config
    if site is None or site.failover is None:
        return None
    cfg = site.failover
    state = load(DampingState, view.state, "damping.")
    obs = load(PathSamples, view.state, "path.primary.")
    secondary = load(PathSamples, view.state, "path.secondary.")
    actions: list[Action] = []
    want = held_until(view)
    if want == "indefinite" and not state.hold_indefinite:
        state, actions = hold(state, None)
    elif isinstance(want, float) and state.hold_until != want:
        state, actions = hold(state, want)
    elif (
        want is None
        and (state.hold_indefinite or state.hold_until is not None)
        and view.state.get("failover.hold", "") == ""  # released by a person, not expired
    ):
        state, actions = release(state)
    state, more = damping.decide(state, obs, cfg.damping, view.now)
    return Judgement(
        cfg, state, obs, secondary.judged_up or not cfg.secondary_probes, [*actions, *more]
    )


def after_run(view: SiteView, record: RunRecord) -> Judgement | None:
    """The judgement with the run's verdict on a failback folded in."""
    j = judge(view)
    if j is None or not j.verifying:
        return j
    verdict = _verdict(record)
    if verdict is None:
        return j
    state, more = failback_result(j.state, j.obs, j.cfg.damping, record.finished_at, verdict)
    return Judgement(j.cfg, state, j.obs, j.secondary_up, [*j.actions, *more])


def _verdict(record: RunRecord) -> bool | None:
    """True: traffic proved on the primary; False: a verify failed; None: the run never got
    to judge it (the device was busy, Azure did not answer): try again."""
    if record.outcome in ("ok", "no_changes"):
        return True
    for result in record.playbooks:
        if result.outcome == "failed" and (
            result.playbook in VERIFIERS or result.error_code == "VerifyFailed"
        ):
            return False
    return None


# --- the actor ----------------------------------------------------------------------------


def actor_calls(site: SiteConfig, j: Judgement) -> list[PlaybookCall]:
    """The actor's desired state as idempotent calls, then (while a failback waits for its
    verdict) the proof that traffic is on the primary."""
    cfg = j.cfg
    on_primary = j.state.active == "primary" or not j.secondary_up
    calls: list[PlaybookCall]
    if cfg.actor == "sonicwall":
        preempt = j.verifying  # only to move traffic back; never left on to flap by itself
        params: dict[str, object] = {"enabled": preempt, "interval": cfg.preempt_interval}
        calls = [PlaybookCall(name="sonicwall-preempt", params=_device(cfg, params))]
    elif cfg.actor == "kemp":
        params = {"server": cfg.primary, "enabled": on_primary}
        calls = [PlaybookCall(name="kemp-real-server", params=_device(cfg, params))]
    else:
        params = {"enabled": on_primary}
        if j.verifying:
            params.update(timeout=cfg.verify_timeout)
        calls = [PlaybookCall(name="traffic-manager-endpoint", params=params)]
    if not j.verifying:
        return calls
    if cfg.actor == "sonicwall" and site.connection:
        calls.append(
            PlaybookCall(
                name="verify-tunnel", params={"via": cfg.primary, "timeout": cfg.verify_timeout}
            )
        )
    if any(p.through_tunnel for p in site.probes):
        calls.append(PlaybookCall(name="verify-probes", params={"timeout": cfg.verify_timeout}))
    return calls


def _device(cfg: FailoverConfig, params: dict[str, object]) -> dict[str, object]:
    return {**params, "device": cfg.device} if cfg.device else params


# --- the handler ------------------------------------------------------------------------------


async def decide(event: Event, data: Data, view: SiteView) -> Decision:
    j = judge(view)
    if j is None or view.config is None:
        return Decision.skip(f"site {view.site} has no [failover] pair configured")
    held = gate(view, changes=False)  # paused sites are left alone; damping is the limit
    if held is not None:
        return held
    said = [a.text for a in j.actions if isinstance(a, Notify)]
    where = f"traffic on {j.state.active}"
    if j.state.active == "secondary" and not j.secondary_up:
        where += " (secondary judged down too)"
    # A failback's verdict is taken by this run: come back right after to act on it.
    wake = view.now if j.verifying else next_wakeup(j.state, j.obs, j.cfg.damping, view.now)
    return Decision(
        playbooks=actor_calls(view.config, j), reason="; ".join([*said, where]), wake_at=wake
    )


def remember(event: Event, data: Data, record: RunRecord, view: SiteView) -> dict[str, str | None]:
    """The damping state as decided (with the run's failback verdict): written with the run's
    record, fenced, so a worker that lost the site writes nothing."""
    j = after_run(view, record)
    if j is None or record.outcome == "skipped":
        return {}
    out: dict[str, str | None] = {f"damping.{k}": v for k, v in j.state.to_fields().items()}
    out["failover.active"] = j.state.active
    return out


def describe(
    event: Event, data: Data, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification | None:
    """One message per run that changed something people care about (failover, suppression
    once per episode, failback, rollback, stable again, holds); failures once, not per retry."""
    j = after_run(view, record)
    if j is None or record.outcome == "skipped":
        return None
    notes = [a for a in j.actions if isinstance(a, Notify)]
    if record.outcome not in ("ok", "no_changes") and not notes:
        if view.state.get("failover.status") in ("retrying", "failed"):
            return None  # told at the first failure
        failed = next((r for r in record.playbooks if r.outcome != "ok"), None)
        what = f"{failed.playbook}: {failed.error}" if failed and failed.error else record.outcome
        return Notification(
            severity=Severity.ERROR,
            title=f"{event.site}: failover actor does not converge",
            site=event.site,
            summary=what,
            facts={"Traffic": j.state.active, "Actor": j.cfg.actor, "Run": record.run_id},
            run_url=run_url,
            next_step="tunnelwarden keeps retrying with backoff; check the device's API access.",
            event_id=event.id,
        )
    if not notes:
        return None
    first = min(notes, key=lambda n: TITLE_ORDER.index(n.kind))
    severity = Severity.WARNING if first.kind in WARNINGS else Severity.INFO
    path = j.cfg.primary if j.state.active == "primary" else j.cfg.secondary
    return Notification(
        severity=severity,
        title=f"{event.site}: {first.text}"[:200],
        site=event.site,
        summary="\n".join(n.text for n in notes if n is not first),
        facts={
            "Traffic": f"{j.state.active} ({path})",
            "Actor": j.cfg.actor,
            "Penalty": f"{j.state.penalty:.0f}",
            "Run": record.run_id,
        },
        run_url=run_url,
        event_id=event.id,
    )


# The most telling note of a run makes the title.
TITLE_ORDER = ["rolled_back", "suppressed", "failover", "failback", "stable", "held", "released"]
WARNINGS = frozenset({"rolled_back", "suppressed", "failover"})


def _handler(event_type: str, model: type[BaseModel], summary: str) -> Handler:
    return Handler(
        event_type,
        model,
        decide,
        summary=summary,
        remember=remember,
        describe=describe,
        reconciles=True,
        requeue=FAILOVER,
        status="failover",
    )


HANDLERS = [
    _handler(FAILOVER, FailoverCheck, "re-judge the failover pair (timer, resync, a nudge)"),
    _handler("path.failed", PathHint, "the primary path is judged down: fail over, count a flap"),
    _handler("failback.needed", PathHint, "the primary is back: fail back once it is stable"),
]

"""Probes as a source: run each site's probes on schedule and publish only transitions.

Each configured probe (``[[sites.NAME.probes]]``, ``bot.probes``) is one more poller under the
sources' leader lease, so a probe runs on one replica (an IKEv2 probe leaves a half-open SA on
the responder: N replicas probing would be N times that). Every result goes to a capped time
series per probe (``tw:site:{S}:probe:{NAME}``) and to metrics (``tunnelwarden_probe_up``,
``tunnelwarden_probe_latency_seconds``); the probe's state (up/down, the current streak) is
kept in the site's state, and only a change publishes a hint: ``probe.failed`` after
``fail_after`` failures in a row, ``probe.recovered`` after ``recover_after`` successes.
Whether a failure means the site is down (a quorum of its probes) is the handler's judgement.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bot.events import Event
from bot.probes import AnyProbe, ProbeResult, probe
from bot.queue import as_fields
from bot.services import Services

log = logging.getLogger("tunnelwarden.probes")
SERIES_MAXLEN = 1000


@dataclass(frozen=True)
class ProbeState:
    state: str  # "up", "down", or "" before the first judgement
    streak: int  # > 0: successes in a row, < 0: failures in a row
    since: float  # when the state began

    @classmethod
    def from_state(cls, state: dict[str, str], name: str) -> ProbeState:
        return cls(
            state=state.get(f"probe.{name}.state", ""),
            streak=int(state.get(f"probe.{name}.streak") or 0),
            since=float(state.get(f"probe.{name}.since") or 0),
        )


def advance(
    prev: ProbeState, ok: bool, now: float, spec: AnyProbe
) -> tuple[ProbeState, str | None]:
    """The probe's new state after one result, and ``failed``/``recovered`` on a change."""
    if ok:
        streak = prev.streak + 1 if prev.streak > 0 else 1
    else:
        streak = prev.streak - 1 if prev.streak < 0 else -1
    if not ok and -streak >= spec.fail_after and prev.state != "down":
        return ProbeState("down", streak, now), "failed"
    if ok and streak >= spec.recover_after and prev.state != "up":
        event = "recovered" if prev.state == "down" else None
        return ProbeState("up", streak, now), event
    return ProbeState(prev.state, streak, prev.since), None


class ProbePoller:
    """One site's probe, as a poller (``bot.sources.pollers.Poller``)."""

    def __init__(self, services: Services, site: str, spec: AnyProbe) -> None:
        self.services = services
        self.site = site
        self.spec = spec
        self.name = f"probe {site}/{spec.name}"

    @property
    def interval(self) -> float:
        return float(self.spec.interval)

    async def poll(self) -> str | None:
        result = await probe(self.spec)
        return await self.record(result)

    async def record(self, result: ProbeResult) -> str | None:
        services, spec, site = self.services, self.spec, self.site
        metrics = services.metrics
        metrics.probe_up.labels(site, spec.name).set(1 if result.ok else 0)
        if result.latency_s is not None:
            metrics.probe_latency.labels(site, spec.name).observe(result.latency_s)
        now = time.time()
        state = await services.state.site_state(site)
        prev = ProbeState.from_state(state, spec.name)
        new, event = advance(prev, result.ok, now, spec)
        entry = {
            "ok": "1" if result.ok else "0",
            "reason": result.reason,
            "detail": services.redact(result.detail)[:300],
            "latency": "" if result.latency_s is None else f"{result.latency_s:.4f}",
        }
        pipe = services.redis.pipeline(transaction=False)
        pipe.xadd(
            services.keys.probe(site, spec.name),
            as_fields(entry),
            maxlen=SERIES_MAXLEN,
            approximate=True,
        )
        await pipe.execute()
        if event is not None:
            await services.queue.publish(
                Event.new(
                    f"probe.{event}",
                    site,
                    source="probes",
                    data={
                        "probe": spec.name,
                        "kind": spec.kind,
                        "through_tunnel": spec.through_tunnel,
                        "reason": result.reason,
                        "detail": entry["detail"],
                    },
                    idempotency_key=f"probe.{event}:{site}:{spec.name}:{now:.0f}",
                )
            )
            log.info("site %s: probe %s %s (%s)", site, spec.name, event, entry["detail"])
        prefix = f"probe.{spec.name}"
        await services.state.set_site_state(
            site,
            {
                f"{prefix}.state": new.state,
                f"{prefix}.streak": str(new.streak),
                f"{prefix}.since": f"{new.since:.3f}",
                f"{prefix}.reason": result.reason,
                f"{prefix}.detail": entry["detail"],
                f"{prefix}.checked": f"{now:.3f}",
                f"{prefix}.through": "1" if spec.through_tunnel else "0",
            },
        )
        return event

"""Hold back a newly detected IP until it has been stable for a while.

Echo services and routers briefly report stale or transitional addresses (see
qdm12/ddns-updater#351); rewriting the Azure gateway on every blip would flap the tunnel. A new
address is reported only after it was seen for `polls` consecutive observations and/or for
`seconds`, and seeing the old address again in between cancels it. Pure logic: the clock is
injected, nothing is scheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bot.sources.models import DebounceConfig as DebounceConfig  # re-exported, lives in `models`

Clock = Callable[[], float]
DecisionKind = Literal["report", "pending", "unchanged", "cancelled"]


@dataclass(frozen=True, slots=True)
class DebounceDecision:
    """What `observe`/`due` concluded for one site.

    - `report`: `ip` is now the accepted value (was `previous`); act on it.
    - `pending`: `ip` is a candidate, seen `observations` times over `elapsed_s` seconds.
    - `unchanged`: `ip` equals the accepted value and nothing was pending.
    - `cancelled`: the accepted value came back, so the pending candidate `ip` was dropped.
    """

    kind: DecisionKind
    site: str
    ip: str
    previous: str | None
    observations: int = 0
    elapsed_s: float = 0.0


@dataclass(slots=True)
class _Candidate:
    ip: str
    since: float
    count: int


class Debouncer:
    """Per-site debouncing of IP observations; callers feed only successful detections."""

    def __init__(self, config: DebounceConfig, *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._stable: dict[str, str] = {}
        self._pending: dict[str, _Candidate] = {}

    def seed(self, site: str, ip: str) -> None:
        """Set the accepted value (e.g. the LNG's current address) without reporting it."""
        self._stable[site] = ip
        self._pending.pop(site, None)

    def stable(self, site: str) -> str | None:
        """The last accepted (reported or seeded) value for `site`."""
        return self._stable.get(site)

    def pending(self, site: str) -> tuple[str, int, float] | None:
        """The pending candidate as `(ip, observations, first_seen)` or None."""
        cand = self._pending.get(site)
        return None if cand is None else (cand.ip, cand.count, cand.since)

    def forget(self, site: str) -> None:
        """Drop all state for `site` (site removed from config)."""
        self._stable.pop(site, None)
        self._pending.pop(site, None)

    def observe(self, site: str, ip: str) -> DebounceDecision:
        """Record one successful detection of `ip` for `site` and decide.

        A site with no accepted value treats its first address like any other change, so seed
        from stored state first if it should not be reported.
        """
        now = self._clock()
        previous = self._stable.get(site)
        cand = self._pending.get(site)
        if ip == previous:
            if cand is None:
                return DebounceDecision("unchanged", site, ip, previous)
            del self._pending[site]
            return DebounceDecision(
                "cancelled", site, cand.ip, previous, cand.count, now - cand.since
            )
        if cand is None or cand.ip != ip:
            cand = _Candidate(ip=ip, since=now, count=0)
            self._pending[site] = cand
        cand.count += 1
        return self._evaluate(site, cand, previous, now)

    def due(self) -> list[DebounceDecision]:
        """Report candidates whose time threshold passed without a new observation.

        For push sources (dyndns2) that send once and then stay silent; call it from a timer.
        """
        now = self._clock()
        out: list[DebounceDecision] = []
        for site, cand in list(self._pending.items()):
            decision = self._evaluate(site, cand, self._stable.get(site), now)
            if decision.kind == "report":
                out.append(decision)
        return out

    def _evaluate(
        self, site: str, cand: _Candidate, previous: str | None, now: float
    ) -> DebounceDecision:
        elapsed = now - cand.since
        if self._satisfied(cand.count, elapsed):
            self._stable[site] = cand.ip
            del self._pending[site]
            return DebounceDecision("report", site, cand.ip, previous, cand.count, elapsed)
        return DebounceDecision("pending", site, cand.ip, previous, cand.count, elapsed)

    def _satisfied(self, count: int, elapsed: float) -> bool:
        cfg = self._config
        checks: list[bool] = []
        if cfg.polls > 0:
            checks.append(count >= cfg.polls)
        if cfg.seconds > 0:
            checks.append(elapsed >= cfg.seconds)
        if not checks:
            return True
        return all(checks) if cfg.combine == "all" else any(checks)

"""The path sampler: a failover site's path probes, run together, one sample per path per round.

For a site with ``[sites.NAME.failover]`` the probes that judge its paths (``primary_probes``,
``secondary_probes``) are run here as one poller (under the sources' lease, like every
probe) instead of one poller each, so each round gives one judged sample per path: the
primary is *failing* in a round when at least ``quorum`` of its probes fail (by default two,
so one dead probe target cannot fail a path over). Each probe's own result is still recorded
as usual (its series, metrics, ``probe.*`` state and hints: ``bot.sources.probing``).

The samples go through ``bot.damping.sample`` into the site's state (``path.primary.*``,
``path.secondary.*``; this poller is their only writer) and only an edge publishes a hint
for the failover reconciler (``handlers.failover``):

- ``path.failed`` when the primary is judged down (``fail_after`` failing samples in a row);
- ``failback.needed`` at the ``success_after``-th good sample in a row while the reconciler
  has traffic on the secondary.

Everything else (stability windows, penalties) is the reconciler's, on the scheduler's timers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from pydantic import JsonValue

from bot.config import SiteConfig
from bot.damping import Edge, PathSamples, sample
from bot.events import Event
from bot.probes import AnyProbe, ProbeResult, probe
from bot.services import Services
from bot.sources.probing import ProbePoller

log = logging.getLogger("tunnelwarden.paths")


def path_probes(site: SiteConfig) -> set[str]:
    """Names of the probes the site's path sampler runs (none without a failover pair)."""
    fo = site.failover
    return set() if fo is None else {*fo.primary_probes, *fo.secondary_probes}


def failing(names: list[str], results: Mapping[str, ProbeResult]) -> list[str]:
    return [n for n in names if n in results and not results[n].ok]


class PathPoller:
    """One failover site's paths, as a poller (``bot.sources.pollers.Poller``)."""

    def __init__(self, services: Services, site: str, config: SiteConfig) -> None:
        assert config.failover is not None, "a path sampler needs a failover pair"
        self.services = services
        self.site = site
        self.failover = config.failover
        names = path_probes(config)
        self.specs: dict[str, AnyProbe] = {p.name: p for p in config.probes if p.name in names}
        self.recorders = {n: ProbePoller(services, site, s) for n, s in self.specs.items()}
        self.name = f"paths {site}"

    @property
    def interval(self) -> float:
        if self.failover.interval is not None:
            return self.failover.interval
        return float(min(s.interval for s in self.specs.values()))

    async def poll(self) -> str | None:
        names = list(self.specs)
        results = await asyncio.gather(*(probe(self.specs[n]) for n in names))
        by_name = dict(zip(names, results, strict=True))
        for name, result in by_name.items():
            await self.recorders[name].record(result)
        return await self.judge(by_name)

    async def judge(
        self, results: Mapping[str, ProbeResult], now: float | None = None
    ) -> str | None:
        """Take one sample of each path from this round's results; publish an edge."""
        now = time.time() if now is None else now
        fo, services, site = self.failover, self.services, self.site
        state = await services.state.site_state(site)
        fields: dict[str, str] = {}
        edges: dict[str, Edge | None] = {}
        for path, names, quorum in (
            ("primary", fo.primary_probes, fo.primary_quorum),
            ("secondary", fo.secondary_probes, min(2, len(fo.secondary_probes))),
        ):
            if not names:
                continue
            bad = failing(names, results)
            prefix = f"path.{path}."
            before = _load(state, prefix)
            after, edges[path] = sample(before, fo.damping, now, len(bad) < quorum)
            fields.update({prefix + k: v for k, v in after.to_fields().items()})
            fields[prefix + "failing"] = ",".join(bad)
        await services.state.set_site_state(site, fields)
        edge = edges.get("primary")
        bad = failing(fo.primary_probes, results)
        detail = "; ".join(f"{n}: {results[n].reason} ({results[n].detail})" for n in bad)
        if edge == "failed":
            await self._publish("path.failed", now, bad, services.redact(detail)[:500])
            return "path.failed"
        if edge == "recovered" and state.get("damping.active") == "secondary":
            await self._publish("failback.needed", now, [], "")
            return "failback.needed"
        return None

    async def _publish(self, kind: str, now: float, bad: list[str], detail: str) -> None:
        log.info("site %s: %s %s", self.site, kind, detail, extra={"site": self.site})
        names: list[JsonValue] = [*bad]
        await self.services.queue.publish(
            Event.new(
                kind,
                self.site,
                source="paths",
                data={"path": "primary", "failing": names, "detail": detail},
                idempotency_key=f"{kind}:{self.site}:{now:.3f}",
            )
        )


def _load(state: Mapping[str, str], prefix: str) -> PathSamples:
    from handlers.failover import load

    return load(PathSamples, dict(state), prefix)

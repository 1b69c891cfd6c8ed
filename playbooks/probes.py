"""``verify-probes``: prove a site works end to end by its own probes (nothing is changed).

The site's probes (``[[sites.NAME.probes]]``) run now, from this worker: by default the ones
marked ``through_tunnel`` (a host inside the tunnel answers only when traffic really passes).
Converged when enough of them answer (all, unless ``need`` says fewer); otherwise it waits,
running them every ``interval`` seconds, and if they keep failing says which fail and why.
A failback is verified with it: a primary that answers IKE but passes nothing fails here.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from bot.models import Change, Plan
from bot.probes import AnyProbe, ProbeResult, probe
from bot.retry import PermanentError, sample_until
from playbooks.base import Playbook, RunContext


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probes: list[str] | None = Field(
        None, description="probe names (default: the site's through-tunnel probes)"
    )
    need: int | None = Field(None, ge=1, description="how many must answer (default: all)")
    timeout: float = Field(120.0, ge=0, le=3600, description="seconds to wait for them")
    interval: float = Field(5.0, gt=0, le=300, description="seconds between rounds")


def _chosen(ctx: RunContext, params: ProbeParams) -> list[AnyProbe]:
    site = ctx.site_config
    specs = list(site.probes) if site is not None else []
    if params.probes is None:
        chosen = [p for p in specs if p.through_tunnel]
        if not chosen:
            raise PermanentError(
                f"site {ctx.site!r} has no through-tunnel probes to verify with "
                "(mark one with through_tunnel = true, or name probes=...)",
                "NotConfigured",
            )
        return chosen
    by_name = {p.name: p for p in specs}
    unknown = [n for n in params.probes if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise PermanentError(
            f"site {ctx.site!r} has no probe {', '.join(unknown)} (probes: {known})",
            "NotConfigured",
        )
    return [by_name[n] for n in params.probes]


async def _round(specs: list[AnyProbe]) -> dict[str, ProbeResult]:
    results = await asyncio.gather(*(probe(s) for s in specs))
    return {s.name: r for s, r in zip(specs, results, strict=True)}


def _enough(results: dict[str, ProbeResult], need: int) -> bool:
    return sum(r.ok for r in results.values()) >= need


def _failing(results: dict[str, ProbeResult]) -> str:
    return "; ".join(f"{n}: {r.reason} ({r.detail})" for n, r in results.items() if not r.ok)


class VerifyProbes(Playbook[ProbeParams]):
    name = "verify-probes"
    summary = "Run the site's probes (through-tunnel by default) until they answer, or say why"
    params_model = ProbeParams

    def _need(self, specs: list[AnyProbe], params: ProbeParams) -> int:
        return min(params.need or len(specs), len(specs))

    async def plan(self, ctx: RunContext, params: ProbeParams) -> Plan:
        specs = _chosen(ctx, params)
        results = await _round(specs)
        if _enough(results, self._need(specs, params)):
            return Plan()
        return Plan(
            changes=[
                Change(target=f"probe {n}", field="answers", old=r.reason, new="ok")
                for n, r in results.items()
                if not r.ok
            ]
        )

    async def apply(self, ctx: RunContext, params: ProbeParams, plan: Plan) -> str:
        specs = _chosen(ctx, params)
        need = self._need(specs, params)
        began = time.monotonic()
        waited = await sample_until(
            lambda: _round(specs),
            lambda results: _enough(results, need),
            within=params.timeout,
            every=params.interval,
        )
        took = time.monotonic() - began
        if waited.done:
            return f"{need} of {len(specs)} probes answer after {took:.1f}s"
        return f"probes still failing after {took:.0f}s"

    async def verify(self, ctx: RunContext, params: ProbeParams) -> str | None:
        specs = _chosen(ctx, params)
        results = await _round(specs)
        need = self._need(specs, params)
        if _enough(results, need):
            return None
        ok = sum(r.ok for r in results.values())
        return f"{ok} of {len(specs)} probes answer (need {need}): {_failing(results)}"

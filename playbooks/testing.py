"""Playbooks that exercise the machinery itself: ``noop`` and ``sleep``.

``noop`` is the converged steady state (plan finds nothing to do); ``sleep`` has journaled
steps that take time, so locks, timeouts, shutdown and crash-resume can be watched.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from bot.models import Change, Plan
from playbooks.base import NoParams, Playbook, RunContext


class Noop(Playbook[NoParams]):
    name = "noop"
    summary = "Do nothing: a target that is already converged"
    params_model = NoParams

    async def plan(self, ctx: RunContext, params: NoParams) -> Plan:
        return Plan()

    async def apply(self, ctx: RunContext, params: NoParams, plan: Plan) -> str:
        return "nothing to do"


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, ge=0, le=3600)
    steps: int = Field(1, ge=1, le=100)


class Sleep(Playbook[SleepParams]):
    name = "sleep"
    summary = "Sleep through N journaled steps (machinery check)"
    params_model = SleepParams

    async def plan(self, ctx: RunContext, params: SleepParams) -> Plan:
        return Plan(
            changes=[
                Change(
                    target=f"site {ctx.site}",
                    field="sleep",
                    new=f"{params.seconds}s x{params.steps}",
                )
            ]
        )

    async def apply(self, ctx: RunContext, params: SleepParams, plan: Plan) -> str:
        for i in range(1, params.steps + 1):

            async def nap(i: int = i) -> int:
                await asyncio.sleep(params.seconds)
                return i

            await ctx.step(f"sleep-{i}", nap)
        return f"slept {params.steps} x {params.seconds}s"

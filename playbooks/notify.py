"""``notify``: tell people something. Logs always; chat channels when configured."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.models import Change, Plan
from playbooks.base import Playbook, RunContext


class NotifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=4000)
    severity: Literal["info", "warning", "error", "critical"] = "info"


class Notify(Playbook[NotifyParams]):
    name = "notify"
    summary = "Post a message to the log (and to chat channels, when configured)"
    params_model = NotifyParams

    async def plan(self, ctx: RunContext, params: NotifyParams) -> Plan:
        return Plan(changes=[Change(target=f"site {ctx.site}", field="notify", new=params.message)])

    async def apply(self, ctx: RunContext, params: NotifyParams, plan: Plan) -> str:
        async def send() -> str:
            ctx.log.log(
                _LEVELS[params.severity],
                "notify: %s",
                params.message,
                extra={"site": ctx.site, "run": ctx.run_id},
            )
            return "logged"

        return await ctx.step("send", send)


_LEVELS = {"info": 20, "warning": 30, "error": 40, "critical": 50}

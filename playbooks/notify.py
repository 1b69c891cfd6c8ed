"""``notify``: tell people something. Logs always; chat channels when configured."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.chat.models import Notification, Severity
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
            notifications = ctx.services.notifications
            if not notifications.enabled:
                return "logged"
            results = await notifications.send(
                Notification(
                    severity=Severity(params.severity),
                    title=f"{ctx.site}: {params.message[:120]}",
                    site=ctx.site,
                    summary=params.message,
                    run_url=notifications.run_url(ctx.site, ctx.run_id),
                )
            )
            delivered = sum(r.delivered for r in results)
            return f"logged; delivered to {delivered} of {len(results)} channel(s)"

        return await ctx.step("send", send)


_LEVELS = {"info": 20, "warning": 30, "error": 40, "critical": 50}

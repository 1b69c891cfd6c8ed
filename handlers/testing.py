"""``test.*`` events: check the machinery end to end without touching anything real."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bot.events import Event
from bot.models import Decision, PlaybookCall
from handlers.base import Handler, SiteView, gate


class NoData(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=3600)
    steps: int = Field(1, ge=1, le=100)


class FailData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = "test failure"


async def decide_noop(event: Event, data: NoData, view: SiteView) -> Decision:
    return gate(view, changes=False) or Decision(playbooks=[PlaybookCall(name="noop")])


async def decide_sleep(event: Event, data: SleepData, view: SiteView) -> Decision:
    call = PlaybookCall(name="sleep", params={"seconds": data.seconds, "steps": data.steps})
    return gate(view, changes=False) or Decision(playbooks=[call])


async def decide_fail(event: Event, data: FailData, view: SiteView) -> Decision:
    """A handler that crashes: what a poison event looks like to the worker."""
    raise RuntimeError(data.message)


HANDLERS = [
    Handler("test.noop", NoData, decide_noop, "run the no-op playbook"),
    Handler("test.sleep", SleepData, decide_sleep, "run the sleep playbook"),
    Handler("test.fail", FailData, decide_fail, "crash in the handler (poison event)"),
]

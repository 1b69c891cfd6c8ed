"""``playbook.requested``: a person asked for a playbook (CLI or chat)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from bot.events import Event
from bot.models import Decision, PlaybookCall
from handlers.base import Handler, SiteView, gate


class Requested(BaseModel):
    model_config = ConfigDict(extra="forbid")
    playbook: str = Field(min_length=1)
    params: dict[str, JsonValue] = {}
    requested_by: str = ""


async def decide(event: Event, data: Requested, view: SiteView) -> Decision:
    # A person asked explicitly: only the pause holds it back, not the rate limit.
    stop = gate(view, changes=False)
    if stop is not None:
        return stop
    who = f" by {data.requested_by}" if data.requested_by else ""
    return Decision(
        playbooks=[PlaybookCall(name=data.playbook, params=data.params)],
        reason=f"requested{who}",
    )


HANDLER = Handler("playbook.requested", Requested, decide, "run a playbook on request")

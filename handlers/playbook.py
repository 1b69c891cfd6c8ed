"""``playbook.requested``: a person asked for a playbook (CLI, later chat).

The request passed the same gate as every other entry point before it was queued (known site,
playbook and parameters; the same address rules), and the runner checks parameters and the
destructive marker again. A person's request is held by a site's pause, but not by the
automatic change limit, and it does not count against it.
"""

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
    confirm_destructive: bool = False


async def decide(event: Event, data: Requested, view: SiteView) -> Decision:
    stop = gate(view, changes=False)
    if stop is not None:
        return stop
    who = f" by {data.requested_by}" if data.requested_by else ""
    confirmed = " (destructive, confirmed)" if data.confirm_destructive else ""
    call = PlaybookCall(name=data.playbook, params=data.params, confirmed=data.confirm_destructive)
    return Decision(playbooks=[call], reason=f"requested{who}{confirmed}")


HANDLER = Handler("playbook.requested", Requested, decide, "run a playbook on request")

"""``ip.rejected``: a site's public address moved somewhere useless (private, CGNAT, ...).

Nothing to converge: people are told once what was reported and what to do about it.
(``ip.changed`` is a hint for the site reconciler: ``handlers/site.py``.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.chat.models import Notification, Severity
from bot.events import Event
from bot.models import Decision, RunRecord
from handlers.base import Handler, SiteView


class IpRejected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str = Field(max_length=64)
    family: Literal["v4", "v6"] = "v4"
    reason: str
    message: str


async def decide_rejected(event: Event, data: IpRejected, view: SiteView) -> Decision:
    return Decision.skip(f"{data.ip} rejected: {data.message}")


def describe_rejected(
    event: Event, data: IpRejected, record: RunRecord, run_url: str | None, view: SiteView
) -> Notification:
    cgnat = data.reason == "cgnat"
    return Notification(
        severity=Severity.ERROR if cgnat else Severity.WARNING,
        title=f"{event.site}: reported public IP {data.ip} is not usable",
        site=event.site,
        summary=data.message,
        facts={"Address": data.ip, "Reason": data.reason, "Reported by": event.source},
        run_url=run_url,
        next_step=(
            "Ask the ISP for a public IPv4 address (or a business line): a site behind "
            "carrier-grade NAT cannot accept the tunnel."
            if cgnat
            else "Check what reports this address (router push, echo services) and its settings."
        ),
        event_id=event.id,
    )


HANDLERS = [
    Handler(
        "ip.rejected",
        IpRejected,
        decide_rejected,
        "tell people about an unusable IP",
        describe=describe_rejected,
    ),
]

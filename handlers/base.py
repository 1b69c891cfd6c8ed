"""What a handler sees and returns.

A handler is pure decision logic over state: it gets the event's validated data and a
read-only view of the site, and returns a ``Decision``. It never calls Azure or a device —
that is what playbooks are for — so it is cheap to test and safe to re-run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bot.chat.models import Notification
from bot.config import Policy, SiteConfig
from bot.events import Event
from bot.models import Decision, RunRecord


@dataclass(frozen=True)
class SiteView:
    site: str
    config: SiteConfig | None
    policy: Policy
    state: dict[str, str]
    changes_last_hour: int


Decide = Callable[[Event, Any, SiteView], Awaitable[Decision]]
# What to remember in the site's state after a run (e.g. the address now applied).
Remember = Callable[[Event, Any, RunRecord], dict[str, str]]
# How to tell people about a run; None means "not worth a message".
Describe = Callable[[Event, Any, RunRecord, str | None], Notification | None]


@dataclass(frozen=True)
class Handler:
    event_type: str
    data_model: type[BaseModel]
    decide: Decide
    summary: str = ""
    remember: Remember | None = None
    describe: Describe | None = None


def gate(view: SiteView, *, changes: bool) -> Decision | None:
    """The safety valves every handler applies: maintenance pause and change rate limit."""
    if view.policy.paused or view.state.get("paused") == "1":
        return Decision.skip(f"site {view.site} is paused")
    if changes and view.changes_last_hour >= view.policy.max_changes_per_hour > 0:
        return Decision.skip(
            f"rate limit: {view.changes_last_hour} changes in the last hour "
            f"(max {view.policy.max_changes_per_hour})"
        )
    return None

"""What a handler sees and returns.

A handler is pure decision logic over state: it gets the event's validated data and a
read-only view of the site, and returns a ``Decision``. It never calls Azure or a device —
that is what playbooks are for — so it is cheap to test and safe to re-run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from bot.chat.models import Notification
from bot.config import Policy, SiteConfig
from bot.events import Event
from bot.models import Decision, RunRecord
from bot.scheduler import RECONCILE


@dataclass(frozen=True)
class SiteView:
    """The site as the run found it, read under its lock (the latest state, not the event's)."""

    site: str
    config: SiteConfig | None
    policy: Policy
    state: dict[str, str]
    changes_last_hour: int
    oldest_change_at: float | None = None
    fence: int = 0
    manual: bool = False  # the event is a person's request (CLI, chat)
    now: float = field(default_factory=time.time)  # the run's clock: decide, remember, describe


Decide = Callable[[Event, Any, SiteView], Awaitable[Decision]]
# State fields to set (or, with None, delete) with the run's record, in the same fenced write.
Remember = Callable[[Event, Any, RunRecord, SiteView], dict[str, str | None]]
# How to tell people about a run; None means "not worth a message" (e.g. told already).
Describe = Callable[[Event, Any, RunRecord, str | None, SiteView], Notification | None]


@dataclass(frozen=True)
class Handler:
    """``reconciles``: the handler converges the site to its desired state (hints such as
    ``ip.changed`` and ``site.reconcile``); its runs keep the site's status fields
    (``{status}.status``, ``.error``, ``.attempt``, ...) and schedule ``requeue`` events for
    retries, resyncs and the decision's ``wake_at``. A site has one such reconciler per
    concern (its tunnel: ``site.reconcile``; its failover pair: ``failover.check``), all
    serialised by the site lock. Other handlers carry out one request (``playbook.requested``).
    """

    event_type: str
    data_model: type[BaseModel]
    decide: Decide
    summary: str = ""
    remember: Remember | None = None
    describe: Describe | None = None
    reconciles: bool = False
    requeue: str = RECONCILE
    status: str = "reconcile"


def gate(view: SiteView, *, changes: bool) -> Decision | None:
    """The safety valves every handler applies: maintenance pause and the change rate limit
    (automatic changes only: a person's request is neither held nor counted)."""
    if view.policy.paused or view.state.get("paused") == "1":
        return Decision.skip(f"site {view.site} is paused")
    limit = view.policy.max_changes_per_hour
    if changes and not view.manual and view.changes_last_hour >= limit > 0:
        return Decision.skip(
            f"rate limit: {view.changes_last_hour} automatic changes in the last hour "
            f"(max {limit})",
            retry_at=_window_end(view),
        )
    return None


def _window_end(view: SiteView) -> float:
    """When the oldest change of the last hour leaves the window."""
    if view.oldest_change_at is None:
        return time.time() + 300
    return view.oldest_change_at + 3600 + 1

"""The ARM tunnel watcher: notices a dropped tunnel without being told.

Listing connections does not return ``connectionStatus`` (azure-powershell#2581,
azure-cli#2061: the status is filled in on a GET by name only), so the watcher GETs each
configured connection in turn, spread evenly over ``[watcher] interval`` (a sweep), and never
faster than its share of the subscription's ARM read budget (``read_share`` of 25 reads/s);
as ``x-ms-ratelimit-remaining-subscription-reads`` falls it slows down further. Its reads are
background sweeps for the shared ARM budget (``bot.budget``): they wait their turn behind
reconciles and never take the budget's last ``sweep_reserve``; when the budget defers one the
watcher skips the turn and slows down until reads are free again.

What it sees is recorded in the site's state (``tunnel.*``), and only a change publishes a hint:

- ``tunnel.down`` once the status has been other than Connected for ``debounce`` seconds;
- ``tunnel.up`` when it is Connected again after a reported drop;
- ``tunnel.degraded`` when it is Connected but no bytes moved for ``idle_sweeps`` sweeps, or
  one tunnel of an active-active pair is down.

The watcher runs as one more poller under the sources' leader lease, so one replica reads.
``judge`` is the whole decision, pure, for tests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from bot.budget import BudgetDeferred, Priority
from bot.budget import priority as budget_priority
from bot.config import WatcherConfig
from bot.events import Event
from bot.services import Services

if TYPE_CHECKING:
    from azure.mgmt.network.aio import NetworkManagementClient

log = logging.getLogger("tunnelwarden.watcher")

ARM_READS_PER_SECOND = 25.0  # ARM's documented refill per subscription (bucket of 250)
REMAINING_HEADER = "x-ms-ratelimit-remaining-subscription-reads"
LOW_REMAINING = 50  # below this many reads left, slow down in proportion


@dataclass(frozen=True)
class Seen:
    """What the watcher last saw of a site's connection (kept in the site state)."""

    status: str
    since: float  # when this status was first seen
    total_bytes: int
    idle: int  # sweeps Connected with no bytes moved
    reported: str  # the last state published: "", "up", "down", "degraded"
    detail: str = ""

    def fields(self, checked: float) -> dict[str, str]:
        return {
            "tunnel.status": self.status,
            "tunnel.since": f"{self.since:.3f}",
            "tunnel.bytes": str(self.total_bytes),
            "tunnel.idle": str(self.idle),
            "tunnel.reported": self.reported,
            "tunnel.detail": self.detail,
            "tunnel.checked": f"{checked:.3f}",
        }

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Seen | None:
        if "tunnel.status" not in state:
            return None
        return cls(
            status=state["tunnel.status"],
            since=float(state.get("tunnel.since") or 0),
            total_bytes=int(state.get("tunnel.bytes") or 0),
            idle=int(state.get("tunnel.idle") or 0),
            reported=state.get("tunnel.reported", ""),
            detail=state.get("tunnel.detail", ""),
        )


def judge(
    prev: Seen | None,
    status: str,
    total_bytes: int,
    now: float,
    cfg: WatcherConfig,
    *,
    partial: str = "",
) -> tuple[Seen, str | None]:
    """The new observation and the event to publish (``down``, ``up``, ``degraded``) or None.

    ``partial`` names a tunnel of an active-active pair that is down while the connection as a
    whole reports Connected.
    """
    if prev is None:
        prev = Seen(status, now, total_bytes, 0, "")
    since = prev.since if status == prev.status else now
    connected = status == "Connected"
    idle = prev.idle + 1 if connected and total_bytes == prev.total_bytes else 0
    reported, event, detail = prev.reported, None, ""
    if not connected:
        detail = f"{status} since {time.strftime('%H:%M:%S', time.localtime(since))}"
        if now - since >= cfg.debounce and reported != "down":
            event = "down"
    elif reported == "down":
        event = "up"
    elif partial or idle >= cfg.idle_sweeps:
        detail = partial or f"Connected, no bytes moved for {idle} checks"
        if reported != "degraded":
            event = "degraded"
    elif reported == "degraded":
        event = "up"
    elif not reported:
        reported = "up"  # first sight of a healthy tunnel: nothing to tell
    return Seen(status, since, total_bytes, idle, event or reported, detail), event


class TunnelWatcher:
    """A poller (``bot.sources.pollers.Poller``): each poll reads the next site's connection."""

    name = "arm-watcher"

    def __init__(self, services: Services, cfg: WatcherConfig) -> None:
        self.services = services
        self.cfg = cfg
        self.sites = sorted(
            name
            for name, site in services.settings.sites.items()
            if site.resource_group and site.connection
        )
        self._next = 0
        self._slowdown = 1.0
        self.reads = 0

    @property
    def interval(self) -> float:
        """Seconds between two reads: the sweep spread over the sites, never above the share
        of ARM's read budget, slower while ARM says few reads are left."""
        return self._base_interval() * self._slowdown

    def _base_interval(self) -> float:
        n = max(1, len(self.sites))
        reads_per_second = self.services.settings.azure.budget.reads[1] or ARM_READS_PER_SECOND
        budget = 1.0 / (self.cfg.read_share * reads_per_second)
        return max(self.cfg.interval / n, budget)

    async def poll(self) -> str | None:
        if not self.sites:
            return None
        site = self.sites[self._next % len(self.sites)]
        self._next += 1
        return await self.check(site)

    async def check(self, site: str) -> str | None:
        """Read one site's connection, record it, publish a hint on a change."""
        cfg = self.services.settings.sites[site]
        assert cfg.resource_group and cfg.connection
        client: NetworkManagementClient = await self.services.azure.network()
        rank = budget_priority.set(Priority.SWEEP)  # the budget serves reconciles first
        try:
            reply = await client.virtual_network_gateway_connections.get(
                cfg.resource_group, cfg.connection, cls=_with_headers
            )
        except BudgetDeferred as exc:
            # The shared budget is busy restoring tunnels: skip this turn, back off until
            # the budget has reads for sweeps again, then go on where we were.
            self._next -= 1
            self._slowdown = min(
                60.0,
                max(self._slowdown, (exc.retry_after or 1.0) / max(self._base_interval(), 1e-3)),
            )
            log.debug("sweep deferred by the ARM budget: %s", exc)
            return None
        finally:
            budget_priority.reset(rank)
        conn, headers = cast("tuple[Any, Any]", reply)  # what _with_headers returns
        self.reads += 1
        self._follow_budget(headers)
        status = _text(conn.connection_status) or "Unknown"
        total = int(conn.ingress_bytes_transferred or 0) + int(conn.egress_bytes_transferred or 0)
        partial = ""
        # A SonicWall with a primary and a secondary gateway dials one instance of an
        # active-active gateway at a time: the other tunnel is down by design, and which one
        # carries traffic is the failover reconciler's to judge (handlers.failover).
        one_at_a_time = cfg.failover is not None and cfg.failover.actor == "sonicwall"
        for tunnel in [] if one_at_a_time else conn.tunnel_connection_status or []:
            if status == "Connected" and _text(tunnel.connection_status) != "Connected":
                partial = f"tunnel {tunnel.tunnel} is {_text(tunnel.connection_status)}"
        state = self.services.state
        now = time.time()
        prev = Seen.from_state(await state.site_state(site))
        seen, event = judge(prev, status, total, now, self.cfg, partial=partial)
        if event is not None:
            await self.services.queue.publish(
                Event.new(
                    f"tunnel.{event}",
                    site,
                    source="arm-watcher",
                    data={"status": status, "since": seen.since, "detail": seen.detail},
                    idempotency_key=f"tunnel.{event}:{site}:{seen.since:.0f}",
                )
            )
            log.info("site %s: tunnel %s (%s)", site, event, seen.detail or status)
        await state.set_site_state(site, seen.fields(now))
        self.services.metrics.tunnel_up.labels(site).set(1 if status == "Connected" else 0)
        return event

    def _follow_budget(self, headers: Any) -> None:
        try:
            left = int(headers.get(REMAINING_HEADER)) if headers else None
        except (TypeError, ValueError):
            left = None
        if left is None or left >= LOW_REMAINING:
            self._slowdown = 1.0
        else:
            self._slowdown = min(10.0, LOW_REMAINING / max(left, 5))


def _with_headers(pipeline_response: Any, deserialized: Any, _headers: Any) -> Any:
    return deserialized, pipeline_response.http_response.headers


def _text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")

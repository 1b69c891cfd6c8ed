"""The scheduler: one due-time sorted set that turns "later" into an event on the stream.

Members are ``type|site`` (e.g. ``site.reconcile|home``), scores are unix seconds. Every
worker polls the set; a due member is removed and published as an event in one script, so
exactly one worker publishes it, and from there the stream's at-least-once delivery takes
over. What lives here: retries of a site whose reconcile failed for a transient reason (with
jittered exponential backoff, ``Retry-After`` honoured in full), the periodic resync that
re-checks every site, a reconcile owed to a site that was busy when a hint arrived, and later
the failback timers. Key-expiry notifications are never used: Redis does not deliver them
reliably.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from redis.asyncio import Redis

from bot.keys import Keys

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger("tunnelwarden.scheduler")

RECONCILE = "site.reconcile"  # the site's tunnel reconciler (handlers.site)
FAILOVER = "failover.check"  # the site's failover pair (handlers.failover)

# Publish the due members: for each, remove it and add its event to the stream, atomically.
_FIRE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, member in ipairs(due) do
  local score = redis.call('ZSCORE', KEYS[1], member)
  redis.call('ZREM', KEYS[1], member)
  local sep = string.find(member, '|', 1, true)
  if sep then
    local etype = string.sub(member, 1, sep - 1)
    local site = string.sub(member, sep + 1)
    local id = redis.sha1hex(member .. ':' .. score .. ':' .. ARGV[1])
    local event = {schema = 1, id = id, type = etype, site = site, source = 'scheduler',
                   occurred_at = ARGV[4], data = {},
                   idempotency_key = 'sched:' .. member .. ':' .. score}
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', cjson.encode(event))
    table.insert(out, member)
  end
end
return out
"""


def member(event_type: str, site: str) -> str:
    return f"{event_type}|{site}"


def spread(site: str, interval: float) -> float:
    """A stable offset in [0, interval) for the site, so resyncs are spread evenly."""
    digest = hashlib.sha256(site.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


class Scheduler:
    def __init__(self, redis: Redis, keys: Keys, *, stream_maxlen: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.stream_maxlen = stream_maxlen
        self._fire = redis.register_script(_FIRE)

    async def at(
        self, event_type: str, site: str, when: float, *, only_if_earlier: bool = False
    ) -> None:
        """Publish ``event_type`` for ``site`` at ``when``; ``only_if_earlier`` keeps an entry
        that is already due sooner."""
        if only_if_earlier:
            await self.redis.zadd(self.keys.schedule, {member(event_type, site): when}, lt=True)
        else:
            await self.redis.zadd(self.keys.schedule, {member(event_type, site): when})

    async def cancel(self, event_type: str, site: str) -> None:
        await self.redis.zrem(self.keys.schedule, member(event_type, site))

    async def due_at(self, event_type: str, site: str) -> float | None:
        score = await self.redis.zscore(self.keys.schedule, member(event_type, site))
        return None if score is None else float(score)

    async def entries(self) -> list[tuple[str, float]]:
        rows = await self.redis.zrange(self.keys.schedule, 0, -1, withscores=True)
        pairs = cast("list[tuple[bytes | str, float]]", rows)  # RESP2 (member, score) pairs
        return [(_text(m), float(s)) for m, s in pairs]

    async def fire_due(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Publish every member due by ``now`` (at most ``limit``); returns the members."""
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, UTC).isoformat()
        fired = await self._fire(
            keys=[self.keys.schedule, self.keys.stream],
            args=[f"{now:.3f}", limit, self.stream_maxlen, stamp],
        )
        return [_text(m) for m in fired]

    async def ensure_resync(self, members: Iterable[tuple[str, str]], interval: float) -> int:
        """Give every ``(event type, site)`` an entry if it has none, spread over
        ``interval``: each reconciler of each site comes back at least that often.

        Also what brings the schedule back after Redis lost it. Returns how many were added.
        """
        now = time.time()
        mapping = {member(t, s): now + spread(f"{t}|{s}", interval) for t, s in members}
        if not mapping:
            return 0
        added = await self.redis.zadd(self.keys.schedule, mapping, nx=True)
        return int(cast("int", added))

    async def run(
        self,
        stop: asyncio.Event,
        *,
        tick: float,
        members: Callable[[], Iterable[tuple[str, str]]],
        resync_interval: float,
        batch: int = 100,
    ) -> None:
        """Poll until ``stop``: publish due entries, and keep every reconciler's resync entry
        (``members``: the ``(event type, site)`` pairs, e.g. from ``resync_members``)."""
        next_ensure = 0.0
        while not stop.is_set():
            try:
                names = list(members())
                # Every 30 s, and at once if the set is gone (Redis lost its data).
                gone = bool(names) and not await self.redis.exists(self.keys.schedule)
                if gone or time.monotonic() >= next_ensure:
                    await self.ensure_resync(names, resync_interval)
                    next_ensure = time.monotonic() + max(tick * 30, 30.0)
                while len(await self.fire_due(limit=batch)) >= batch:
                    pass  # a backlog (a storm of retries): drain it before sleeping
            except Exception as exc:  # Redis away: weather, try again next tick
                log.warning("scheduler: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick * random.uniform(0.9, 1.1))


def resync_members(settings: Settings) -> list[tuple[str, str]]:
    """Every reconciler of every configured site: the tunnel's, and the failover pair's."""
    pairs = [(RECONCILE, name) for name in settings.sites]
    pairs += [(FAILOVER, name) for name, site in settings.sites.items() if site.failover]
    return pairs


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

"""Everything the bot remembers, in Redis: site state, handled keys, runs, journal, history.

A run is the handling of one event (its id is the event id). Its journal is an append-only
list of step records; a worker that takes over an event reads it to resume. Starting a run
(site lock with its fencing number, "already handled?", attempt count, journal, site state) and
recording its result (final status, idempotency key, history entry, state follow-ups, the
site's next reconcile, lock release) are each one script: they happen together or not at all,
so a crash can never leave a run recorded twice or half-recorded, and a run that lost its lock
writes nothing. A converged event costs three round trips (start, record, ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from bot.keys import Keys
from bot.models import RunRecord
from bot.queue import as_fields


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class JournalEntry:
    ts: float
    worker: str
    playbook: int  # index of the playbook in the run's decision
    step: str
    phase: str  # start | done | failed | resumed
    data: Any = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, raw: str) -> JournalEntry:
        return cls(**json.loads(raw))


class LockLost(RuntimeError):
    """The site lock expired or was taken while we held it: stop changing the site."""


# The lock of the run the current task works for: every client that changes the outside world
# (the Azure pipeline, device drivers) calls ``await fence_check()`` before a mutating call.
current_lock: contextvars.ContextVar[SiteLock | None] = contextvars.ContextVar(
    "tunnelwarden_site_lock", default=None
)


async def fence_check() -> None:
    """Raise ``LockLost`` if the current run no longer holds its site (outside a run: no-op)."""
    lock = current_lock.get()
    if lock is not None:
        await lock.check()


_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_JOURNAL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


class SiteLock:
    """The site's exclusive lock, with a fencing number, renewed while the run goes on.

    Taking the lock hands out the next number of the site's fence counter and stores it as the
    lock's value; every Redis write of the run checks that value atomically, and ``check()``
    asks Redis before each external call. A holder that was paused past the TTL (or whose
    renewal failed) finds another number there, or none, and stops: it never writes again.
    """

    def __init__(self, redis: Redis, key: str, fence_key: str, ttl: float) -> None:
        self.redis = redis
        self.key = key
        self.fence_key = fence_key
        self.ttl = ttl
        self.fence = 0
        self.lost = asyncio.Event()
        self.held = False
        self._renewer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def token(self) -> str:
        return str(self.fence)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock (waiting up to ``wait`` seconds) and renew it from then on."""

        async def take() -> bool:
            fence = await self.redis.eval(_ACQUIRE, 2, self.key, self.fence_key, self.ttl_ms)
            if not fence:
                return False
            self.fence = int(fence)
            return True

        if not await poll_until(take, wait):
            return False
        self.start_renewing()
        return True

    def taken(self, fence: int) -> None:
        """The lock was taken by a script (``StateStore.begin``) with this fencing number."""
        self.fence = fence
        self.start_renewing()

    def start_renewing(self) -> None:
        self.held = True
        self.lost.clear()
        self._stop = asyncio.Event()
        self._renewer = asyncio.create_task(self._renew(self._stop), name=f"renew {self.key}")

    async def stop_renewing(self) -> None:
        if self._renewer is not None:
            # The flag as well as the cancel: a Redis client may swallow a cancellation that
            # lands inside a command, and the renewer must stop all the same.
            self._stop.set()
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def _renew(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.ttl / 3)
                return
            try:
                ours = await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception:  # we can no longer prove the lock is ours: treat it as lost
                ours = 0
            if stop.is_set():
                return
            if not ours:
                self.lost.set()
                return

    async def check(self) -> None:
        """Raise ``LockLost`` unless Redis still holds our fencing number (before any external
        call: a worker that lost the site makes no further change)."""
        if self.lost.is_set():
            raise LockLost(f"site lock {self.key} (fence {self.fence}) was lost")
        try:
            value = await self.redis.get(self.key)
        except Exception as exc:
            self.lost.set()
            raise LockLost(f"cannot confirm site lock {self.key}: {type(exc).__name__}") from exc
        if value is None or _text(value) != self.token:
            self.lost.set()
            raise LockLost(f"site lock {self.key} (fence {self.fence}) is no longer ours")

    async def release(self) -> None:
        await self.stop_renewing()
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):  # expiry is the backstop
                await self.redis.eval(_RELEASE, 1, self.key, self.token)


async def poll_until(attempt: Callable[[], Awaitable[bool]], wait: float) -> bool:
    """Try ``attempt`` until it succeeds or ``wait`` seconds pass (backing off to 0.5 s)."""
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        if await attempt():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


@dataclass
class LeaderLease:
    """One replica at a time runs the pollers; the lease passes on if its holder dies."""

    redis: Redis
    key: str
    ttl: float
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def try_acquire(self) -> bool:
        """Take the lease if free, or extend it if ours. True while we lead."""
        script = """
        local cur = redis.call('GET', KEYS[1])
        if cur == false or cur == ARGV[1] then
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          return 1
        end
        return 0
        """
        ok = await self.redis.eval(script, 1, self.key, self.holder, int(self.ttl * 1000))
        return bool(ok)

    async def release(self) -> None:
        script = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """
        await self.redis.eval(script, 1, self.key, self.holder)


# Start a run: take the site lock with the next fencing number (unless someone holds it, or a
# run already handled the event's key), mark the run started, and return what the handler
# needs: the journal so far, the site's state and its automatic changes in the last hour.
# A hint that finds the site locked marks it dirty: the holder's record schedules another
# reconcile at once, and a fallback entry covers a holder that dies.
_BEGIN = """
local holder = redis.call('GET', KEYS[1])
if holder then
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[7], 'dirty', '1')
    redis.call('ZADD', KEYS[9], 'LT', ARGV[8], ARGV[7])
  end
  return {'locked', holder}
end
local done = redis.call('GET', KEYS[3])
if done then return {'done', done} end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
local attempt = redis.call('HINCRBY', KEYS[4], 'attempt', 1)
redis.call('HSETNX', KEYS[4], 'started_at', ARGV[2])
redis.call('HSET', KEYS[4], 'status', 'running', 'worker', ARGV[3], 'event_type', ARGV[4],
           'fence', fence)
redis.call('SADD', KEYS[5], ARGV[5])
if ARGV[7] ~= '' then redis.call('HDEL', KEYS[7], 'dirty') end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[8], ARGV[6], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {'started', fence, attempt, redis.call('LRANGE', KEYS[6], 0, -1),
        redis.call('HGETALL', KEYS[7]), redis.call('ZCOUNT', KEYS[8], ARGV[6], '+inf'),
        oldest[2] or ''}
"""

# Record a finished run once, fenced: nothing is written unless the lock still holds our
# fencing number. Status, history entry, idempotency key, counted change, state updates and
# the site's next reconcile happen together, and the lock is released with the same write.
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
redis.call('DEL', KEYS[1])
if redis.call('HEXISTS', KEYS[2], 'recorded') == 1 then return {'recorded'} end
local hid = ''
if ARGV[11] == '1' then
  hid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'run', ARGV[2])
end
redis.call('HSET', KEYS[2], 'status', ARGV[3], 'recorded', '1', 'finished_at', ARGV[4],
           'record', ARGV[2], 'history_id', hid, 'view', ARGV[16])
redis.call('SREM', KEYS[7], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[6], ARGV[10])
if ARGV[9] == '1' then redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[6]) end
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], 0, tonumber(ARGV[4]) - 86400)
end
local updates = cjson.decode(ARGV[12])
for k, v in pairs(updates) do
  if v == cjson.null or v == '' then redis.call('HDEL', KEYS[8], k)
  else redis.call('HSET', KEYS[8], k, v) end
end
if ARGV[14] ~= '' then redis.call('ZADD', KEYS[9], ARGV[14], ARGV[13]) end
if ARGV[15] ~= '' and redis.call('HGET', KEYS[8], 'dirty') == '1' then
  redis.call('HDEL', KEYS[8], 'dirty')
  redis.call('ZADD', KEYS[9], ARGV[4], ARGV[15])
end
return {'ok', hid}
"""


@dataclass(frozen=True)
class Begun:
    kind: str  # started | locked | done
    fence: int = 0
    attempt: int = 0
    journal: list[JournalEntry] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    changes_last_hour: int = 0
    oldest_change_at: float | None = None  # of those in the last hour
    holder: str = ""  # locked: the fencing number of the holder; done: the run that handled it


@dataclass(frozen=True)
class Followups:
    """What recording a run also does to the site, in the same atomic write."""

    state: dict[str, str | None] = field(default_factory=dict)  # None or "" deletes the field
    schedule_member: str = ""
    schedule_at: float | None = None
    dirty_member: str = ""  # reconcile again at once if a hint arrived while we held the lock


class StateStore:
    def __init__(
        self, redis: Redis, keys: Keys, *, history_maxlen: int = 1000, done_ttl: int = 604800
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.history_maxlen = history_maxlen
        self.done_ttl = done_ttl
        self._record_script = redis.register_script(_RECORD)
        self._begin_script = redis.register_script(_BEGIN)
        self._journal_script = redis.register_script(_JOURNAL)
        self._seen_sites: set[str] = set()

    # --- site state -------------------------------------------------------------------
    async def site_state(self, site: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.state(site))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def set_site_state(self, site: str, values: dict[str, str]) -> None:
        """Write state fields outside any run (sources, pause/resume by a person)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.state(site), mapping=as_fields(values))
        pipe.sadd(self.keys.sites, site)
        await pipe.execute()

    async def known_sites(self) -> list[str]:
        return sorted(_text(s) for s in await self.redis.smembers(self.keys.sites))

    # --- locks ----------------------------------------------------------------------------
    def site_lock(self, site: str, ttl: float) -> SiteLock:
        return SiteLock(self.redis, self.keys.lock(site), self.keys.fence(site), ttl)

    def leader_lease(self, role: str, ttl: float) -> LeaderLease:
        return LeaderLease(self.redis, self.keys.leader(role), ttl)

    # --- runs and journal ---------------------------------------------------------------
    async def begin(
        self,
        lock: SiteLock,
        site: str,
        run_id: str,
        worker: str,
        event_type: str,
        done_key: str,
        *,
        dirty_member: str = "",
        dirty_at: float = 0.0,
    ) -> Begun:
        """Take the site lock and mark the run started, in one step.

        ``locked``: someone else holds the site (with ``dirty_member``, the site is marked for
        another reconcile once the holder finishes); ``done``: a run already handled
        ``done_key``; ``started``: the lock is ours (``lock.fence``), with the attempt number,
        the run's journal so far, the site's state and its automatic changes in the last hour.
        """
        await self._know_site(site)
        now = time.time()
        reply = await self._begin_script(
            keys=[
                lock.key,
                lock.fence_key,
                self.keys.done(site, done_key),
                self.keys.run(site, run_id),
                self.keys.active(site),
                self.keys.journal(site, run_id),
                self.keys.state(site),
                self.keys.changes(site),
                self.keys.schedule,
            ],
            args=[
                lock.ttl_ms,
                f"{now:.3f}",
                worker,
                event_type,
                run_id,
                f"{now - 3600:.3f}",
                dirty_member,
                f"{dirty_at:.3f}",
            ],
        )
        kind = _text(reply[0])
        if kind != "started":
            return Begun(kind, holder=_text(reply[1]))
        fence = int(reply[1])
        lock.taken(fence)
        journal = [JournalEntry.from_json(_text(r)) for r in reply[3]]
        flat = [_text(v) for v in reply[4]]
        state = dict(zip(flat[0::2], flat[1::2], strict=True))
        oldest = _text(reply[6])
        return Begun(
            kind, fence, int(reply[2]), journal, state, int(reply[5]), float(oldest or 0) or None
        )

    async def _know_site(self, site: str) -> None:
        """Add the site to the set of sites (another hash slot, so never inside a MULTI)."""
        if site not in self._seen_sites:
            await self.redis.sadd(self.keys.sites, site)
            self._seen_sites.add(site)

    async def run_info(self, site: str, run_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.run(site, run_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def recorded(self, site: str, run_id: str) -> RunRecord | None:
        raw = await self.redis.hget(self.keys.run(site, run_id), "record")
        return None if raw is None else RunRecord.model_validate_json(raw)

    async def notified(self, site: str, run_id: str) -> bool:
        return bool(await self.redis.hexists(self.keys.run(site, run_id), "notified"))

    async def mark_notified(self, site: str, run_id: str) -> None:
        await self.redis.hset(self.keys.run(site, run_id), "notified", "1")

    async def live_workers(self, within: float = 30.0) -> list[tuple[str, float]]:
        reply = await self.redis.zrangebyscore(
            self.keys.workers, time.time() - within, "+inf", withscores=True
        )
        rows = cast("list[tuple[bytes | str, float]]", reply)  # RESP2 (member, score) pairs
        return [(_text(name), float(ts)) for name, ts in rows]

    async def journal_append(
        self, site: str, run_id: str, entry: JournalEntry, lock: SiteLock
    ) -> None:
        """Append to the run's journal, only while ``lock`` is still ours."""
        ok = await self._journal_script(
            keys=[lock.key, self.keys.journal(site, run_id)], args=[lock.token, entry.to_json()]
        )
        if not ok:
            lock.lost.set()
            raise LockLost(f"site {site}: lock (fence {lock.fence}) lost; journal not written")

    async def journal(self, site: str, run_id: str) -> list[JournalEntry]:
        rows = await self.redis.lrange(self.keys.journal(site, run_id), 0, -1)
        return [JournalEntry.from_json(_text(r)) for r in rows]

    async def active_runs(self, site: str) -> list[str]:
        return sorted(_text(r) for r in await self.redis.smembers(self.keys.active(site)))

    async def record(
        self,
        record: RunRecord,
        lock: SiteLock,
        *,
        done_key: str | None,
        changed: bool,
        history: bool = True,
        followups: Followups | None = None,
        view: dict[str, str] | None = None,
    ) -> str | None:
        """Record a finished run once, fenced by ``lock``, and release the lock.

        Returns the history id ("" when the run is kept out of the history), or None if the
        run was recorded already (a resumed run whose first holder recorded it just before
        dying). Raises ``LockLost`` when the lock no longer holds our fencing number: then
        nothing at all was written.
        """
        site, run_id = record.site, record.run_id
        await self._know_site(site)
        f = followups or Followups()
        now = time.time()
        reply = await self._record_script(
            keys=[
                lock.key,
                self.keys.run(site, run_id),
                self.keys.history(site),
                self.keys.done(site, done_key or "-"),
                self.keys.changes(site),
                self.keys.journal(site, run_id),
                self.keys.active(site),
                self.keys.state(site),
                self.keys.schedule,
            ],
            args=[
                lock.token,
                record.model_dump_json(),
                record.outcome,
                f"{now:.3f}",
                self.history_maxlen,
                self.done_ttl,
                run_id,
                int(changed),
                int(bool(done_key)),
                max(self.done_ttl, 86400),
                int(history),
                json.dumps(f.state),
                f.schedule_member,
                "" if f.schedule_at is None else f"{f.schedule_at:.3f}",
                f.dirty_member,
                json.dumps(view or {}),
            ],
        )
        await lock.stop_renewing()
        lock.held = False  # the script released it (or it was no longer ours)
        kind = _text(reply[0])
        if kind == "lost":
            lock.lost.set()
            raise LockLost(
                f"site {site}: lock (fence {lock.fence}) lost; run {run_id} not recorded"
            )
        if kind == "recorded":
            return None
        return _text(reply[1])

    async def changes_since(self, site: str, seconds: float) -> int:
        """Automatic changes recorded in the last ``seconds`` (the change rate limit's count)."""
        return int(await self.redis.zcount(self.keys.changes(site), time.time() - seconds, "+inf"))

    async def history(self, site: str | None = None, limit: int = 20) -> list[RunRecord]:
        """Newest first; across all sites, merged by time."""
        sites = [site] if site else await self.known_sites()
        pipe = self.redis.pipeline(transaction=False)
        for name in sites:
            pipe.xrevrange(self.keys.history(name), count=limit)
        merged: list[tuple[str, RunRecord]] = []
        for rows in await pipe.execute():
            for hist_id, fields in rows:
                raw = fields.get(b"run") or fields.get("run")
                merged.append((_text(hist_id), RunRecord.model_validate_json(raw)))
        # Stream ids of different streams are not comparable; the record's own time is.
        merged.sort(key=lambda pair: (pair[1].finished_at, _id_key(pair[0])), reverse=True)
        return [rec for _, rec in merged[:limit]]


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

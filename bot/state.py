"""Everything the bot remembers, in Redis: site state, handled keys, runs, journal, history.

A run is the handling of one event (its id is the event id). Its journal is an append-only
list of step records; a worker that takes over an event reads it to resume. Starting a run
(site lock, "already handled?", attempt count, journal so far) and recording its result (final
status, idempotency key, history entry, lock release) are each one script on the site's hash
slot: they happen together or not at all, so a crash can never leave a run recorded twice or
half-recorded, and a converged event costs four round trips (read, start, record, ack).
"""

from __future__ import annotations

import asyncio
import contextlib
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


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SiteLock:
    """The site's exclusive lock, renewed in the background while the run goes on.

    A run that outlives the TTL keeps the lock as long as its process lives; a crashed holder
    stops renewing and the lock expires after ``ttl`` seconds. The lock holds a random token,
    so only its holder can renew or release it.
    """

    def __init__(self, redis: Redis, key: str, ttl: float, wait: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.wait = wait
        self.token = uuid.uuid4().hex
        self.lost = asyncio.Event()
        self.held = False
        self._renewer: asyncio.Task[None] | None = None

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self) -> bool:
        """Wait up to ``wait`` seconds for the lock; renew it from then on."""

        async def take() -> bool:
            return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

        if not await poll_until(take, self.wait):
            return False
        self.start_renewing()
        return True

    def start_renewing(self) -> None:
        self.held = True
        self._renewer = asyncio.create_task(self._renew(), name=f"renew {self.key}")

    async def stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ours = await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception:  # a blip in Redis: try again next round; expiry is the backstop
                continue
            if not ours:
                self.lost.set()
                return

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


_RECORD = """
if KEYS[7] and redis.call('GET', KEYS[7]) == ARGV[11] then redis.call('DEL', KEYS[7]) end
if redis.call('HEXISTS', KEYS[1], 'recorded') == 1 then return false end
local hid = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'run', ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'recorded', '1', 'finished_at', ARGV[3],
           'record', ARGV[1], 'history_id', hid)
redis.call('SREM', KEYS[6], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[10])
redis.call('EXPIRE', KEYS[5], ARGV[10])
if ARGV[9] == '1' then redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[5]) end
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], 0, tonumber(ARGV[7]) - 86400)
end
return hid
"""


_BEGIN = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {'locked'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'done'} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local attempt = redis.call('HINCRBY', KEYS[3], 'attempt', 1)
redis.call('HSETNX', KEYS[3], 'started_at', ARGV[3])
redis.call('HSET', KEYS[3], 'status', 'running', 'worker', ARGV[4], 'event_type', ARGV[5],
           'reason', ARGV[6])
redis.call('SADD', KEYS[4], ARGV[7])
return {'started', attempt, redis.call('LRANGE', KEYS[5], 0, -1)}
"""


@dataclass(frozen=True)
class Begun:
    kind: str  # started | locked | done
    attempt: int = 0
    journal: list[JournalEntry] = field(default_factory=list)


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
        self._seen_sites: set[str] = set()

    # --- site state -------------------------------------------------------------------
    async def site_state(self, site: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.state(site))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def set_site_state(self, site: str, values: dict[str, str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.state(site), mapping=as_fields(values))
        pipe.sadd(self.keys.sites, site)
        await pipe.execute()

    async def known_sites(self) -> list[str]:
        return sorted(_text(s) for s in await self.redis.smembers(self.keys.sites))

    # --- idempotency --------------------------------------------------------------------
    async def is_done(self, site: str, key: str) -> str | None:
        """The run id that handled this key, if any run did within the TTL."""
        value = await self.redis.get(self.keys.done(site, key))
        return None if value is None else _text(value)

    # --- locks ----------------------------------------------------------------------------
    def site_lock(self, site: str, ttl: float, wait: float) -> SiteLock:
        return SiteLock(self.redis, self.keys.lock(site), ttl, wait)

    def leader_lease(self, role: str, ttl: float) -> LeaderLease:
        return LeaderLease(self.redis, self.keys.leader(role), ttl)

    # --- runs and journal ---------------------------------------------------------------
    async def begin(
        self,
        lock: SiteLock,
        site: str,
        run_id: str,
        worker: str,
        meta: dict[str, str],
        done_key: str,
    ) -> Begun:
        """Take the site lock and mark the run started, in one step on the site's slot.

        ``locked``: someone else holds the site; ``done``: a run already handled ``done_key``;
        ``started``: the lock is ours, with the attempt number and the run's journal so far.
        """
        await self._know_site(site)
        reply = await self._begin_script(
            keys=[
                lock.key,
                self.keys.done(site, done_key),
                self.keys.run(site, run_id),
                self.keys.active(site),
                self.keys.journal(site, run_id),
            ],
            args=[
                lock.token,
                lock.ttl_ms,
                f"{time.time():.3f}",
                worker,
                meta.get("event_type", ""),
                meta.get("reason", ""),
                run_id,
            ],
        )
        kind = _text(reply[0])
        if kind != "started":
            return Begun(kind)
        journal = [JournalEntry.from_json(_text(r)) for r in reply[2]]
        return Begun(kind, int(reply[1]), journal)

    async def precheck(self, site: str, key: str) -> tuple[str | None, dict[str, str], int]:
        """What a handler needs, in one round trip: who handled ``key`` (if anyone), the
        site's state, and its changes in the last hour."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.done(site, key))
        pipe.hgetall(self.keys.state(site))
        pipe.zcount(self.keys.changes(site), time.time() - 3600, "+inf")
        done, state, changes = await pipe.execute()
        return (
            None if done is None else _text(done),
            {_text(k): _text(v) for k, v in state.items()},
            int(changes),
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

    async def journal_append(self, site: str, run_id: str, entry: JournalEntry) -> None:
        await self.redis.rpush(self.keys.journal(site, run_id), entry.to_json())

    async def journal(self, site: str, run_id: str) -> list[JournalEntry]:
        rows = await self.redis.lrange(self.keys.journal(site, run_id), 0, -1)
        return [JournalEntry.from_json(_text(r)) for r in rows]

    async def active_runs(self, site: str) -> list[str]:
        return sorted(_text(r) for r in await self.redis.smembers(self.keys.active(site)))

    async def record(
        self,
        record: RunRecord,
        done_key: str | None,
        changed: bool,
        lock: SiteLock | None = None,
    ) -> str | None:
        """Record a finished run once: status, idempotency key and history, atomically (one
        script on the site's hash slot).

        Returns the history id, or None if the run was already recorded (a resumed run whose
        first holder recorded it just before dying).
        """
        site, run_id = record.site, record.run_id
        await self._know_site(site)
        now = time.time()
        history_id = await self._record_script(
            keys=[
                self.keys.run(site, run_id),
                self.keys.history(site),
                self.keys.done(site, done_key or "-"),
                self.keys.changes(site),
                self.keys.journal(site, run_id),
                self.keys.active(site),
                *([lock.key] if lock else []),
            ],
            args=[
                record.model_dump_json(),
                record.outcome,
                f"{now:.3f}",
                self.history_maxlen,
                self.done_ttl,
                run_id,
                f"{now:.3f}",
                int(changed),
                int(bool(done_key)),
                max(self.done_ttl, 86400),
                lock.token if lock else "",
            ],
        )
        if lock is not None:
            lock.held = False  # the script released it (or it was no longer ours)
        return None if history_id is None else _text(history_id)

    async def changes_since(self, site: str, seconds: float) -> int:
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

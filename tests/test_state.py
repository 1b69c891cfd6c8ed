"""Locks, leases and recording against a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from redis.asyncio import Redis

from bot.models import RunRecord
from bot.services import Services
from tests.helpers import done_run


async def test_lock_is_renewed_while_the_run_outlives_its_ttl(services: Services) -> None:
    holder = services.state.site_lock("home", ttl=0.3)
    assert await holder.acquire()
    try:
        await asyncio.sleep(1.0)  # more than three TTLs
        rival = services.state.site_lock("home", ttl=0.3)
        assert not await rival.acquire(), "a live holder lost its lock after the TTL"
        assert not holder.lost.is_set()
    finally:
        await holder.release()
    again = services.state.site_lock("home", ttl=0.3)
    assert await again.acquire(), "released lock not free"
    await again.release()


async def test_lock_of_a_crashed_holder_expires(services: Services, redis_url: str) -> None:
    other = Redis.from_url(redis_url)
    crashed = Services.build(services.settings, other).state.site_lock("home", ttl=0.4)
    assert await crashed.acquire()
    assert crashed._renewer is not None
    crashed._renewer.cancel()  # the process died: nobody renews any more
    waiter = services.state.site_lock("home", ttl=5)
    began = time.monotonic()
    assert await waiter.acquire(wait=3)
    assert 0.1 < time.monotonic() - began < 2.5
    await waiter.release()
    await other.aclose()


async def test_a_holder_notices_when_its_lock_is_taken(services: Services) -> None:
    holder = services.state.site_lock("home", ttl=0.3)
    assert await holder.acquire()
    await services.redis.set(services.keys.lock("home"), "someone-else")
    await asyncio.wait_for(holder.lost.wait(), 2)
    await holder.release()


async def test_leader_lease_passes_on_when_the_leader_stops(services: Services) -> None:
    a = services.state.leader_lease("pollers", ttl=0.5)
    b = services.state.leader_lease("pollers", ttl=0.5)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert await a.try_acquire(), "the leader must be able to extend its lease"
    await asyncio.sleep(0.7)  # a stopped renewing
    assert await b.try_acquire()
    assert not await a.try_acquire()
    await b.release()
    assert await a.try_acquire()


def _record(run_id: str = "r1", site: str = "home") -> RunRecord:
    now = time.time()
    return RunRecord(
        run_id=run_id,
        site=site,
        event_type="test.noop",
        event_source="test",
        idempotency_key=f"k-{run_id}",
        outcome="ok",
        started_at=now,
        finished_at=now,
    )


async def test_a_run_is_recorded_once(services: Services) -> None:
    """A resumed run whose first holder recorded it just before dying records nothing more."""
    record = _record()
    ids = []
    for _ in range(3):
        lock = services.state.site_lock("home", ttl=30)
        assert await lock.acquire()
        ids.append(await services.state.record(record, lock, done_key="k1", changed=True))
        assert not lock.held
    assert ids[0] and ids[1:] == [None, None]
    assert len(await services.state.history("home")) == 1
    assert await done_run(services, "home", "k1") == "r1"
    assert await services.state.changes_since("home", 60) == 1


async def test_fencing_numbers_only_grow_and_a_lost_lock_writes_nothing(
    services: Services,
) -> None:
    from bot.state import JournalEntry, LockLost

    first = services.state.site_lock("home", ttl=0.3)
    assert await first.acquire()
    await first.stop_renewing()  # paused: it stops renewing, as a SIGSTOPped process would
    await asyncio.sleep(0.5)  # past the TTL
    second = services.state.site_lock("home", ttl=30)
    assert await second.acquire()
    assert second.fence > first.fence
    entry = JournalEntry(time.time(), "w", 0, "step", "start")
    try:
        await first.check()
        raise AssertionError("a lost lock passed its check")
    except LockLost:
        pass
    for write in (
        services.state.journal_append("home", "r1", entry, first),
        services.state.record(_record(), first, done_key="k1", changed=True),
    ):
        try:
            await write
            raise AssertionError("a write under a lost lock went through")
        except LockLost:
            pass
    assert await services.redis.llen(services.keys.journal("home", "r1")) == 0
    assert await services.state.history("home") == []
    assert await done_run(services, "home", "k1") is None
    await second.check()  # the new holder is fine, and still holds the site
    assert await services.redis.get(services.keys.lock("home")) == str(second.fence).encode()
    await second.release()


async def test_history_merges_sites_newest_first(services: Services) -> None:
    for i, site in enumerate(["a", "b", "a", "c"]):
        lock = services.state.site_lock(site, ttl=30)
        assert await lock.acquire()
        await services.state.record(_record(f"r{i}", site), lock, done_key=None, changed=False)
    assert [r.run_id for r in await services.state.history(limit=3)] == ["r3", "r2", "r1"]
    assert [r.run_id for r in await services.state.history("a")] == ["r2", "r0"]


def test_keys_that_are_written_together_share_a_cluster_slot() -> None:
    """Per-site keys share the site's slot and queue keys share one slot (the grouping stays
    useful for reading; the observe and record scripts span both groups, so a single Redis or
    a Sentinel primary is required, not a Cluster)."""
    from redis.crc import key_slot

    from bot.keys import Keys

    keys = Keys("tw")
    site = {
        key_slot(k.encode())
        for k in (
            keys.state("home"),
            keys.lock("home"),
            keys.fence("home"),
            keys.done("home", "ip.changed:home:v4:1"),
            keys.history("home"),
            keys.run("home", "r1"),
            keys.journal("home", "r1"),
            keys.active("home"),
            keys.changes("home"),
        )
    }
    assert len(site) == 1
    queue = {
        key_slot(k.encode())
        for k in (keys.stream, keys.dead, keys.errors, keys.workers, keys.schedule)
    }
    assert len(queue) == 1
    assert key_slot(keys.state("home").encode()) != key_slot(keys.state("office").encode())


async def test_a_failing_renewal_marks_the_lock_lost(services: Services, tmp_path: Path) -> None:
    """Redis stops answering while a run holds its site: the renewal cannot prove the lock is
    ours any more, so the lock counts as lost (and the next check says so) rather than the
    run carrying on as if it still held the site."""
    from bot.state import LockLost
    from tests.conftest import start_private_redis

    proc, url = start_private_redis(tmp_path)
    client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        holder = Services.build(services.settings, client).state.site_lock("home", ttl=0.3)
        assert await holder.acquire()
        assert not holder.lost.is_set()
        proc.terminate()  # Redis goes away under the holder
        proc.wait(10)
        await asyncio.wait_for(holder.lost.wait(), 5)
        try:
            await holder.check()
            raise AssertionError("a lock whose renewal failed passed its check")
        except LockLost:
            pass
        await holder.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await client.aclose()

"""Locks, leases and recording against a real Redis."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bot.models import RunRecord
from bot.services import Services


async def test_lock_is_renewed_while_the_run_outlives_its_ttl(services: Services) -> None:
    holder = services.state.site_lock("home", ttl=0.3, wait=0)
    assert await holder.acquire()
    try:
        await asyncio.sleep(1.0)  # more than three TTLs
        rival = services.state.site_lock("home", ttl=0.3, wait=0)
        assert not await rival.acquire(), "a live holder lost its lock after the TTL"
        assert not holder.lost.is_set()
    finally:
        await holder.release()
    again = services.state.site_lock("home", ttl=0.3, wait=0)
    assert await again.acquire(), "released lock not free"
    await again.release()


async def test_lock_of_a_crashed_holder_expires(services: Services, redis_url: str) -> None:
    other = Redis.from_url(redis_url)
    crashed = Services.build(services.settings, other).state.site_lock("home", ttl=0.4, wait=0)
    assert await crashed.acquire()
    assert crashed._renewer is not None
    crashed._renewer.cancel()  # the process died: nobody renews any more
    waiter = services.state.site_lock("home", ttl=5, wait=3)
    began = time.monotonic()
    assert await waiter.acquire()
    assert 0.1 < time.monotonic() - began < 2.5
    await waiter.release()
    await other.aclose()


async def test_a_holder_notices_when_its_lock_is_taken(services: Services) -> None:
    holder = services.state.site_lock("home", ttl=0.3, wait=0)
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


async def test_a_run_is_recorded_once(services: Services) -> None:
    now = time.time()
    record = RunRecord(
        run_id="r1",
        site="home",
        event_type="test.noop",
        event_source="test",
        idempotency_key="k1",
        outcome="ok",
        started_at=now,
        finished_at=now,
    )
    results = await asyncio.gather(*(services.state.record(record, "k1", True) for _ in range(5)))
    assert sum(r is not None for r in results) == 1
    assert len(await services.state.history("home")) == 1
    assert await services.state.is_done("home", "k1") == "r1"
    assert await services.state.changes_since("home", 60) == 1


async def test_history_merges_sites_newest_first(services: Services) -> None:
    for i, site in enumerate(["a", "b", "a", "c"]):
        now = time.time()
        rec = RunRecord(
            run_id=f"r{i}",
            site=site,
            event_type="test.noop",
            event_source="test",
            idempotency_key=f"k{i}",
            outcome="ok",
            started_at=now,
            finished_at=now,
        )
        await services.state.record(rec, None, False)
    assert [r.run_id for r in await services.state.history(limit=3)] == ["r3", "r2", "r1"]
    assert [r.run_id for r in await services.state.history("a")] == ["r2", "r0"]


def test_keys_that_are_written_together_share_a_cluster_slot() -> None:
    from redis.crc import key_slot

    from bot.keys import Keys

    keys = Keys("tw")
    site = {
        key_slot(k.encode())
        for k in (
            keys.state("home"),
            keys.lock("home"),
            keys.done("home", "ip.changed:home:v4:1"),
            keys.history("home"),
            keys.run("home", "r1"),
            keys.journal("home", "r1"),
            keys.active("home"),
            keys.changes("home"),
        )
    }
    assert len(site) == 1
    queue = {key_slot(k.encode()) for k in (keys.stream, keys.dead, keys.errors, keys.workers)}
    assert len(queue) == 1
    assert key_slot(keys.state("home").encode()) != key_slot(keys.state("office").encode())


async def test_recording_releases_the_site_lock_even_when_already_recorded(
    services: Services,
) -> None:
    now = time.time()
    record = RunRecord(
        run_id="r9",
        site="home",
        event_type="test.noop",
        event_source="test",
        idempotency_key="k9",
        outcome="failed",
        started_at=now,
        finished_at=now,
    )
    for expected_new in (True, False):
        lock = services.state.site_lock("home", ttl=30, wait=0)
        assert await lock.acquire()
        await lock.stop_renewing()
        history_id = await services.state.record(record, None, False, lock)
        assert (history_id is not None) is expected_new
        assert not await services.redis.exists(services.keys.lock("home")), "lock left held"

"""Workers against a real Redis: sharing, dead letters, duplicates, per-site locking."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.app import build_worker
from bot.events import Event
from bot.models import RunRecord
from bot.services import Services
from bot.worker import Worker
from tests.conftest import make_settings
from tests.helpers import done_run, eventually


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def second_services(services: Services, redis_url: str) -> Services:
    """Another process's view: its own Redis connection, same settings."""
    return Services.build(services.settings, Redis.from_url(redis_url))


async def test_two_workers_share_the_work(prefix: str, tmp_path: Path, redis_url: str) -> None:
    # Two events at a time each, so neither can take all eight at once.
    settings = make_settings(prefix, tmp_path, worker={"concurrency": 2})
    services = Services.build(settings, Redis.from_url(redis_url))
    other = await second_services(services, redis_url)
    w1, w2 = build_worker(services, "w1"), build_worker(other, "w2")
    sites = [f"site{i}" for i in range(8)]
    for site in sites:
        await services.queue.publish(
            Event.new("test.sleep", site, source="test", data={"seconds": 0.2})
        )
    async with running(w1, w2):
        records: list[RunRecord] = await eventually(
            lambda: _history_if(services, len(sites)), within=20
        )
    workers = {r.worker for r in records}
    assert workers == {"w1", "w2"}, f"work was not shared: {workers}"
    assert sorted(r.site for r in records) == sorted(sites)
    assert all(r.outcome == "ok" for r in records)
    assert (await services.queue.stats())["pending"] == 0
    await other.redis.aclose()
    await services.redis.aclose()


async def _history_if(services: Services, n: int) -> list[RunRecord] | None:
    records = await services.state.history(limit=100)
    return records if len(records) >= n else None


async def test_poison_event_lands_in_dead_letters_after_n_deliveries(
    services: Services,
) -> None:
    worker = build_worker(services, "w1")
    event = Event.new("test.fail", "home", source="test", data={"message": "boom 42"})
    await services.queue.publish(event)
    async with running(worker):
        dead = await eventually(lambda: services.queue.dead_letters(), within=20)
    assert len(dead) == 1
    letter = dead[0]
    max_deliveries = services.settings.worker.max_deliveries
    assert letter.deliveries == max_deliveries + 1
    assert f"gave up after {max_deliveries} deliveries" in letter.reason
    assert "RuntimeError: boom 42" in letter.reason
    assert Event.from_wire(letter.raw["event"]).id == event.id
    stats = await services.queue.stats()
    assert stats["pending"] == 0, "the poison entry must leave the queue"
    assert await services.state.history(limit=10) == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event": "{not json"}, "event is not JSON"),
        ({"other": "x"}, "entry has no 'event' field"),
        ({"event": '{"schema": 9}'}, "unsupported event schema 9"),
        ({"event": '{"schema": 1, "id": "x"}'}, "type: Field required"),
    ],
)
async def test_malformed_entries_are_dead_lettered_with_the_reason(
    services: Services, fields: dict[str, str], reason: str
) -> None:
    entry_id = await services.queue.publish_fields(fields)
    async with running(build_worker(services, "w1")):
        dead = await eventually(lambda: services.queue.dead_letters(), within=10)
    assert dead[0].entry_id == entry_id
    assert reason in dead[0].reason
    assert dead[0].raw == fields


async def test_unknown_type_and_bad_data_are_dead_lettered(services: Services) -> None:
    await services.queue.publish(Event.new("made.up", "home", source="test"))
    await services.queue.publish(
        Event.new("test.sleep", "home", source="test", data={"seconds": -1})
    )
    async with running(build_worker(services, "w1")):
        dead = await eventually(lambda: _at_least(services.queue.dead_letters(), 2), within=10)
    reasons = sorted(d.reason for d in dead)
    assert (
        reasons[0]
        == "test.sleep: invalid event: seconds: Input should be greater than or equal to 0"
    )
    assert reasons[1] == "unknown event type 'made.up'"


async def _at_least(coro: Any, n: int) -> Any:
    rows = await coro
    return rows if len(rows) >= n else None


async def test_duplicate_events_run_once(services: Services, redis_url: str) -> None:
    other = await second_services(services, redis_url)
    for _ in range(4):  # same observation published four times, by different sources
        await services.queue.publish(
            Event.new(
                "test.sleep",
                "home",
                source="test",
                data={"seconds": 0.1},
                idempotency_key="ip.changed:home:203.0.113.7",
            )
        )
    async with running(build_worker(services, "w1"), build_worker(other, "w2")):
        await eventually(lambda: _drained(services), within=15)
    records = await services.state.history("home", limit=10)
    assert len(records) == 1
    assert records[0].outcome == "ok"
    assert await done_run(services, "home", "ip.changed:home:203.0.113.7") == records[0].run_id
    await other.redis.aclose()


async def _drained(services: Services) -> bool:
    stats = await services.queue.stats()
    return stats["lag"] == 0 and stats["pending"] == 0


async def test_lock_serialises_a_site_while_sites_run_in_parallel(
    services: Services, redis_url: str
) -> None:
    other = await second_services(services, redis_url)
    for n, site in enumerate(("alpha", "alpha", "alpha", "beta")):
        await services.queue.publish(
            Event.new(
                "test.sleep",
                site,
                source="test",
                data={"seconds": 0.4},
                idempotency_key=f"request-{n}",
            )
        )
    async with running(build_worker(services, "w1"), build_worker(other, "w2")):
        await eventually(lambda: _history_if(services, 4), within=20)
    alpha = sorted(await services.state.history("alpha", 10), key=lambda r: r.started_at)
    beta = (await services.state.history("beta", 10))[0]
    assert len(alpha) == 3
    assert not await services.redis.exists(services.keys.lock("alpha")), "lock left behind"
    for earlier, later in itertools.pairwise(alpha):
        assert later.started_at >= earlier.finished_at, "two runs held site alpha at once"
    assert any(
        r.started_at < beta.finished_at and beta.started_at < r.finished_at for r in alpha
    ), "beta waited for alpha: sites did not run in parallel"
    await other.redis.aclose()


async def test_paused_site_is_skipped_and_recorded(
    prefix: str, tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(prefix, tmp_path, sites={"home": {"policy": {"paused": True}}})
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    await services.queue.publish(Event.new("test.noop", "home", source="test"))
    async with running(build_worker(services, "w1")):
        records = await eventually(lambda: _history_if(services, 1))
    assert records[0].outcome == "skipped"
    assert records[0].reason == "site home is paused"
    assert records[0].playbooks == []
    await client.aclose()


async def test_playbook_failure_is_recorded_not_dead_lettered(services: Services) -> None:
    await services.queue.publish(
        Event.new(
            "playbook.requested",
            "home",
            source="test",
            data={"playbook": "sleep", "params": {"seconds": "soon"}},
        )
    )
    async with running(build_worker(services, "w1")):
        records = await eventually(lambda: _history_if(services, 1))
    result = records[0].playbooks[0]
    assert records[0].outcome == "failed"
    assert result.error_code == "BadParams"
    assert "seconds" in (result.error or "")
    assert await services.queue.dead_letters() == []
    # A failed run does not burn the idempotency key: the same request may be tried again.
    assert await done_run(services, "home", records[0].idempotency_key) is None


async def test_playbook_timeout_is_reported(prefix: str, tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(prefix, tmp_path, policies={"playbook_timeout": 0.3})
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client)
    await services.queue.publish(
        Event.new("test.sleep", "home", source="test", data={"seconds": 5})
    )
    async with running(build_worker(services, "w1")):
        records = await eventually(lambda: _history_if(services, 1))
    assert records[0].outcome == "timeout"
    assert records[0].playbooks[0].error == "did not finish within 0.3s"
    await client.aclose()

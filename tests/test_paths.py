"""The path sampler (bot.sources.paths): real probes against the site responders, real Redis.

Each round probes every path probe; the primary is failing when a quorum of its probes
fail; ``bot.damping.sample`` turns samples into edges, and only edges publish a hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from bot.config import Settings
from bot.events import Event
from bot.queue import EVENT_FIELD
from bot.services import Services
from bot.sim.sites import SitesSim, start_sites_sim
from bot.sources.paths import PathPoller, path_probes
from tests.conftest import make_settings

PRIMARY = ("ike-a", "ike-b", "ike-c")


@pytest.fixture
async def sites() -> AsyncIterator[SitesSim]:
    responders = [{"name": n, "kind": "tcp"} for n in (*PRIMARY, "sec", "other")]
    sim = await start_sites_sim({"sites": [{"name": "gw", "responders": responders}]})
    try:
        yield sim
    finally:
        await sim.close()


def path_settings(prefix: str, tmp_path: Path, sites: SitesSim, **failover: Any) -> Settings:
    probes = [
        {
            "name": n,
            "kind": "tcp",
            "target": f"127.0.0.1:{sites.port('gw', n)}",
            "interval": 1,
            "timeout": 0.5,
        }
        for n in (*PRIMARY, "sec", "other")
    ]
    site = {
        "probes": probes,
        "traffic_manager": {"resource_group": "rg", "profile": "vpn", "endpoint": "home"},
        "failover": {
            "actor": "traffic-manager",
            "primary": "primary",
            "secondary": "secondary",
            "primary_probes": list(PRIMARY),
            "secondary_probes": ["sec"],
            "damping": {"fail_after": 2, "success_after": 3},
            **failover,
        },
    }
    return make_settings(prefix, tmp_path, sites={"home": site})


@pytest.fixture
async def paths(
    prefix: str, tmp_path: Path, sites: SitesSim, redis_url: str
) -> AsyncIterator[PathPoller]:
    from redis.asyncio import Redis

    settings = path_settings(prefix, tmp_path, sites)
    client = Redis.from_url(redis_url)
    try:
        yield PathPoller(Services.build(settings, client), "home", settings.sites["home"])
    finally:
        await client.aclose()


async def all_events(services: Services) -> list[Event]:
    rows = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", await services.redis.xrange(services.keys.stream)
    )
    return [Event.from_wire(fields[EVENT_FIELD.encode()]) for _, fields in rows]


async def events(services: Services) -> list[Event]:
    """The sampler's hints (each probe's own ``probe.*`` hints are the recorder's)."""
    return [e for e in await all_events(services) if not e.type.startswith("probe.")]


async def polls(poller: PathPoller, n: int) -> list[str | None]:
    return [await poller.poll() for _ in range(n)]


async def down(sites: SitesSim, *names: str, up: bool = False) -> None:
    for name in names:
        await sites.set_state("gw", name, up=up)


async def test_the_sampler_runs_the_path_probes_and_only_those(paths: PathPoller) -> None:
    site = paths.services.settings.sites["home"]
    assert path_probes(site) == {*PRIMARY, "sec"}
    assert set(paths.specs) == {*PRIMARY, "sec"} and paths.interval == 1.0
    await paths.poll()
    state = await paths.services.state.site_state("home")
    assert {k.split(".")[1] for k in state if k.startswith("probe.")} == {*PRIMARY, "sec"}


async def test_one_failing_probe_is_not_a_quorum(paths: PathPoller, sites: SitesSim) -> None:
    await down(sites, "ike-a")
    assert await polls(paths, 5) == [None] * 5
    state = await paths.services.state.site_state("home")
    assert state["path.primary.judged_up"] == "1" and state["path.primary.fail_streak"] == "0"
    assert state["path.primary.failing"] == "ike-a"  # seen, and said which one
    assert state["probe.ike-a.reason"] == "refused"  # each probe's own result is recorded
    assert await events(paths.services) == []
    # ... with its own hint for the site's probe judgement (not the path's).
    assert [e.data["probe"] for e in await all_events(paths.services)] == ["ike-a"]


async def test_a_quorum_fails_the_primary_once_at_the_edge(
    paths: PathPoller, sites: SitesSim
) -> None:
    await down(sites, "ike-a", "ike-b")
    assert await polls(paths, 5) == [None, "path.failed", None, None, None]
    (event,) = await events(paths.services)
    assert (event.type, event.site, event.source) == ("path.failed", "home", "paths")
    assert event.data["path"] == "primary"
    assert sorted(cast("list[str]", event.data["failing"])) == ["ike-a", "ike-b"]
    state = await paths.services.state.site_state("home")
    assert state["path.primary.judged_up"] == "0" and state["path.primary.downs"] == "1"

    # Back up while traffic is on the primary: no failback is needed, nothing is published.
    await down(sites, "ike-a", "ike-b", up=True)
    assert await polls(paths, 5) == [None] * 5
    assert [e.type for e in await events(paths.services)] == ["path.failed"]
    state = await paths.services.state.site_state("home")
    assert state["path.primary.judged_up"] == "1" and state["path.primary.up_streak"] == "5"


async def test_failback_needed_only_while_traffic_is_on_the_secondary(
    paths: PathPoller, sites: SitesSim
) -> None:
    services = paths.services
    await down(sites, *PRIMARY)
    assert "path.failed" in await polls(paths, 3)
    await services.state.set_site_state("home", {"damping.active": "secondary"})
    await down(sites, *PRIMARY, up=True)
    # success_after = 3: the third good sample in a row is the edge; later ones are quiet.
    assert await polls(paths, 6) == [None, None, "failback.needed", None, None, None]
    assert [e.type for e in await events(services)] == ["path.failed", "failback.needed"]

    # A failure restarts the run of good samples; the next third one is an edge again.
    await down(sites, "ike-a", "ike-b")
    assert await polls(paths, 1) == [None]
    await down(sites, "ike-a", "ike-b", up=True)
    assert await polls(paths, 3) == [None, None, "failback.needed"]

    # Traffic back on the primary (the reconciler failed back): recovering is no news.
    await services.state.set_site_state("home", {"damping.active": "primary"})
    await down(sites, "ike-a", "ike-b")
    await polls(paths, 1)
    await down(sites, "ike-a", "ike-b", up=True)
    assert await polls(paths, 4) == [None] * 4
    kinds = [e.type for e in await events(services)]
    assert kinds == ["path.failed", "failback.needed", "failback.needed"]


async def test_the_secondary_is_sampled_but_publishes_nothing(
    paths: PathPoller, sites: SitesSim
) -> None:
    await down(sites, "sec")
    assert await polls(paths, 3) == [None] * 3
    state = await paths.services.state.site_state("home")
    assert state["path.secondary.judged_up"] == "0" and state["path.secondary.failing"] == "sec"
    assert state["path.primary.judged_up"] == "1"
    assert await events(paths.services) == []


async def test_an_explicit_quorum_of_one(
    prefix: str, tmp_path: Path, sites: SitesSim, services: Services
) -> None:
    settings = path_settings(prefix, tmp_path, sites, quorum=1)
    poller = PathPoller(Services.build(settings, services.redis), "home", settings.sites["home"])
    await down(sites, "ike-c")
    assert await polls(poller, 2) == [None, "path.failed"]

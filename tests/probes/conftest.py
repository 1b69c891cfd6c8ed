"""Fixtures: the site responders simulator on 127.0.0.1 with one responder per case."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.sim.sites import SitesSim, start_sites_sim
from tests.probes.support import CONFIG


@pytest.fixture
async def sim() -> AsyncIterator[SitesSim]:
    sites = await start_sites_sim(CONFIG, poll_interval=0.05)
    try:
        yield sites
    finally:
        await sites.close()

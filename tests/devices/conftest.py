"""Fixtures: each device simulator on 127.0.0.1 (port 0), a fake clock, a /_sim/ client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bot.sim.devices.barracuda import BarracudaDevice, start_barracuda_sim
from bot.sim.devices.kemp import KempDevice, start_kemp_sim
from bot.sim.devices.sonicos import SonicOSDevice, start_sonicos_sim

# Distinctive secrets, so a leak into any log line or error text is easy to spot.
SW_USER = "tw-api"
SW_PASSWORD = "Sw-Pa55-9f3a6c!"
CUDA_TOKEN = "cuda-token-7d1e0b5a"
CUDA_RO_TOKEN = "cuda-readonly-4c2f"
CUDA_USER = "tw-rest"
CUDA_PASSWORD = "Cuda-Pa55-0e8d!"
KEMP_USER = "bal"
KEMP_PASSWORD = "Kemp-Pa55-1b7c!"
KEMP_KEY = "kemp-apikey-5a9e3f"
SECRETS = (SW_PASSWORD, CUDA_TOKEN, CUDA_RO_TOKEN, CUDA_PASSWORD, KEMP_PASSWORD, KEMP_KEY)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Running:
    """A running simulator: its world and base URL, plus a /_sim/ helper."""

    device: Any
    url: str

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, json=body) as response,
        ):
            assert response.status < 300, (response.status, await response.text())
            return await response.json()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sonicos(clock: FakeClock) -> AsyncIterator[Running]:
    device = SonicOSDevice(username=SW_USER, password=SW_PASSWORD, clock=clock)
    runner, port = await start_sonicos_sim(device)
    yield Running(device, f"http://127.0.0.1:{port}")
    await runner.cleanup()


@pytest.fixture
async def barracuda(clock: FakeClock) -> AsyncIterator[Running]:
    device = BarracudaDevice(
        username=CUDA_USER,
        password=CUDA_PASSWORD,
        tokens={CUDA_TOKEN: True, CUDA_RO_TOKEN: False},
        clock=clock,
    )
    runner, port = await start_barracuda_sim(device)
    yield Running(device, f"http://127.0.0.1:{port}")
    await runner.cleanup()


@pytest.fixture
async def kemp() -> AsyncIterator[Running]:
    device = KempDevice(username=KEMP_USER, password=KEMP_PASSWORD, api_keys={KEMP_KEY})
    runner, port = await start_kemp_sim(device)
    yield Running(device, f"http://127.0.0.1:{port}")
    await runner.cleanup()


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked: {text[:200]!r}"

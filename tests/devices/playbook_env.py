"""What the device playbook tests share: the simulators, a site configured with them, runs.

The device simulators run on 127.0.0.1 (``start_devices_sim``) with distinctive credentials;
site ``home`` has a SonicWall, a Barracuda, two KEMP devices (one without and one with a
virtual service) and an RRAS server replayed from a recording file. Runs go through the real
runner (``tests.test_azure_playbooks.execute``) with real Redis.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bot.config import Settings
from bot.models import Plan, PlaybookCall, RunRecord
from bot.redact import Redactor
from bot.services import Services
from bot.sim.devices import DevicesSim, start_devices_sim
from bot.sim.devices.barracuda import BarracudaDevice
from bot.sim.devices.kemp import KempDevice
from bot.sim.devices.sonicos import SonicOSDevice
from playbooks.devices.connect import recorded_transport
from playbooks.devices.rras import RECORDED_INTERFACES, RecordedPsTransport
from tests.conftest import make_settings
from tests.devices.conftest import (
    CUDA_PASSWORD,
    CUDA_RO_TOKEN,
    CUDA_TOKEN,
    CUDA_USER,
    KEMP_KEY,
    KEMP_PASSWORD,
    KEMP_USER,
    SECRETS,
    SW_PASSWORD,
    SW_USER,
)
from tests.test_azure_playbooks import execute

OLD_DEST = "20.50.1.10"  # the recorded interface's destination (an Azure gateway)
NEW_DEST = "20.50.1.20"
DEAD_DEST = "20.50.1.99"  # not reachable from the recorded RRAS server
POLICY = "Azure"
VIP = "203.0.113.50"


def recording(state: str = "Connected") -> dict[str, Any]:
    azure = copy.deepcopy(RECORDED_INTERFACES["Azure"])
    azure["ConnectionState"] = state
    return {"interfaces": {"Azure": azure}, "reachable": [OLD_DEST, NEW_DEST]}


def devices_config(
    sim: DevicesSim, rras_recording: Path, *, timeout: float = 5.0, kemp_api: str = "v1"
) -> list[dict[str, Any]]:
    """``[[sites.home.devices]]`` for the simulators (secrets given as values: these are
    overrides, not a TOML file)."""
    return [
        {
            "kind": "sonicwall",
            "name": "fw1",
            "url": sim.urls["sonicos"],
            "username": SW_USER,
            "password": SW_PASSWORD,
            "policy": POLICY,
            "timeout": timeout,
        },
        {
            "kind": "barracuda",
            "name": "cgf1",
            "url": sim.urls["barracuda"],
            "token": CUDA_TOKEN,
            "timeout": timeout,
        },
        {
            "kind": "kemp",
            "name": "lm1",
            "url": sim.urls["kemp"],
            "api_key": KEMP_KEY,
            "api": kemp_api,
            "timeout": timeout,
        },
        {
            "kind": "kemp",
            "name": "lm-ike",
            "url": sim.urls["kemp"],
            "username": KEMP_USER,
            "password": KEMP_PASSWORD,
            "api": kemp_api,
            "virtual_service": VIP,
            "vs_port": 4500,
            "timeout": timeout,
        },
        {
            "kind": "rras",
            "name": "rras1",
            "url": "https://rras01.corp.example:5986",
            "interface": POLICY,
            "recording": str(rras_recording),
        },
    ]


async def start_sims() -> DevicesSim:
    return await start_devices_sim(
        sonicos=SonicOSDevice(username=SW_USER, password=SW_PASSWORD),
        barracuda=BarracudaDevice(
            username=CUDA_USER,
            password=CUDA_PASSWORD,
            tokens={CUDA_TOKEN: True, CUDA_RO_TOKEN: False},
        ),
        kemp=KempDevice(username=KEMP_USER, password=KEMP_PASSWORD, api_keys={KEMP_KEY}),
    )


@dataclass
class Env:
    sim: DevicesSim
    services: Services
    recording: Path

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def rras(self) -> RecordedPsTransport:
        """The transport the playbooks use in this process (one per recording file)."""
        return recorded_transport(self.recording)

    async def control(self, kind: str, method: str, path: str, body: Any = None) -> Any:
        """A ``/_sim/`` call to one simulator."""
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.sim.urls[kind] + path, json=body) as response,
        ):
            assert response.status < 300, (response.status, await response.text())
            return await response.json()

    async def fault(self, device: str, **spec: Any) -> None:
        """Arm a fault (``kind``, ``method``, ``path``, ``count``, ...) in one simulator."""
        await self.control(device, "POST", "/_sim/faults", spec)

    async def plan(self, name: str, confirmed: bool = False, **params: Any) -> Plan:
        from bot.app import build_worker

        runner = build_worker(self.services, "t").runner
        call = PlaybookCall(name=name, params=params, confirmed=confirmed)
        return await runner.plan("home", call)

    async def run(self, name: str, confirmed: bool = False, **params: Any) -> RunRecord:
        record = await execute(
            self.services, PlaybookCall(name=name, params=params, confirmed=confirmed)
        )
        for result in record.playbooks:  # summaries and errors are one line each
            assert "\n" not in result.detail, result.detail
            assert "\n" not in (result.error or ""), result.error
        return record

    async def texts(self, record: RunRecord) -> str:
        """Everything a run left behind: its journal (raw), record and history."""
        redis = self.services.redis
        raw = await redis.lrange(self.services.keys.journal("home", record.run_id), 0, -1)  # type: ignore[misc]
        history = await self.services.state.history("home", 50)
        return "\n".join(
            [
                b"\n".join(raw).decode(),
                record.model_dump_json(),
                *(r.model_dump_json() for r in history),
            ]
        )


async def environment(
    prefix: str,
    tmp_path: Path,
    redis_url: str,
    *,
    redact: Redactor | None = None,
    device_timeout: float = 5.0,
    kemp_api: str = "v1",
    rras_state: str = "Connected",
    **overrides: Any,
) -> AsyncIterator[Env]:
    """The simulators, the site and its services (an async generator for a fixture)."""
    sim = await start_sims()
    path = tmp_path / f"rras-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(recording(rras_state)))
    site = {"devices": devices_config(sim, path, timeout=device_timeout, kemp_api=kemp_api)}
    site.update(overrides.pop("site", {}))
    settings = make_settings(prefix, tmp_path, sites={"home": site}, **overrides)
    client = Redis.from_url(redis_url)
    services = Services.build(settings, client, redact=redact)
    try:
        yield Env(sim, services, path)
    finally:
        await services.azure.close()
        await client.aclose()
        await sim.aclose()


def leaked(text: str) -> list[str]:
    """The secrets (as is, or as an HTTP Basic credential) found in ``text``."""
    forms = {s: s for s in SECRETS}
    for user, password in ((SW_USER, SW_PASSWORD), (CUDA_USER, CUDA_PASSWORD)):
        forms[base64.b64encode(f"{user}:{password}".encode()).decode()] = password
    forms[base64.b64encode(f"{KEMP_USER}:{KEMP_PASSWORD}".encode()).decode()] = KEMP_PASSWORD
    return sorted({secret for form, secret in forms.items() if form in text})

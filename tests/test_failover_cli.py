"""``tunnelwarden failover hold|release|status``: a person's hold on failback (research C5's
'nopreempt'), through the console script, consumed by a real worker process."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli import parse_duration
from bot.services import Services
from bot.sim.devices import DevicesSim
from tests.conftest import cli_env, start_worker, tunnelwarden
from tests.devices.conftest import SW_PASSWORD as PASSWORD
from tests.devices.conftest import SW_USER
from tests.devices.playbook_env import POLICY, start_sims
from tests.helpers import eventually

CONFIG = """
[worker]
block_ms = 100

[[sites.home.probes]]
name = "primary-ike"
kind = "tcp"
target = "127.0.0.1:9"

[[sites.home.devices]]
name = "fw"
kind = "sonicwall"
url = "{sonicos}"
username = "{user}"
password_env = "TW_TEST_FW_PASSWORD"
policy = "{policy}"

[sites.home.failover]
actor = "sonicwall"
primary = "198.51.100.1"
secondary = "198.51.100.2"
primary_probes = ["primary-ike"]

[sites.branch]
description = "no failover pair"
"""


@pytest.fixture
async def sonicos() -> AsyncIterator[DevicesSim]:
    sim = await start_sims()
    try:
        yield sim
    finally:
        await sim.aclose()


@pytest.fixture
def config(tmp_path: Path, sonicos: DevicesSim) -> Path:
    path = tmp_path / "tw.toml"
    path.write_text(CONFIG.format(sonicos=sonicos.urls["sonicos"], user=SW_USER, policy=POLICY))
    return path


def tw(redis_url: str, prefix: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tunnelwarden(), "--config", str(config), *args],
        env=cli_env(redis_url, prefix, TW_TEST_FW_PASSWORD=PASSWORD),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tw_json(redis_url: str, prefix: str, config: Path, *args: str) -> Any:
    result = tw(redis_url, prefix, config, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-5m", "400d", "2x"])
def test_bad_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"^(not a duration|duration out of range): ") as exc:
        parse_duration(text)
    assert "\n" not in str(exc.value)


async def test_a_hold_is_taken_by_the_worker_and_released_again(
    services: Services,
    redis_url: str,
    prefix: str,
    config: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    start_worker(procs, config, redis_url, prefix, "w1", TW_TEST_FW_PASSWORD=PASSWORD)
    before = time.time()
    held = tw_json(redis_url, prefix, config, "failover", "hold", "home", "--for", "2h")
    assert held["site"] == "home" and held["event_id"]
    assert before + 7200 <= float(held["hold"]) <= time.time() + 7200

    async def damping_holds() -> dict[str, str] | None:
        state = await services.state.site_state("home")
        return state if state.get("damping.hold_until") else None

    state = await eventually(damping_holds, within=30)
    assert float(state["damping.hold_until"]) == pytest.approx(float(held["hold"]), abs=0.01)
    assert state["failover.hold"] == held["hold"]

    shown = tw_json(redis_url, prefix, config, "failover", "status", "home")
    assert shown["state"]["failover.hold"] == held["hold"]
    assert shown["state"]["damping.active"] == "primary"

    indefinite = tw_json(redis_url, prefix, config, "failover", "hold", "home")
    assert indefinite["hold"] == "indefinite"

    async def held_for_good() -> bool:
        return (await services.state.site_state("home")).get("damping.hold_indefinite") == "1"

    await eventually(held_for_good, within=30)

    released = tw(redis_url, prefix, config, "failover", "release", "home")
    assert released.returncode == 0, released.stderr
    assert "failback hold released for home" in released.stdout

    async def let_go() -> bool:
        state = await services.state.site_state("home")
        return state.get("damping.hold_indefinite") == "0" and not state.get("damping.hold_until")

    await eventually(let_go, within=30)
    history = await services.state.history("home", 20)
    assert [r.event_type for r in history] == ["failover.check"] * 3, history
    assert [r.outcome for r in history] == ["no_changes"] * 3, history
    assert [r.reason for r in history] == [
        "manual failback hold released; traffic on primary",
        "automatic failback held until released; traffic on primary",
        f"automatic failback held until ~{_hhmm(float(held['hold']))}; traffic on primary",
    ]
    everything = json.dumps([r.model_dump(mode="json") for r in history])
    assert PASSWORD not in everything


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hold", "nowhere"], "unknown site 'nowhere'"),
        (["hold", "branch"], "site 'branch' has no [sites.branch.failover] pair"),
        (["hold", "home", "--for", "soon"], "not a duration: 'soon'"),
        (["release", "branch"], "site 'branch' has no [sites.branch.failover] pair"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    redis_url: str, prefix: str, config: Path, args: list[str], message: str
) -> None:
    result = tw(redis_url, prefix, config, "failover", *args)
    assert result.returncode == 2
    text = result.stdout + result.stderr
    assert message in text and "Traceback" not in text
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"{prefix}*") == [], "a refused command wrote something"
    finally:
        client.close()


def _hhmm(ts: float) -> str:
    """A time to come, rounded up to the minute: never promise earlier than the truth."""
    return time.strftime("%H:%M UTC", time.gmtime(math.ceil(ts / 60) * 60))

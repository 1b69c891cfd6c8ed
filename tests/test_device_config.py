"""``[[sites.NAME.devices]]``, ``[sites.NAME.traffic_manager]`` and ``[sites.NAME.failover]``:
what ``config check`` accepts and the one-line reason for what it refuses; and the device
simulators' command, which serves loopback only."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from bot.config import ConfigError, load_config
from tests.conftest import tunnelwarden

SITE = """
[sites.home]
resource_group = "rg-vpn"
connection = "conn-home"
local_network_gateway = "lng-home"

[[sites.home.probes]]
name = "primary-ike"
kind = "tcp"
target = "127.0.0.1:500"

[[sites.home.probes]]
name = "primary-https"
kind = "tcp"
target = "127.0.0.1:443"

[[sites.home.devices]]
name = "fw"
kind = "sonicwall"
url = "{url}"
username = "admin"
password_env = "FW_PASSWORD"
policy = "Azure"
"""

FAILOVER = """
[sites.home.failover]
actor = "{actor}"
primary = "198.51.100.1"
secondary = "198.51.100.2"
primary_probes = {probes}
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tw.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("FW_PASSWORD", "fw-secret-123")
    try:
        load_config(write(tmp_path, text))
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_device_and_a_failover_pair_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FW_PASSWORD", "fw-secret-123")
    text = SITE.format(url="https://fw.example.net") + FAILOVER.format(
        actor="sonicwall", probes='["primary-ike", "primary-https"]', extra=""
    )
    settings = load_config(write(tmp_path, text))
    site = settings.sites["home"]
    device = site.device_for("sonicwall")
    assert device.name == "fw" and device.verify_tls is True, "TLS verification is the default"
    assert device.password is not None
    assert device.password.get_secret_value() == "fw-secret-123"
    assert site.failover is not None and site.failover.primary_quorum == 2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://fw.example.net", "plain http is only allowed to 127.0.0.1 or ::1"),
        ("http://192.0.2.10:8080", "plain http is only allowed to 127.0.0.1 or ::1"),
        ("https://admin:pw@fw.example.net", "credentials must not be part of the device URL"),
        ("ftp://fw.example.net", "unsupported URL scheme 'ftp'"),
        ("fw.example.net", "device URL must be absolute"),
    ],
)
def test_device_urls_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    found = problems(tmp_path, SITE.format(url=url), monkeypatch)
    assert len(found) == 1, found
    assert found[0].startswith("sites.home.devices.0"), found
    assert expected in found[0], found
    assert "\n" not in found[0] and "pw@" not in found[0], "one line, no credentials echoed"


def test_plain_http_to_loopback_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1:9443", "http://[::1]:9443"):
        assert problems(tmp_path, SITE.format(url=url), monkeypatch) == []


def test_a_sonicwall_without_a_password_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SITE.format(url="https://fw.example.net").replace('password_env = "FW_PASSWORD"\n', "")
    found = problems(tmp_path, text, monkeypatch)
    assert any("a sonicwall device needs username and password" in p for p in found), found


def test_device_names_are_unique_within_a_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = SITE.format(url="https://fw.example.net")
    twice = base + base[base.index("[[sites.home.devices]]") :]
    found = problems(tmp_path, twice, monkeypatch)
    assert any("device names must be unique within a site: fw" in p for p in found), found


@pytest.mark.parametrize(
    ("actor", "probes", "extra", "expected"),
    [
        ("sonicwall", '["primary-ike", "nowhere"]', "", "failover: unknown probes nowhere"),
        ("sonicwall", '["primary-ike"]', "quorum = 2", "quorum 2 is more than the 1 primary"),
        ("kemp", '["primary-ike"]', "", "failover: no kemp device in [[devices]]"),
        ("sonicwall", '["primary-ike"]', 'device = "lb"', "failover: no device named 'lb'"),
        ("traffic-manager", '["primary-ike"]', "", "needs [traffic_manager]"),
    ],
)
def test_failover_pairs_must_fit_the_site(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    actor: str,
    probes: str,
    extra: str,
    expected: str,
) -> None:
    text = SITE.format(url="https://fw.example.net") + FAILOVER.format(
        actor=actor, probes=probes, extra=extra
    )
    found = problems(tmp_path, text, monkeypatch)
    assert len(found) == 1 and expected in found[0], found


def test_config_check_prints_the_device_problem_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, SITE.format(url="http://fw.example.net"))
    result = subprocess.run(
        [*tunnelwarden(), "config", "check", "--config", str(path)],
        env={"FW_PASSWORD": "fw-secret-123", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "devices" in line]
    assert len(lines) == 1 and "plain http is only allowed" in lines[0], result
    assert "fw-secret-123" not in result.stdout + result.stderr


def test_sim_devices_refuses_a_non_loopback_host() -> None:
    result = subprocess.run(
        [*tunnelwarden(), "sim", "devices", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "only bind to 127.0.0.1 or ::1, not '0.0.0.0'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


async def test_sim_devices_serves_each_simulator_on_loopback() -> None:
    proc = await asyncio.create_subprocess_exec(
        *tunnelwarden(),
        "sim",
        "devices",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        while len(urls) < 3:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the simulator exited before printing its URLs"
            found = re.match(r"(\w+) simulator on (http://127\.0\.0\.1:\d+) ", line)
            if found:
                urls[found.group(1)] = found.group(2)
        assert set(urls) == {"sonicos", "barracuda", "kemp"}, urls
        async with aiohttp.ClientSession() as http:
            for url in urls.values():
                async with http.get(f"{url}/_sim/state") as resp:
                    assert resp.status == 200, url
                    assert isinstance(await resp.json(), dict)
    finally:
        proc.terminate()
        await proc.wait()

"""The benchmarks' sites: a tunnelwarden config (TOML) and the ARM simulator world to match.

Push passwords come from one environment variable (``password_env``), as the config rules
require; every address is loopback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import SITES
from bot.sim.world import World

SUB = "00000000-0000-0000-0000-0000000be7c0"
RG = "rg-bench"
PASSWORD_ENV = "BENCH_PUSH_PASSWORD"
PASSWORD = "bench-push-pw-4711"
KEY = "bench-shared-key"


def site_name(s: int) -> str:
    return f"site{s:02d}"


def sites_world(first_ips: Sequence[str], **settings: Any) -> World:
    """One LNG, connection and router per site (site ``s`` at ``first_ips[s]``), on one
    gateway; ``settings`` are the simulator's (``tunnel_delay``, ``throttling``, ...). The
    world's clock is ``time.perf_counter``, the benchmarks' own."""
    seed: dict[str, Any] = {
        "subscription": SUB,
        "settings": settings,
        "resource_groups": [{"name": RG}],
        "virtual_network_gateways": [{"resource_group": RG, "name": "vpngw"}],
        "local_network_gateways": [],
        "connections": [],
        "devices": [],
    }
    for s, ip in enumerate(first_ips):
        name = site_name(s)
        seed["local_network_gateways"].append(
            {
                "resource_group": RG,
                "name": f"lng-{name}",
                "gateway_ip_address": ip,
                "address_prefixes": [f"10.{s // 250}.{s % 250}.0/24"],
            }
        )
        seed["connections"].append(
            {
                "resource_group": RG,
                "name": f"conn-{name}",
                "virtual_network_gateway": "vpngw",
                "local_network_gateway": f"lng-{name}",
                "shared_key": KEY,
            }
        )
        seed["devices"].append(
            {"name": f"router-{name}", "public_ip": ip, "shared_key": KEY, "lng": f"lng-{name}"}
        )
    return World.from_seed(seed, clock=time.perf_counter)


def write_config(
    path: Path,
    *,
    prefix: str,
    http_port: int,
    sim_port: int,
    admin_port: int = 0,
    sites: int = SITES,
    log_level: str = "INFO",
    arm_budget: bool = True,
) -> Path:
    lines = [
        "[redis]",
        f'prefix = "{prefix}"',
        f'state_dir = "{path.parent / "state"}"',
        "",
        "[policies]",
        "max_changes_per_hour = 0  # 10 changes per site in one run: lift the hourly limit",
        "tunnel_timeout = 5",
        "tunnel_poll = 0.05",
        "retry_max_delay = 1",
        "",
        "[azure]",
        'cloud = "sim"',
        f'endpoint = "http://127.0.0.1:{sim_port}"',
        f'subscription_id = "{SUB}"',
        "polling_interval = 0",
        "",
        "[azure.budget]",
        f"enabled = {'true' if arm_budget else 'false'}",
        "",
        "[http]",
        'host = "127.0.0.1"',
        f"port = {http_port}",
        "",
        "[admin]",
        'host = "127.0.0.1"',
        f"port = {admin_port}",
        "",
        "[log]",
        f'level = "{log_level}"',
        'format = "json"',
    ]
    for s in range(sites):
        name = site_name(s)
        lines += [
            "",
            f"[sites.{name}]",
            f'resource_group = "{RG}"',
            f'local_network_gateway = "lng-{name}"',
            f'connection = "conn-{name}"',
            f"[sites.{name}.push]",
            f'hostname = "{name}.bench.example"',
            f'username = "{name}"',
            f'password_env = "{PASSWORD_ENV}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path

"""A site behind a SonicWall with two gateways: the two instances of an active-active Azure
VPN gateway (the policy's primary and secondary gateway are the instances' public IPs)."""

from __future__ import annotations

from typing import Any

from bot.sim.devices.sonicos import SonicOSDevice, default_policy
from bot.sim.world import World
from tests.azure_world import RG, SUB

SITE_IP = "198.51.100.4"
KEY = "sonic-psk-6c1d"
CONNECTION = "conn-home"


def seed() -> dict[str, Any]:
    return {
        "subscription": SUB,
        "settings": {"tunnel_delay": 0.0, "retry_after": 0, "lro_polls": 1},
        "resource_groups": [{"name": RG, "location": "westeurope"}],
        "virtual_network_gateways": [
            {"resource_group": RG, "name": "vpngw", "properties": {"activeActive": True}}
        ],
        "local_network_gateways": [
            {
                "resource_group": RG,
                "name": "lng-home",
                "gateway_ip_address": SITE_IP,
                "address_prefixes": ["192.168.10.0/24"],
            }
        ],
        "connections": [
            {
                "resource_group": RG,
                "name": CONNECTION,
                "virtual_network_gateway": "vpngw",
                "local_network_gateway": "lng-home",
                "shared_key": KEY,
            }
        ],
        "devices": [
            {"name": "sonicwall-home", "public_ip": SITE_IP, "shared_key": KEY, "lng": "lng-home"}
        ],
    }


def world() -> tuple[World, str, str]:
    """The world and the gateway's two instance IPs (primary, secondary)."""
    w = World.from_seed(seed())
    primary, secondary = w.gateway_vips("vpngw")
    return w, primary, secondary


def sonicwall(primary: str, secondary: str, **device: Any) -> SonicOSDevice:
    policy = {**default_policy(), "gateway": {"primary": primary, "secondary": secondary}}
    return SonicOSDevice(policies=[policy], **device)


def legs(w: World) -> list[str]:
    """The status of each of the connection's two tunnels (instance 0, instance 1)."""
    return [t["connectionStatus"] for t in w.tunnel_info(CONNECTION)["tunnels"]]

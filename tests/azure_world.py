"""A simulated Azure world for the playbook tests: one site, a richly configured connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from bot.config import Settings
from bot.sim.world import World
from tests.conftest import make_settings

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "rg-vpn"
OLD_IP = "198.51.100.4"
NEW_IP = "203.0.113.7"
SHARED_KEY = "pre-shared-Key-4711"
NET_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network"
GW_ID = f"{NET_ID}/virtualNetworkGateways/vpngw"

# Everything the recreate strategy must carry over.
CONNECTION_SETTINGS: dict[str, Any] = {
    "connectionProtocol": "IKEv2",
    "connectionMode": "InitiatorOnly",
    "routingWeight": 7,
    "dpdTimeoutSeconds": 45,
    "enableBgp": False,
    "usePolicyBasedTrafficSelectors": True,
    "ipsecPolicies": [
        {
            "saLifeTimeSeconds": 3600,
            "saDataSizeKilobytes": 102400000,
            "ipsecEncryption": "AES256",
            "ipsecIntegrity": "SHA256",
            "ikeEncryption": "AES256",
            "ikeIntegrity": "SHA256",
            "dhGroup": "DHGroup14",
            "pfsGroup": "PFS2048",
        }
    ],
    "trafficSelectorPolicies": [
        {"localAddressRanges": ["10.10.0.0/16"], "remoteAddressRanges": ["192.168.178.0/24"]}
    ],
    "ingressNatRules": [{"id": f"{GW_ID}/natRules/nat-in"}],
    "egressNatRules": [{"id": f"{GW_ID}/natRules/nat-out"}],
}


def seed() -> dict[str, Any]:
    return {
        "subscription": SUB,
        "settings": {"tunnel_delay": 0.0, "retry_after": 0, "lro_polls": 1},
        "resource_groups": [{"name": RG, "location": "westeurope"}],
        "virtual_network_gateways": [{"resource_group": RG, "name": "vpngw"}],
        "local_network_gateways": [
            {
                "resource_group": RG,
                "name": "lng-home",
                "gateway_ip_address": OLD_IP,
                "address_prefixes": ["192.168.178.0/24", "192.168.179.0/24"],
                "properties": {
                    "bgpSettings": {
                        "asn": 65010,
                        "bgpPeeringAddress": "192.168.178.1",
                        "peerWeight": 0,
                    },
                },
            }
        ],
        "connections": [
            {
                "resource_group": RG,
                "name": "conn-home",
                "virtual_network_gateway": "vpngw",
                "local_network_gateway": "lng-home",
                "shared_key": SHARED_KEY,
                "tags": {"owner": "netops", "site": "home"},
                "properties": CONNECTION_SETTINGS,
            }
        ],
        "devices": [
            {
                "name": "fritzbox-home",
                "public_ip": OLD_IP,
                "shared_key": SHARED_KEY,
                "lng": "lng-home",
            }
        ],
    }


def world() -> World:
    return World.from_seed(seed())


def azure_settings(prefix: str, tmp_path: Path, port: int, **overrides: Any) -> Settings:
    """Settings for the one-site world; ``sites={"home": {...}}`` adds keys to site home."""
    home = {
        "resource_group": RG,
        "local_network_gateway": "lng-home",
        "connection": "conn-home",
        **overrides.pop("sites", {}).get("home", {}),
    }
    return make_settings(
        prefix,
        tmp_path,
        azure={
            "cloud": "sim",
            "endpoint": f"http://127.0.0.1:{port}",
            "subscription_id": SUB,
            "polling_interval": 0,
            "retry_backoff_factor": 0.01,
            "settle_timeout": 20,
        },
        sites={"home": home},
        security={"journal_key": Fernet.generate_key().decode()},
        **overrides,
    )

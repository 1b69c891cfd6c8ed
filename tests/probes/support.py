"""Shared by the probe tests: the responders the simulator runs, and small builders."""

from __future__ import annotations

from typing import Any

from bot.probes import AnyProbe, parse_probe
from bot.sim.sites import SitesSim

SITE = "home"

CONFIG: dict[str, Any] = {
    "sites": [
        {
            "name": SITE,
            "responders": [
                {"name": "kms", "kind": "tcp"},
                {"name": "portal", "kind": "http", "status": 401, "body": "Unauthorized"},
                {"name": "health", "kind": "http", "status": 200, "body": "state: healthy"},
                {"name": "tls", "kind": "http", "status": 200, "body": "secure", "tls": True},
                {"name": "vpn", "kind": "ikev2", "mode": "accept"},
                {
                    "name": "dns",
                    "kind": "dns",
                    "records": [
                        {"name": "dc1.corp.internal", "type": "A", "value": "10.1.0.10"},
                        {"name": "dc1.corp.internal", "type": "TXT", "value": '"site=home"'},
                        {
                            "name": "kms.corp.internal",
                            "type": "CNAME",
                            "value": "dc1.corp.internal.",
                        },
                    ],
                },
                # the same kinds again, behind the tunnel
                {"name": "kms-int", "kind": "tcp", "behind_tunnel": True},
                {"name": "web-int", "kind": "http", "status": 200, "behind_tunnel": True},
                {"name": "vpn-int", "kind": "ikev2", "behind_tunnel": True},
                {
                    "name": "dns-int",
                    "kind": "dns",
                    "behind_tunnel": True,
                    "records": [{"name": "fs.corp.internal", "type": "A", "value": "10.1.0.20"}],
                },
            ],
        }
    ]
}


def addr(sim: SitesSim, responder: str) -> str:
    return f"127.0.0.1:{sim.port(SITE, responder)}"


def spec(kind: str, **fields: Any) -> AnyProbe:
    return parse_probe({"name": f"t-{kind}", "kind": kind, "timeout": 1.0, **fields})

"""Playbooks: the only code that changes the outside world."""

from __future__ import annotations

from typing import Any

from playbooks.base import Playbook


def builtin() -> dict[str, Playbook[Any]]:
    """Name → playbook instance, for every playbook this build ships."""
    from playbooks.azure.connection import ResetConnection, VerifyTunnel
    from playbooks.azure.gateway import ResetGateway
    from playbooks.azure.local_gateway import RecreateConnection, UpdateLocalGateway
    from playbooks.azure.traffic_manager import TrafficManagerEndpoint
    from playbooks.barracuda import BarracudaRestartVpn
    from playbooks.kemp import KempRealServer
    from playbooks.notify import Notify
    from playbooks.probes import VerifyProbes
    from playbooks.rras import RrasConnect, RrasSetDestination, RrasStatus
    from playbooks.sonicwall import SonicWallKeepalive, SonicWallPreempt, SonicWallReinitiate
    from playbooks.testing import Noop, Sleep

    found: list[Playbook[Any]] = [
        UpdateLocalGateway(),
        RecreateConnection(),
        ResetConnection(),
        ResetGateway(),
        VerifyTunnel(),
        TrafficManagerEndpoint(),
        VerifyProbes(),
        SonicWallPreempt(),
        SonicWallKeepalive(),
        SonicWallReinitiate(),
        BarracudaRestartVpn(),
        RrasStatus(),
        RrasConnect(),
        RrasSetDestination(),
        KempRealServer(),
        Notify(),
        Noop(),
        Sleep(),
    ]
    return {p.name: p for p in found}

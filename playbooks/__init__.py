"""Playbooks: the only code that changes the outside world."""

from __future__ import annotations

from typing import Any

from playbooks.base import Playbook


def builtin() -> dict[str, Playbook[Any]]:
    """Name → playbook instance, for every playbook this build ships."""
    from playbooks.azure.connection import ResetConnection, VerifyTunnel
    from playbooks.azure.gateway import ResetGateway
    from playbooks.azure.local_gateway import RecreateConnection, UpdateLocalGateway
    from playbooks.notify import Notify
    from playbooks.testing import Noop, Sleep

    found: list[Playbook[Any]] = [
        UpdateLocalGateway(),
        RecreateConnection(),
        ResetConnection(),
        ResetGateway(),
        VerifyTunnel(),
        Notify(),
        Noop(),
        Sleep(),
    ]
    return {p.name: p for p in found}

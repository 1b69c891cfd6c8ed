"""Drivers from a site's configuration (``[[sites.NAME.devices]]``).

``device_spec(ctx, kind, name)`` finds the device a playbook acts on (``name`` picks one when
the site has several of that kind), and ``sonicwall``/``barracuda``/``kemp``/``rras`` build
its driver. A missing or ambiguous device is a :class:`bot.retry.PermanentError` with code
``NotConfigured`` and a one-line reason.

RRAS: ``url`` is ``https://host:5986`` (WinRM over HTTPS; ``http://`` only to loopback), from
which host, port and TLS are taken for :class:`PypsrpTransport`. With ``recording`` set the
device is a :class:`RecordedPsTransport` loaded from that JSON file instead (demos and tests;
no PSRP server needed)::

    {
      "interfaces": {"Azure": {"Name": "Azure", "Destination": ["20.50.1.10"],
                               "AdminStatus": true, "ConnectionState": "Connected", ...}},
      "reachable": ["20.50.1.10", "20.50.1.20"]
    }

``interfaces`` maps an interface name to a recorded ``Get-VpnS2SInterface`` object (as PSRP
delivers it; ``playbooks.devices.rras.RECORDED_INTERFACES`` has two); ``reachable``
(optional; default: every destination) lists the destinations a connect reaches. The file is
read once per process: the recorded interfaces then live in memory (one transport per file,
so a connect followed by a status read sees the change) and are never written back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from bot.config import BarracudaDevice, DeviceSpec, KempDevice, RrasDevice, SonicWallDevice
from bot.retry import PermanentError
from playbooks.base import RunContext
from playbooks.devices.barracuda import Barracuda
from playbooks.devices.common import DeviceConfigError
from playbooks.devices.kemp import Kemp
from playbooks.devices.rras import PsTransport, PypsrpTransport, RecordedPsTransport, Rras
from playbooks.devices.sonicwall import SonicWall

__all__ = [
    "DeviceParams",
    "barracuda",
    "device_spec",
    "kemp",
    "recorded_transport",
    "rras",
    "sonicwall",
    "spec_of",
]

Spec = TypeVar("Spec", SonicWallDevice, BarracudaDevice, KempDevice, RrasDevice)
KINDS: dict[type[Any], str] = {
    SonicWallDevice: "sonicwall",
    BarracudaDevice: "barracuda",
    KempDevice: "kemp",
    RrasDevice: "rras",
}
WINRM_HTTPS = 5986
WINRM_HTTP = 5985

# One recorded transport per recording file, per process.
_RECORDINGS: dict[Path, RecordedPsTransport] = {}


class DeviceParams(BaseModel):
    """Parameters every device playbook takes."""

    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="the device's name (only needed when the site has several of its kind)",
    )


def device_spec(ctx: RunContext, kind: str, name: str | None) -> DeviceSpec:
    """The site's device of ``kind`` (named ``name`` when given)."""
    cfg = ctx.site_config
    if cfg is None:
        raise PermanentError(f"site {ctx.site!r} is not configured", "NotConfigured")
    try:
        return cfg.device_for(kind, name)
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "no such device"
        raise PermanentError(f"site {ctx.site}: {message}", "NotConfigured") from None


def spec_of(ctx: RunContext, cls: type[Spec], name: str | None) -> Spec:
    """:func:`device_spec` narrowed to the config class of one kind."""
    spec = device_spec(ctx, KINDS[cls], name)
    if not isinstance(spec, cls):  # device_for checks the kind; this tells the type checker
        raise PermanentError(
            f"site {ctx.site}: device {spec.name} is a {spec.kind}", "NotConfigured"
        )
    return spec


def sonicwall(spec: SonicWallDevice) -> SonicWall:
    assert spec.username and spec.password is not None  # the config model requires both
    return SonicWall(
        spec.url,
        spec.username,
        spec.password,
        verify_tls=spec.verify_tls,
        ca_file=spec.ca_file,
        override=spec.override,
        auth=spec.auth,
        timeout=spec.timeout,
        name=spec.name,
    )


def barracuda(spec: BarracudaDevice) -> Barracuda:
    return Barracuda(
        spec.url,
        token=spec.token,
        username=spec.username,
        password=spec.password,
        verify_tls=spec.verify_tls,
        ca_file=spec.ca_file,
        timeout=spec.timeout,
        name=spec.name,
    )


def kemp(spec: KempDevice) -> Kemp:
    return Kemp(
        spec.url,
        username=spec.username,
        password=spec.password,
        api_key=spec.api_key,
        api=spec.api,
        verify_tls=spec.verify_tls,
        ca_file=spec.ca_file,
        timeout=spec.timeout,
        name=spec.name,
    )


def rras(spec: RrasDevice) -> Rras:
    transport: PsTransport
    if spec.recording is not None:
        transport = recorded_transport(spec.recording)
    else:
        url = URL(spec.url)
        if not url.host:
            raise DeviceConfigError(f"device {spec.name}: url has no host", device=spec.name)
        ssl = url.scheme == "https"
        seconds = max(1, math.ceil(spec.timeout))
        assert spec.username and spec.password is not None  # the config model requires both
        try:
            transport = PypsrpTransport(
                url.host,
                spec.username,
                spec.password,
                port=url.explicit_port or (WINRM_HTTPS if ssl else WINRM_HTTP),
                ssl=ssl,
                auth=spec.auth,
                verify_tls=spec.verify_tls,
                ca_file=spec.ca_file,
                configuration_name=spec.configuration_name,
                operation_timeout=seconds,
                connection_timeout=seconds,
                read_timeout=seconds + 10,  # WinRM wants it above the operation timeout
                name=spec.name,
            )
        except ValueError as exc:
            raise DeviceConfigError(str(exc), device=spec.name) from None
    return Rras(transport, name=spec.name)


def recorded_transport(path: Path) -> RecordedPsTransport:
    """The process's transport for the recording at ``path`` (loaded on first use)."""
    key = Path(path).resolve()
    found = _RECORDINGS.get(key)
    if found is None:
        found = _RECORDINGS[key] = _load_recording(key)
    return found


def _load_recording(path: Path) -> RecordedPsTransport:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeviceConfigError(f"recording {str(path)!r}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise DeviceConfigError(f"recording {str(path)!r}: not JSON: {exc}") from None
    interfaces = data.get("interfaces") if isinstance(data, dict) else None
    if not isinstance(interfaces, dict) or not all(
        isinstance(v, dict) for v in interfaces.values()
    ):
        raise DeviceConfigError(
            f'recording {str(path)!r}: expected {{"interfaces": {{NAME: {{...}}}}}}'
        )
    reachable = data.get("reachable")
    if reachable is not None and (
        not isinstance(reachable, list) or not all(isinstance(a, str) for a in reachable)
    ):
        raise DeviceConfigError(f"recording {str(path)!r}: reachable must be a list of addresses")
    return RecordedPsTransport(
        interfaces, reachable=set(reachable) if reachable is not None else None
    )

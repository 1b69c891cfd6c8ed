"""The RRAS driver: commands built with bound parameters, recorded objects parsed.

No PSRP server can run here, so the driver runs against :class:`RecordedPsTransport` (recorded
``Get-VpnS2SInterface`` objects), and :class:`PypsrpTransport` is checked with pypsrp's own
``PowerShell``/serializer for the commands it builds, and with stand-in WSMan/runspace
classes for its thread, error and output handling.
"""

from __future__ import annotations

import logging
import threading
import traceback
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pypsrp.complex_objects import GenericComplexObject
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.serializer import Serializer
from pypsrp.wsman import WSMan

from playbooks.devices.common import (
    AuthenticationFailed,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    NotFound,
)
from playbooks.devices.rras import (
    PypsrpTransport,
    RecordedPsTransport,
    RemoteCommandFailed,
    Rras,
    S2SInterface,
    build_command,
    to_plain,
)

WINRM_PASSWORD = "Winrm-Pa55-6e2d!"
HOSTILE = "Azure'; Remove-Item C:\\ -Recurse; '"


def offline_powershell() -> PowerShell:
    """A real pypsrp PowerShell on a pool that was never opened (nothing is sent)."""
    pool = RunspacePool(WSMan("127.0.0.1", username="u", password="p"), configuration_name="TW")
    pool.protocol_version = "2.3"  # what an opened pool learns from the server
    return PowerShell(pool)


# ---------------------------------------------------------------------- the driver
async def test_get_parses_recorded_objects() -> None:
    transport = RecordedPsTransport()
    rras = Rras(transport, name="rras01")
    edge = await rras.interface("edge1")
    azure = await rras.interface("Azure")
    assert transport.calls == [
        ("Get-VpnS2SInterface", {"Name": "edge1"}),
        ("Get-VpnS2SInterface", {"Name": "Azure"}),
    ]
    assert edge == S2SInterface(
        name="edge1",
        destination=("131.107.0.2",),
        connection_state="Disconnected",
        admin_status=True,
        protocol="Ikev2",
        authentication_method="PSKOnly",
        last_error=0,
        number_of_tries=3,
        retry_interval=60,
    )
    assert not edge.connected and azure.connected
    assert azure.destination == ("20.50.1.10",)


async def test_exact_commands_for_set_and_connect() -> None:
    transport = RecordedPsTransport(reachable={"20.50.9.9"})
    rras = Rras(transport)
    await rras.disconnect("Azure")
    updated = await rras.set_destination("Azure", "20.50.9.9")
    connected = await rras.connect("Azure")
    assert transport.calls == [
        ("Disconnect-VpnS2SInterface", {"Name": "Azure", "Force": True}),
        (
            "Set-VpnS2SInterface",
            {"Name": "Azure", "Destination": ["20.50.9.9"], "Force": True, "PassThru": True},
        ),
        ("Connect-VpnS2SInterface", {"Name": "Azure", "PassThru": True, "Confirm": False}),
    ]
    assert updated.destination == ("20.50.9.9",) and not updated.connected
    assert connected.connected


async def test_connect_to_an_unreachable_peer_fails() -> None:
    transport = RecordedPsTransport(reachable=set())
    with pytest.raises(RemoteCommandFailed, match=r"\(809\)") as caught:
        await Rras(transport).connect("Azure")
    assert caught.value.transient is False
    assert transport.interfaces["Azure"]["LastError"] == 809


async def test_unknown_interface_and_bad_input_send_nothing_harmful() -> None:
    transport = RecordedPsTransport()
    rras = Rras(transport)
    with pytest.raises(NotFound):
        await rras.interface(HOSTILE)
    assert transport.calls == [("Get-VpnS2SInterface", {"Name": HOSTILE})]  # a value, bound
    for bad in ("20.50.1.10; Stop-Computer", "$(Stop-Computer)", "", "1.2.3.4 5.6.7.8"):
        with pytest.raises(ValueError, match="not an IP address or host name"):
            await rras.set_destination("Azure", bad)
    assert len(transport.calls) == 1
    with pytest.raises(ValueError, match="is not one this driver may run"):
        await transport.invoke("Invoke-Expression", {"Command": "Stop-Computer"})
    with pytest.raises(ValueError, match="invalid parameter name"):
        await transport.invoke("Get-VpnS2SInterface", {"Name; Stop-Computer": "x"})


# ---------------------------------------------------------------------- pypsrp commands
def test_build_command_binds_parameters() -> None:
    ps = build_command(
        offline_powershell(),
        "Set-VpnS2SInterface",
        {"Name": HOSTILE, "Destination": ["20.50.9.9"], "Force": True, "PassThru": True},
    )
    [command] = ps.commands
    assert command.cmd == "Set-VpnS2SInterface"
    assert command.is_script is False  # a command name, not script text
    assert [(a.name, a.value) for a in command.args] == [
        ("Name", HOSTILE),
        ("Destination", ["20.50.9.9"]),
        ("Force", True),
        ("PassThru", True),
    ]
    # On the wire (MS-PSRP Command object): the name travels as a separate string value.
    xml = Serializer().serialize(command)
    assert xml is not None
    assert found(xml, "./MS/S[@N='Cmd']").text == "Set-VpnS2SInterface"
    assert found(xml, "./MS/B[@N='IsScript']").text == "false"
    args = {
        found(arg, "./MS/S[@N='N']").text: found(arg, "./MS/*[@N='V']")
        for arg in xml.findall("./MS/Obj[@N='Args']/LST/Obj")
    }
    assert args["Name"].tag == "S" and args["Name"].text == HOSTILE
    assert [s.text for s in args["Destination"].findall("./LST/S")] == ["20.50.9.9"]
    assert args["Force"].tag == "B" and args["Force"].text == "true"
    assert HOSTILE not in ET.tostring(found(xml, "./MS/S[@N='Cmd']"), encoding="unicode")


def found(element: ET.Element, path: str) -> ET.Element:
    child = element.find(path)
    assert child is not None, path
    return child


def test_connect_command_has_no_force_but_no_prompt() -> None:
    ps = build_command(
        offline_powershell(),
        "Connect-VpnS2SInterface",
        {"Name": "Azure", "PassThru": True, "Confirm": False},
    )
    assert [(a.name, a.value) for a in ps.commands[0].args] == [
        ("Name", "Azure"),
        ("PassThru", True),
        ("Confirm", False),
    ]


def test_to_plain_merges_adapted_and_extended_properties() -> None:
    obj = GenericComplexObject()
    obj.types = ["Microsoft.Management.Infrastructure.CimInstance#VpnS2SInterface"]
    obj.adapted_properties = {"Name": "Azure", "Destination": ["20.50.1.10"], "AdminStatus": True}
    obj.extended_properties = {"ConnectionState": "Connected", "PSComputerName": "rras01"}
    plain = to_plain([obj])
    assert plain == [
        {
            "Name": "Azure",
            "Destination": ["20.50.1.10"],
            "AdminStatus": True,
            "ConnectionState": "Connected",
            "PSComputerName": "rras01",
        }
    ]
    assert S2SInterface.from_object(plain[0]).connected


# ---------------------------------------------------------------------- PypsrpTransport flow
class Stand:
    """Stand-ins for pypsrp's WSMan/RunspacePool/PowerShell that record what they get."""

    def __init__(self, *, output: list[Any] | None = None, errors: list[Any] | None = None):
        self.output = output or []
        self.errors = errors or []
        self.raise_on_open: Exception | None = None
        self.wsman_kwargs: dict[str, Any] = {}
        self.pool_kwargs: dict[str, Any] = {}
        self.commands: list[tuple[str, list[tuple[str, Any]]]] = []
        self.thread: int | None = None
        stand = self

        class FakeWSMan:
            def __init__(self, server: str, **kwargs: Any) -> None:
                stand.wsman_kwargs = {"server": server, **kwargs}

            def __enter__(self) -> FakeWSMan:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

        class FakePool:
            def __init__(self, wsman: Any, **kwargs: Any) -> None:
                stand.pool_kwargs = kwargs

            def __enter__(self) -> FakePool:
                if stand.raise_on_open is not None:
                    raise stand.raise_on_open
                return self

            def __exit__(self, *exc: object) -> None:
                return None

        class FakePowerShell:
            def __init__(self, pool: Any) -> None:
                self.had_errors = False
                self.streams = type("Streams", (), {"error": []})()

            def add_cmdlet(self, cmdlet: str) -> FakePowerShell:
                stand.commands.append((cmdlet, []))
                return self

            def add_parameter(self, name: str, value: Any = None) -> FakePowerShell:
                stand.commands[-1][1].append((name, value))
                return self

            def invoke(self) -> list[Any]:
                stand.thread = threading.get_ident()
                self.streams.error = stand.errors
                self.had_errors = bool(stand.errors)
                return stand.output

        self.factories = (FakeWSMan, FakePool, FakePowerShell)


def transport(stand: Stand, **kwargs: Any) -> PypsrpTransport:
    return PypsrpTransport(
        "rras01.corp.example", "CORP\\svc-tw", WINRM_PASSWORD, factories=stand.factories, **kwargs
    )


async def test_pypsrp_transport_runs_in_a_thread_against_the_jea_endpoint(tmp_path: Any) -> None:
    ca = tmp_path / "rras-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    obj = GenericComplexObject()
    obj.adapted_properties = dict(RecordedPsTransport().interfaces["Azure"])
    stand = Stand(output=[obj])
    rras = Rras(transport(stand, ca_file=ca))
    iface = await rras.set_destination("Azure", "20.50.1.10")
    assert iface.destination == ("20.50.1.10",)
    assert stand.thread is not None and stand.thread != threading.get_ident()
    assert stand.commands == [
        (
            "Set-VpnS2SInterface",
            [
                ("Name", "Azure"),
                ("Destination", ["20.50.1.10"]),
                ("Force", True),
                ("PassThru", True),
            ],
        )
    ]
    assert stand.pool_kwargs == {"configuration_name": "TunnelWarden"}
    kw = stand.wsman_kwargs
    assert (kw["server"], kw["port"], kw["ssl"], kw["auth"]) == (
        "rras01.corp.example",
        5986,
        True,
        "negotiate",
    )
    assert kw["cert_validation"] == str(ca)


async def test_pypsrp_error_records_become_device_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    record = type("ErrorRecord", (), {})()
    record.exception = GenericComplexObject()
    record.exception.adapted_properties = {
        "Message": f"The interface Azure could not be found (user CORP\\svc-tw / {WINRM_PASSWORD})"
    }
    record.fq_error = "ObjectNotFound,Get-VpnS2SInterface"
    with pytest.raises(NotFound) as caught:
        await Rras(transport(Stand(errors=[record]))).interface("Azure")
    assert "could not be found" in str(caught.value)

    record.exception.adapted_properties = {"Message": "The remote server is not responding"}
    record.fq_error = "WIN32 809,Connect-VpnS2SInterface"
    with pytest.raises(RemoteCommandFailed) as failed:
        await Rras(transport(Stand(errors=[record]))).connect("Azure")
    assert failed.value.errors == [
        "The remote server is not responding (WIN32 809,Connect-VpnS2SInterface)"
    ]
    texts = [str(caught.value), "".join(traceback.format_exception(caught.value)), caplog.text]
    assert all(WINRM_PASSWORD not in t for t in texts)


async def test_pypsrp_transport_failures_are_classified() -> None:
    import requests
    from pypsrp.exceptions import AuthenticationError, WinRMTransportError

    cases: list[tuple[Exception, type[DeviceError], bool]] = [
        (AuthenticationError(f"bad password {WINRM_PASSWORD}"), AuthenticationFailed, False),
        (WinRMTransportError("http", 401, "Unauthorized"), AuthenticationFailed, False),
        (requests.exceptions.ConnectTimeout("timed out"), DeviceTimeout, True),
        (requests.exceptions.ConnectionError("refused"), DeviceUnreachable, True),
    ]
    for error, expected, transient in cases:
        stand = Stand()
        stand.raise_on_open = error
        with pytest.raises(expected) as caught:
            await Rras(transport(stand)).interface("Azure")
        assert caught.value.transient is transient
        text = str(caught.value) + "".join(traceback.format_exception(caught.value))
        assert WINRM_PASSWORD not in text


def test_pypsrp_transport_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="without TLS"):
        PypsrpTransport("rras01", "u", WINRM_PASSWORD, ssl=False)
    with pytest.raises(ValueError, match="ca_file"):
        PypsrpTransport("rras01", "u", WINRM_PASSWORD, ca_file="/nonexistent.pem")
    t = PypsrpTransport("rras01", "u", WINRM_PASSWORD)
    assert WINRM_PASSWORD not in repr(t) and WINRM_PASSWORD not in str(vars(t))

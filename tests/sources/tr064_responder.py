"""A tiny local FRITZ!Box TR-064/IGD responder for tests (binds 127.0.0.1 only).

Serves what fritzconnection reads when it builds a connection (`igddesc.xml`, `tr64desc.xml`
and every service's SCPD) and answers SOAP actions the way a FRITZ!Box does: argument elements
without namespace inside `u:<Action>Response`, UPnPError faults with HTTP 500, and HTTP digest
auth (realm "F!Box SOAP-Auth", qop=auth, MD5) on the TR-064 control URLs. IGD control URLs are
unauthenticated, like on the box. Service ids, control and SCPD URLs follow the real descriptions
(fritzconnection's test fixtures `igddesc.xml`/`igdconnSCPD.xml`, AVM TR-064 docs), trimmed to
the actions tunnelwarden uses. Tests change `state` between polls.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

_Handler = Callable[[web.Request], Awaitable[web.Response]]
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
REALM = "F!Box SOAP-Auth"

# action -> [(argument, relatedStateVariable)], all "out"
Actions = dict[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class _Service:
    service_id: str
    service_type: str
    control_url: str
    scpd_url: str
    actions: Actions
    variables: dict[str, str]  # state variable -> dataType
    igd: bool


_CONN_STATUS: Actions = {
    "GetStatusInfo": [
        ("NewConnectionStatus", "ConnectionStatus"),
        ("NewLastConnectionError", "LastConnectionError"),
        ("NewUptime", "Uptime"),
    ],
    "GetExternalIPAddress": [("NewExternalIPAddress", "ExternalIPAddress")],
}
_CONN_VARS = {
    "ConnectionStatus": "string",
    "LastConnectionError": "string",
    "Uptime": "ui4",
    "ExternalIPAddress": "string",
}
_LINK: Actions = {
    "GetCommonLinkProperties": [
        ("NewWANAccessType", "WANAccessType"),
        ("NewLayer1UpstreamMaxBitRate", "Layer1UpstreamMaxBitRate"),
        ("NewLayer1DownstreamMaxBitRate", "Layer1DownstreamMaxBitRate"),
        ("NewPhysicalLinkStatus", "PhysicalLinkStatus"),
    ]
}
_LINK_VARS = {
    "WANAccessType": "string",
    "Layer1UpstreamMaxBitRate": "ui4",
    "Layer1DownstreamMaxBitRate": "ui4",
    "PhysicalLinkStatus": "string",
}

SERVICES: tuple[_Service, ...] = (
    _Service(
        "urn:upnp-org:serviceId:WANCommonIFC1",
        "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
        "/igdupnp/control/WANCommonIFC1",
        "/igdicfgSCPD.xml",
        _LINK,
        _LINK_VARS,
        igd=True,
    ),
    _Service(
        "urn:upnp-org:serviceId:WANIPConn1",
        "urn:schemas-upnp-org:service:WANIPConnection:1",
        "/igdupnp/control/WANIPConn1",
        "/igdconnSCPD.xml",
        {
            **_CONN_STATUS,
            "X_AVM_DE_GetExternalIPv6Address": [
                ("NewExternalIPv6Address", "ExternalIPv6Address"),
                ("NewPrefixLength", "PrefixLength"),
                ("NewValidLifetime", "ValidLifetime"),
                ("NewPreferedLifetime", "PreferedLifetime"),
            ],
        },
        {
            **_CONN_VARS,
            "ExternalIPv6Address": "string",
            "PrefixLength": "ui1",
            "ValidLifetime": "ui4",
            "PreferedLifetime": "ui4",
        },
        igd=True,
    ),
    _Service(
        "urn:Layer3Forwarding-com:serviceId:Layer3Forwarding1",
        "urn:dslforum-org:service:Layer3Forwarding:1",
        "/upnp/control/layer3forwarding",
        "/layer3forwardingSCPD.xml",
        {
            "GetDefaultConnectionService": [
                ("NewDefaultConnectionService", "DefaultConnectionService")
            ]
        },
        {"DefaultConnectionService": "string"},
        igd=False,
    ),
    _Service(
        "urn:WANCIfConfig-com:serviceId:WANCommonInterfaceConfig1",
        "urn:dslforum-org:service:WANCommonInterfaceConfig:1",
        "/upnp/control/wancommonifconfig1",
        "/wancommonifconfigSCPD.xml",
        _LINK,
        _LINK_VARS,
        igd=False,
    ),
    _Service(
        "urn:WANPPPConnection-com:serviceId:WANPPPConnection1",
        "urn:dslforum-org:service:WANPPPConnection:1",
        "/upnp/control/wanpppconn1",
        "/wanpppconnSCPD.xml",
        _CONN_STATUS,
        _CONN_VARS,
        igd=False,
    ),
    _Service(
        "urn:WANIPConnection-com:serviceId:WANIPConnection1",
        "urn:dslforum-org:service:WANIPConnection:1",
        "/upnp/control/wanipconnection1",
        "/wanipconnSCPD.xml",
        _CONN_STATUS,
        _CONN_VARS,
        igd=False,
    ),
)


@dataclass
class FritzState:
    """What the simulated box reports. `mode` says which WAN connection service is active."""

    ipv4: str = "198.51.100.7"
    ipv6: str = "2001:db8:7::1"
    link: Literal["Up", "Down"] = "Up"
    connection: str = "Connected"
    uptime: int = 3600
    mode: Literal["ppp", "ip"] = "ppp"
    igd: bool = True  # False: igddesc.xml answers 404 (UPnP status disabled)
    failing: set[str] = field(default_factory=set)  # actions answered with a UPnP fault
    delay_s: float = 0.0  # added to every SOAP answer


@dataclass(frozen=True)
class Call:
    path: str
    action: str
    user: str | None  # digest user when authenticated


def _service_xml(s: _Service) -> str:
    return (
        f"<service><serviceType>{s.service_type}</serviceType><serviceId>{s.service_id}"
        f"</serviceId><controlURL>{s.control_url}</controlURL><eventSubURL>{s.control_url}"
        f"</eventSubURL><SCPDURL>{s.scpd_url}</SCPDURL></service>"
    )


def _device(kind: str, ns: str, name: str, services: list[_Service], children: str = "") -> str:
    svc = "".join(_service_xml(s) for s in services)
    sub = f"<deviceList>{children}</deviceList>" if children else ""
    return (
        f"<device><deviceType>urn:{ns}:device:{kind}:1</deviceType>"
        f"<friendlyName>{name} - FRITZ!Box 7590 (test)</friendlyName>"
        "<manufacturer>AVM Berlin</manufacturer><manufacturerURL>http://www.avm.de</manufacturerURL>"
        f"<modelDescription>{name}</modelDescription><modelName>FRITZ!Box 7590</modelName>"
        f"<modelNumber>avm</modelNumber><modelURL>http://www.avm.de</modelURL>"
        f"<UDN>uuid:{secrets.token_hex(4)}-test-{kind.lower()}</UDN>"
        f"<serviceList>{svc}</serviceList>{sub}</device>"
    )


def _description(igd: bool) -> str:
    by_name = {s.service_id.rsplit(":", 1)[-1]: s for s in SERVICES}
    if igd:
        ns, root_ns = "schemas-upnp-org", "urn:schemas-upnp-org:device-1-0"
        conn = _device("WANConnectionDevice", ns, "WANConnectionDevice", [by_name["WANIPConn1"]])
        wan = _device("WANDevice", ns, "WANDevice", [by_name["WANCommonIFC1"]], conn)
        root = _device("InternetGatewayDevice", ns, "FRITZ!Box 7590", [], wan)
        version = ""
    else:
        ns, root_ns = "dslforum-org", "urn:dslforum-org:device-1-0"
        conn = _device(
            "WANConnectionDevice",
            ns,
            "WANConnectionDevice",
            [by_name["WANPPPConnection1"], by_name["WANIPConnection1"]],
        )
        wan = _device("WANDevice", ns, "WANDevice", [by_name["WANCommonInterfaceConfig1"]], conn)
        root = _device(
            "InternetGatewayDevice", ns, "FRITZ!Box 7590", [by_name["Layer3Forwarding1"]], wan
        )
        version = (
            "<systemVersion><HW>226</HW><Major>154</Major><Minor>7</Minor><Patch>57</Patch>"
            "<Buildnumber>108001</Buildnumber><Display>154.07.57</Display></systemVersion>"
        )
    return (
        f'<?xml version="1.0"?>\n<root xmlns="{root_ns}"><specVersion><major>1</major>'
        f"<minor>0</minor></specVersion>{version}{root}</root>\n"
    )


def _scpd(s: _Service) -> str:
    actions = "".join(
        f"<action><name>{name}</name><argumentList>"
        + "".join(
            f"<argument><name>{arg}</name><direction>out</direction>"
            f"<relatedStateVariable>{var}</relatedStateVariable></argument>"
            for arg, var in args
        )
        + "</argumentList></action>"
        for name, args in s.actions.items()
    )
    variables = "".join(
        f'<stateVariable sendEvents="no"><name>{n}</name><dataType>{t}</dataType></stateVariable>'
        for n, t in s.variables.items()
    )
    return (
        '<?xml version="1.0"?>\n<scpd xmlns="urn:schemas-upnp-org:service-1-0">'
        "<specVersion><major>1</major><minor>0</minor></specVersion>"
        f"<actionList>{actions}</actionList><serviceStateTable>{variables}</serviceStateTable>"
        "</scpd>\n"
    )


def _envelope(body: str) -> str:
    return (
        f'<?xml version="1.0"?>\n<s:Envelope xmlns:s="{SOAP_NS}" '
        f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">\n<s:Body>\n{body}\n'
        "</s:Body>\n</s:Envelope>\n"
    )


def _fault(code: int, description: str) -> web.Response:
    body = (
        "<s:Fault>\n<faultcode>s:Client</faultcode>\n<faultstring>UPnPError</faultstring>\n"
        '<detail>\n<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">\n'
        f"<errorCode>{code}</errorCode>\n<errorDescription>{description}</errorDescription>\n"
        "</UPnPError>\n</detail>\n</s:Fault>"
    )
    return web.Response(status=500, text=_envelope(body), content_type="text/xml", charset="utf-8")


_HTML_404 = "<HTML><HEAD><TITLE>404 Not Found</TITLE></HEAD><BODY>Not Found</BODY></HTML>"
_HTML_401 = "<HTML><HEAD><TITLE>401 Unauthorized</TITLE></HEAD><BODY>Unauthorized</BODY></HTML>"
_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Tr064Responder:
    """Run with `async with Tr064Responder(...) as box:`; `box.port`, `box.state`, `box.calls`."""

    def __init__(
        self,
        *,
        username: str = "tunnelwarden",
        password: str = "fritz-secret",
        require_auth: bool = True,
        state: FritzState | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.require_auth = require_auth
        self.state = state or FritzState()
        self.calls: list[Call] = []
        self.challenges = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.description_fetches = 0
        self._nonces: set[str] = set()
        app = web.Application()
        app.router.add_get("/tr64desc.xml", self._tr64desc)
        app.router.add_get("/igddesc.xml", self._igddesc)
        for s in SERVICES:
            app.router.add_get(s.scpd_url, self._scpd_handler(s))
            app.router.add_post(s.control_url, self._control_handler(s))
        self._server = TestServer(app, host="127.0.0.1", port=None)

    @property
    def port(self) -> int:
        port = self._server.port
        assert port is not None
        return port

    async def __aenter__(self) -> Tr064Responder:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    # --- descriptions --------------------------------------------------------------

    async def _tr64desc(self, request: web.Request) -> web.Response:
        self.description_fetches += 1
        return web.Response(text=_description(igd=False), content_type="text/xml")

    async def _igddesc(self, request: web.Request) -> web.Response:
        if not self.state.igd:
            # fritzconnection only skips a missing igddesc when it is served as text/html
            return web.Response(status=404, text=_HTML_404, headers={"Content-Type": "text/html"})
        return web.Response(text=_description(igd=True), content_type="text/xml")

    def _scpd_handler(self, s: _Service) -> _Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=_scpd(s), content_type="text/xml")

        return handler

    # --- SOAP -----------------------------------------------------------------------

    def _check_digest(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return None
        params = {m[0]: m[1] or m[2] for m in _DIGEST_PARAM.findall(header[7:])}
        if params.get("username") != self.username or params.get("realm") != REALM:
            return None
        if params.get("nonce") not in self._nonces or params.get("qop") != "auth":
            return None
        if params.get("uri") != request.path_qs:
            return None
        ha1 = _md5(f"{self.username}:{REALM}:{self.password}")
        ha2 = _md5(f"{request.method}:{params['uri']}")
        expected = _md5(
            f"{ha1}:{params['nonce']}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}"
        )
        return self.username if params.get("response") == expected else None

    def _challenge(self) -> web.Response:
        self.challenges += 1
        nonce = secrets.token_hex(8).upper()
        self._nonces.add(nonce)
        return web.Response(
            status=401,
            text=_HTML_401,
            headers={
                "Content-Type": "text/html",
                "WWW-Authenticate": f'Digest realm="{REALM}", nonce="{nonce}", '
                'algorithm=MD5, qop="auth"',
            },
        )

    def _control_handler(self, s: _Service) -> _Handler:
        async def handler(request: web.Request) -> web.Response:
            user: str | None = None
            if not s.igd and self.require_auth:
                user = self._check_digest(request)
                if user is None:
                    return self._challenge()
            soap_action = request.headers.get("SOAPAction", "").strip('"')
            service_type, _, action = soap_action.partition("#")
            if service_type != s.service_type or action not in s.actions:
                return _fault(401, "Invalid Action")
            try:
                envelope = ET.fromstring(await request.read())
            except ET.ParseError:
                return _fault(402, "Invalid Args")
            if envelope.find(f"{{{SOAP_NS}}}Body/{{{s.service_type}}}{action}") is None:
                return _fault(402, "Invalid Args")
            self.calls.append(Call(s.control_url, action, user))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.state.delay_s)
            finally:
                self.in_flight -= 1
            if action in self.state.failing:
                return _fault(501, "Action Failed")
            values = self._values(s, action)
            args = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
            body = f'<u:{action}Response xmlns:u="{s.service_type}">\n{args}\n</u:{action}Response>'
            return web.Response(text=_envelope(body), content_type="text/xml", charset="utf-8")

        return handler

    def _values(self, s: _Service, action: str) -> dict[str, str]:
        st = self.state
        name = s.service_id.rsplit(":", 1)[-1]
        # IGD WANIPConn1 mirrors the active connection; TR-064 has one service per type
        active = (
            name == "WANIPConn1"
            or name == {"ppp": "WANPPPConnection1", "ip": "WANIPConnection1"}[st.mode]
        )
        up = active and st.link == "Up" and st.connection == "Connected"
        if action == "GetCommonLinkProperties":
            return {
                "NewWANAccessType": "DSL",
                "NewLayer1UpstreamMaxBitRate": "40000000",
                "NewLayer1DownstreamMaxBitRate": "100000000",
                "NewPhysicalLinkStatus": st.link,
            }
        if action == "GetStatusInfo":
            return {
                "NewConnectionStatus": st.connection if active else "Unconfigured",
                "NewLastConnectionError": "ERROR_NONE",
                "NewUptime": str(st.uptime if up else 0),
            }
        if action == "GetExternalIPAddress":
            return {"NewExternalIPAddress": st.ipv4 if up else "0.0.0.0"}
        if action == "X_AVM_DE_GetExternalIPv6Address":
            return {
                "NewExternalIPv6Address": st.ipv6 if up else "",
                "NewPrefixLength": "64",
                "NewValidLifetime": "7200",
                "NewPreferedLifetime": "3600",
            }
        if action == "GetDefaultConnectionService":
            conn = "WANPPPConnection" if st.mode == "ppp" else "WANIPConnection"
            return {"NewDefaultConnectionService": f"1.{conn}.1"}
        raise AssertionError(action)
